"""The ``.qlc`` container: a small fixed header, the entropy-coded payload, a checksum.

Layout (little-endian)::

    offset  size  field
         0     4  magic  b"QLC\\x00"
         4     2  format version (2)
         6     1  code model (1: dithered lattice, Laplace prior; 2: uniform codeword index;
                  3: counted symbols, learned by ``update()``; 4: good lattice, E8 by cosets,
                  others in a triangular basis; 5: also Λ16 and Λ24 by cosets; 6: also E8's
                  coset by its rounding errors; 7: lattice with a Gaussian prior, every block
                  in a triangular basis; 8: the same, E8 by cosets; 64–255: registered by
                  other methods)
         7     1  number of shape entries r (1 ≤ r ≤ 8)
         8    32  SHA-256 digest of the model (configuration and weights) that wrote the file
        40     8  seed of the dither (uint64)
        48     8  symbol range: minimum and maximum (two int32)
        56  4·r   shape of the coded tensor (uint32 each)
         …     8  payload length in bytes (uint64)
         …     …  payload: constriction's ANS words (uint32)
         …     4  CRC-32 of everything above

Every way a file can be wrong raises :class:`CodingError` with a message that says which: not a
qlatent file, a version this code does not read, truncated or with trailing bytes, corrupt
(checksum), or written by a different model (digest). The decoder then checks every size in the
header against the payload and a cap on the values it will produce before it allocates anything
(:func:`qlatent.coding.decompress`, ``max_elements``).

What the checks cannot do: the CRC-32 detects damage, not forgery, and the model digest is
public (it is in every file). Anyone can edit a payload or a header field and recompute the
checksum; such a file passes every check above and decodes to some other ``y_hat`` of the
announced (bounded) shape, or fails the end-of-stream check. Where that matters, authenticate
the file outside the container (e.g. an HMAC-SHA256 over its bytes with a shared key, Python's
``hmac`` module): the format carries no key.
"""

from __future__ import annotations

import numbers
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"QLC\x00"
#: 2: the dither's key comes from the seed alone (:class:`qlatent.rng.SeedKeys`); version 1 drew
#: it from torch's generator, so its files would decode to a different y_hat and are refused
VERSION = 2
MODEL_LATTICE = 1
MODEL_UNIFORM_INDEX = 2
MODEL_COUNTED = 3
MODEL_GOOD_LATTICE = 4
MODEL_GLUED_LATTICE = 5
MODEL_E8_COSETS = 6
MODEL_GAUSSIAN_LATTICE = 7
MODEL_GAUSSIAN_E8 = 8
#: code-model ids and names; 1–63 are the library's, a new method registers its own id
CODE_MODELS = {
    MODEL_LATTICE: "dithered lattice, Laplace prior",
    MODEL_UNIFORM_INDEX: "uniform",
    MODEL_COUNTED: "counted symbols (update())",
    MODEL_GOOD_LATTICE: "good lattice (E8 by cosets, else a triangular basis), Laplace prior",
    MODEL_GLUED_LATTICE: "good lattice (E8, Λ16 and Λ24 by cosets, else a triangular basis), "
    "Laplace prior",
    MODEL_E8_COSETS: "good lattice (E8 by cosets weighted by their rounding errors, Λ16 and Λ24 "
    "by cosets, else a triangular basis), Laplace prior",
    MODEL_GAUSSIAN_LATTICE: "lattice (every block in a triangular basis), Gaussian prior",
    MODEL_GAUSSIAN_E8: "lattice (E8 by cosets, else a triangular basis), Gaussian prior",
}


def register_code_model(kind: int, name: str) -> int:
    """Make ``kind`` (64–255) a code-model id that files may carry, named ``name``: a new
    method's code model registers itself once, and nothing else in the coder changes.

    Returns ``kind``. Raises ValueError if ``kind`` is not an integer in [64, 255] or is already
    registered under another name (registering the same name again is a no-op).
    """
    if not isinstance(kind, int) or not 64 <= kind <= 255:
        raise ValueError(f"a new code model's id must lie in [64, 255], got {kind!r}")
    if CODE_MODELS.get(kind, name) != name:
        raise ValueError(f"code model {kind} is already {CODE_MODELS[kind]!r}")
    CODE_MODELS[kind] = name
    return kind


MAX_RANK = 8

_FIXED = struct.Struct("<4sHBB32sQii")  # magic … symbol range, 56 bytes
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


class CodingError(ValueError):
    """A compressed file that cannot be decoded, with the reason.

    A subclass of ValueError: raised by :func:`unpack` and :func:`qlatent.coding.decompress`
    for a file that is not a ``.qlc`` file, of another version, truncated, corrupt or written by
    another model.
    """


@dataclass(frozen=True)
class Header:
    """The fields of a ``.qlc`` header (see the layout above), as :func:`unpack` returns them.

    ``code_model`` is a key of :data:`CODE_MODELS`; ``digest`` the writing model's 32-byte
    SHA-256; ``seed`` the dither's seed; ``symbol_min``/``symbol_max`` the coded symbols' range
    (int32); ``shape`` the coded tensor's shape, ``(B, dim, *spatial)``, 1 to 8 entries.
    """

    code_model: int
    digest: bytes  #: 32 bytes
    seed: int
    symbol_min: int
    symbol_max: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Bytes of the header and checksum around the payload."""
        return _FIXED.size + 4 * len(self.shape) + _LENGTH.size + _CRC.size


def check_digest(digest: bytes, name: str = "digest") -> bytes:
    """A model digest as :func:`qlatent.coding.model_digest` gives it: 32 bytes."""
    if not isinstance(digest, bytes):
        raise ValueError(f"{name} must be 32 bytes, got {type(digest).__name__}")
    if len(digest) != 32:
        raise ValueError(f"{name} must be 32 bytes, got {len(digest)}")
    return digest


def _is_int(value) -> bool:
    """An integer header field: a Python or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def pack(header: Header, payload: bytes) -> bytes:
    """Header, payload and checksum as one byte string.

    Raises ValueError for a code model that is not a key of :data:`CODE_MODELS` (:func:`unpack`
    refuses any other), a digest that is not 32 bytes, a shape of no or more than 8 entries or
    with an entry that is not an integer (a bool is none) in [0, 2^32), a seed that is not an
    integer in [0, 2^64), or a symbol range whose ends are not int32 integers.
    """
    if not _is_int(header.code_model) or header.code_model not in CODE_MODELS:
        raise ValueError(
            f"code_model must be a registered code-model id {sorted(CODE_MODELS)}, "
            f"got {header.code_model!r}"
        )
    check_digest(header.digest)
    if not 1 <= len(header.shape) <= MAX_RANK:
        raise ValueError(f"shape must have 1 to {MAX_RANK} entries, got {header.shape}")
    if not all(_is_int(n) and 0 <= n < 2**32 for n in header.shape):  # True is no size
        raise ValueError(f"every shape entry must lie in [0, 2^32), got {header.shape}")
    if not _is_int(header.seed) or not 0 <= header.seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2^64), got {header.seed!r}")
    for name in ("symbol_min", "symbol_max"):
        value = getattr(header, name)
        if not _is_int(value) or not -(2**31) <= value < 2**31:
            raise ValueError(f"{name} must be an int32 integer, got {value!r}")
    body = (
        _FIXED.pack(
            MAGIC,
            VERSION,
            header.code_model,
            len(header.shape),
            header.digest,
            header.seed,
            header.symbol_min,
            header.symbol_max,
        )
        + struct.pack(f"<{len(header.shape)}I", *header.shape)
        + _LENGTH.pack(len(payload))
        + payload
    )
    return body + _CRC.pack(zlib.crc32(body))


def other_model(digest: bytes, expected: bytes) -> CodingError:
    """The error for a file whose model digest ``digest`` is not the decoding model's
    ``expected``."""
    return CodingError(
        "this file was written by a different model (configuration or weights differ): "
        f"file {digest.hex()[:16]}…, model {expected.hex()[:16]}…"
    )


def unpack(data: bytes, *, expected_digest: bytes | None = None) -> tuple[Header, bytes]:
    """Check and split a file; ``expected_digest`` (the decoding model's) must match.

    Returns ``(header, payload)``. Raises :class:`CodingError` for anything but a well-formed
    file of this version with an intact checksum and, if given, the expected digest.
    """
    if expected_digest is not None:
        check_digest(expected_digest, "expected_digest")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodingError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise CodingError("not a qlatent compressed file (bad magic number)")
    if len(data) < _FIXED.size:
        raise CodingError(f"truncated file: {len(data)} bytes, the header alone needs more")
    magic, version, code_model, rank, digest, seed, lo, hi = _FIXED.unpack_from(data)
    if version != VERSION:
        raise CodingError(f"unsupported format version {version} (this qlatent reads {VERSION})")
    if code_model not in CODE_MODELS or not 1 <= rank <= MAX_RANK:
        raise CodingError(f"corrupt header (code model {code_model}, rank {rank})")
    offset = _FIXED.size + 4 * rank
    if len(data) < offset + _LENGTH.size + _CRC.size:
        raise CodingError(f"truncated file: {len(data)} bytes, the header alone needs more")
    shape = struct.unpack_from(f"<{rank}I", data, _FIXED.size)
    (length,) = _LENGTH.unpack_from(data, offset)
    offset += _LENGTH.size
    expected = offset + length + _CRC.size
    if len(data) != expected:
        what = "truncated file" if len(data) < expected else "trailing bytes after the file"
        raise CodingError(f"{what}: {len(data)} bytes, the header announces {expected}")
    (crc,) = _CRC.unpack_from(data, offset + length)
    if zlib.crc32(data[: offset + length]) != crc:
        raise CodingError("corrupt file: checksum mismatch")
    if expected_digest is not None and digest != expected_digest:
        raise other_model(digest, expected_digest)
    header = Header(code_model, digest, seed, lo, hi, tuple(shape))
    return header, data[offset : offset + length]


def describe(data: bytes) -> dict[str, object]:
    """What a file holds, read from its header alone: no model, no decoding.

    The file is checked as :func:`unpack` checks it (a damaged or foreign file raises
    :class:`CodingError`). Returns a table of plain values: ``format_version``, ``code_model``
    (its id) and ``code_model_name``, ``model_digest`` (the writing model's SHA-256, hex),
    ``seed`` (the dither's), ``symbol_range`` ``[min, max]``, ``shape`` of the coded tensor
    ``[B, dim, *spatial]`` and ``examples`` (``B``), ``file_bytes``, ``header_bytes`` (header
    and checksum), ``payload_bytes``, and ``bits_per_example`` (the whole file's bits over
    ``B``; None for a file of no examples). Which model wrote the file can be checked against a
    model with :func:`qlatent.coding.model_digest`.
    """
    header, payload = unpack(data)
    n = header.shape[0]
    return {
        "format_version": VERSION,
        "code_model": header.code_model,
        "code_model_name": CODE_MODELS[header.code_model],
        "model_digest": header.digest.hex(),
        "seed": header.seed,
        "symbol_range": [header.symbol_min, header.symbol_max],
        "shape": list(header.shape),
        "examples": n,
        "file_bytes": len(data),
        "header_bytes": header.size,
        "payload_bytes": len(payload),
        "bits_per_example": 8 * len(data) / n if n else None,
    }
