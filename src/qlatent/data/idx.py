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

import contextlib
import gzip
import io
import math
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from . import sources

__all__ = ["IDX_DTYPES", "MAX_DIMS", "parse_idx", "read_bytes", "read_idx", "write_idx"]

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
_CHUNK = 1 << 20
#: the most dimensions an IDX file may have here: the format's byte allows 255, NumPy 2 arrays
#: 64, but NumPy 1.26 (which this package supports) 32, so a file of more would be read on one
#: installation and not on another; MNIST's files have 1 or 3
MAX_DIMS = 32
#: what reading a damaged gzip stream raises
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """At most ``size`` bytes of ``stream``, read in chunks: nothing is allocated for bytes the
    stream does not hold (``read(size)`` of a buffered file allocates ``size`` up front)."""
    parts, left = [], size
    while left > 0:
        block = stream.read(min(_CHUNK, left))
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


@contextlib.contextmanager
def _open_content(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for reading its content, gunzipped if it is gzip-compressed (by its
    magic bytes); a gzip error while reading is a ValueError naming the file."""
    with path.open("rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not compressed:
            yield raw
            return
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream
        except _GZIP_ERRORS as exc:
            raise ValueError(f"{path}: corrupt gzip data ({exc})") from exc


def read_bytes(path: str | Path, max_bytes: int | None = None) -> bytes:
    """Return the (uncompressed) content of ``path``, gunzipping it if it is gzip-compressed.
    With ``max_bytes``, a ValueError once the content runs past it (a gzip bomb is not
    decompressed to the end)."""
    path = Path(path)
    with _open_content(path) as stream:
        if max_bytes is None:
            return stream.read()
        data = _read_up_to(stream, max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path}: more than {max_bytes:,} bytes uncompressed")
    return data


def _read_header(read: Callable[[int], bytes], source: str) -> tuple[np.dtype, tuple[int, ...]]:
    """The element dtype and the shape of an IDX file whose ``read`` is at its start."""
    head = read(4)
    if len(head) < 4:
        raise ValueError(f"{source}: not an IDX file (only {len(head)} bytes, header needs 4)")
    zero, code, ndim = struct.unpack(">HBB", head)
    if zero != 0:
        raise ValueError(f"{source}: not an IDX file (magic number starts with {head[:2]!r})")
    if code not in IDX_DTYPES:
        raise ValueError(f"{source}: unknown IDX element type code 0x{code:02x}")
    if ndim > MAX_DIMS:
        raise ValueError(
            f"{source}: {ndim} dimensions in the IDX header, more than the {MAX_DIMS} read here "
            "(NumPy 1's limit, kept so that every supported NumPy reads the same files)"
        )
    sizes = read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise ValueError(
            f"{source}: truncated IDX header ({ndim} dimensions need {4 + 4 * ndim} bytes, "
            f"file has {4 + len(sizes)})"
        )
    return IDX_DTYPES[code], struct.unpack(f">{ndim}I", sizes)


def _payload_size(dtype: np.dtype, shape: tuple[int, ...], source: str) -> int:
    """Bytes of the payload the header announces (exact: Python integers do not overflow), or a
    ValueError where that is more than this machine's memory."""
    size = math.prod(shape) * dtype.itemsize
    total = sources.physical_memory()  # looked up here: one place to stand in for it
    if total is not None and size > total:
        raise ValueError(
            f"{source}: the IDX header announces shape {shape}, {size / 2**30:,.1f} GiB, more "
            f"than this machine's {total / 2**30:,.1f} GiB of memory"
        )
    return size


def _to_array(payload: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX ``data`` into a native-endian numpy array; ``source`` names it in errors."""
    stream = io.BytesIO(data)
    dtype, shape = _read_header(stream.read, source)
    header_len = stream.tell()
    expected = _payload_size(dtype, shape, source)
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
    return _to_array(data[header_len:], dtype, shape)


def read_idx(path: str | Path) -> np.ndarray:
    """Read a plain or gzipped IDX file into a numpy array.

    The header is read first; the payload is read only up to the size it announces (after
    checking that size against this machine's memory), so a header that claims a huge array,
    a huge file or a gzip bomb is refused without reading it to the end.

    Raises:
        ValueError: naming the file, if the header is malformed or the payload is truncated.
    """
    path = Path(path)
    source = str(path)
    with _open_content(path) as stream:
        dtype, shape = _read_header(stream.read, source)
        expected = _payload_size(dtype, shape, source)
        payload = _read_up_to(stream, expected)
        extra = len(_read_up_to(stream, _CHUNK))
    if len(payload) < expected:
        raise ValueError(
            f"{source}: truncated IDX payload (shape {shape} needs {expected} bytes, "
            f"found {len(payload)})"
        )
    if extra:
        many = f"{extra}" if extra < _CHUNK else f"at least {_CHUNK:,}"
        raise ValueError(
            f"{source}: {many} unexpected trailing bytes after the IDX payload (shape {shape})"
        )
    return _to_array(payload, dtype, shape)


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped if ``compress``, default: name ends in ``.gz``)
    and return its path. The header holds the dtype code and the shape, big-endian, as
    :func:`read_idx` reads them. ValueError for a dtype IDX cannot store (uint8, int8, int16,
    int32, float32, float64 only) or a shape of more than 32 dimensions or one of 2^32 or more.
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"cannot store dtype {array.dtype} in an IDX file")
    if array.ndim > MAX_DIMS or any(n >= 1 << 32 for n in array.shape):
        raise ValueError(
            f"cannot store shape {array.shape} in an IDX file (at most {MAX_DIMS} dimensions, "
            "as NumPy 1 allows, each below 2^32)"
        )
    code = codes[native]
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    data = header + payload
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path
