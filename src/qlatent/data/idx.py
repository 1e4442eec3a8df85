"""Reader (and a small writer) for the IDX file format used by MNIST and FashionMNIST.

An IDX file is a header followed by a raw big-endian array:

* bytes 0-1: zero;
* byte 2: the element type code (``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B`` int16,
  ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64);
* byte 3: the number of dimensions ``d``;
* ``d`` big-endian unsigned 32-bit sizes, then the payload in C order.

Files may be stored plain or gzip-compressed; compression is recognised from the content (the gzip
magic bytes), not from the file name.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_DTYPES", "parse_idx", "read_bytes", "read_idx", "write_idx"]

#: IDX element type code -> numpy dtype (big-endian where it matters).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | Path) -> bytes:
    """Return the (uncompressed) content of ``path``, gunzipping it if it is gzip-compressed."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip data ({exc})") from exc


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX ``data`` into a native-endian numpy array; ``source`` names it in errors."""
    if len(data) < 4:
        raise ValueError(f"{source}: not an IDX file (only {len(data)} bytes, header needs 4)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise ValueError(f"{source}: not an IDX file (magic number starts with {data[:2]!r})")
    if code not in IDX_DTYPES:
        raise ValueError(f"{source}: unknown IDX element type code 0x{code:02x}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{source}: truncated IDX header ({ndim} dimensions need {header_len} bytes, "
            f"file has {len(data)})"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header_len
    if payload < expected:
        raise ValueError(
            f"{source}: truncated IDX payload (shape {shape} needs {expected} bytes, "
            f"found {payload})"
        )
    if payload > expected:
        raise ValueError(
            f"{source}: {payload - expected} unexpected trailing bytes after the IDX payload "
            f"(shape {shape})"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read a plain or gzipped IDX file into a numpy array.

    Raises:
        ValueError: naming the file, if the header is malformed or the payload is truncated.
    """
    path = Path(path)
    return parse_idx(read_bytes(path), str(path))


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped if ``compress``, default: name ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"cannot store dtype {array.dtype} in an IDX file")
    code = codes[native]
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    data = header + payload
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path
