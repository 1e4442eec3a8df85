"""Real bitstreams: entropy-coded hard-path symbols in a checked container (``.qlc``).

The coder knows no bottleneck: each bottleneck hands it a code model (``code_model()``, the
protocol of :mod:`.models`).

>>> data = bottleneck.compress(y, seed=0)        # bytes; len(data) * 8 is the rate
>>> y_hat = bottleneck.decompress(data)  # == bottleneck.eval()(y, generator=SeedKeys(0)).y_hat
"""

from .codec import code_model, compress, decompress, ideal_bits, model_digest
from .container import (
    CODE_MODELS,
    CodingError,
    Header,
    describe,
    pack,
    register_code_model,
    unpack,
)
from .models import CodeModel, Counted, DitheredLaplace, GoodLattice, UniformIndex

__all__ = [
    "CODE_MODELS",
    "CodeModel",
    "CodingError",
    "Counted",
    "DitheredLaplace",
    "Header",
    "GoodLattice",
    "UniformIndex",
    "code_model",
    "compress",
    "decompress",
    "describe",
    "ideal_bits",
    "model_digest",
    "pack",
    "register_code_model",
    "unpack",
]
