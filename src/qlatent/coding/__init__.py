"""Real bitstreams: entropy-coded hard-path symbols in a checked container (``.qlc``).

>>> data = bottleneck.compress(y, seed=0)        # bytes; len(data) * 8 is the rate
>>> y_hat = bottleneck.decompress(data)  # == bottleneck.eval()(y, generator=SeedKeys(0)).y_hat
"""

from .codec import code_model, compress, decompress, ideal_bits, model_digest
from .container import CODE_MODELS, CodingError, Header, pack, unpack

__all__ = [
    "CODE_MODELS",
    "CodingError",
    "Header",
    "code_model",
    "compress",
    "decompress",
    "ideal_bits",
    "model_digest",
    "pack",
    "unpack",
]
