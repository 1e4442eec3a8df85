"""Straight-through k-dimensional quantizers with M learned code vectors and a learned code
(lattice paper, appendix A.2: the "N = 125 quantizers, each with M = 4 two dimensional code
vectors" of the text experiment; ``scalar_st`` is the case k = 1).

Paper: L. A. Lastras, "Lattice Representation Learning" (arXiv 2006.13833), appendix A.2.

    y = (y_1, …, y_G)            G = N / k groups of k consecutive coordinates
    k_g   = argmin_m ‖y_g − c_{g,m}‖²                                 (M code vectors per group)
    y_hat = c_{g,k_g} + (y_g − sg(y_g))   forward value: the code vector; gradient: to y
                                           (straight through) and to the chosen c_{g,k_g}
    rate  = −Σ_g log π_g(k_g)              π_g = softmax(ℓ_g): a learned code over the M vectors
    aux   = 0                              default, the paper's: the code vectors learn from
                                           the decoder's gradient alone
    aux   = ‖c_{g,k_g} − sg(y_g)‖² + β ‖y_g − sg(c_{g,k_g})‖²     ``commitment=β``: DESIGN.md
                                           §3.3's VQ-style codebook + commitment terms (means)

The default (``commitment=None``) is the paper's: the levels are "parameters of the model which
are optimized using gradient descent" through y_hat alone, and ``aux_loss`` is zero (the text
experiment's recorded results, ``results/text-rd.json``, were trained so). ``commitment=β``
adds VQ-VAE's auxiliary loss as ``vq`` forms it (:func:`~._codebook.codebook_and_commitment`,
means over all elements): the codebook term pulls the chosen code vectors to the inputs, the
commitment term the inputs to their code vectors; y_hat, and with it the decoder's gradient to
the code vectors, stays as above. Weigh it with ``loss.aux_weight``.

The rate is the length of a real code, the learned categorical ``π_g`` of each group, which the
loss trains with the rest (its gradient reaches only the logits ℓ). The hard path is the same
map (deterministic): ``indices`` are the code numbers ``(B, G)`` in [0, M). Files:
``update(latents)`` counts the codes used (:class:`CountedCodeModel`), as for a codebook.

Initial code vectors: a grid when M is a k-th power (M = 4, k = 2: the corners of a square;
k = 1: M evenly spaced levels; M = 1: the origin), otherwise a fixed pseudo-random draw; both
span [−init_range, init_range] per coordinate.

Shapes: input ``(B, N)`` or ``(B, N, *spatial)``; ``indices`` ``(B, G)`` or ``(B, G, *spatial)``
(``index_kind = "vector"`` with ``symbols_per_row = G``); ``rate`` ``(B,)`` nats. ``stats``:
``codes_used`` (distinct code numbers in the batch, mean over groups).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import check_nonnegative, recording_graph, shown_setting
from ._code_model import CountedCodeModel
from ._codebook import codebook_and_commitment
from .base import BOTTLENECKS, Bottleneck, BottleneckOutput, Fixed, Setting

#: the most numbers of the ``(R, G, M, k)`` differences :meth:`VectorST._nearest` forms at once
#: (64 MiB of float32): formed for all rows at once they took 2·M times the input's memory
#: (3.9 GB for 10^5 rows of 256 coordinates and M = 16)
NEAREST_NUMBERS = 1 << 24


def _initial_codes(codes: int, group: int, init_range: float) -> Tensor:
    """``(M, k)`` starting code vectors inside [−init_range, init_range]^k."""
    side = round(codes ** (1 / group))
    if side**group == codes:
        axis = torch.linspace(-init_range, init_range, side) if side > 1 else torch.zeros(1)
        # the grid in lexicographic order, built by tensor ops (no Python list of M tuples; a
        # model can be sized on the meta device)
        return torch.stack(torch.meshgrid(*[axis] * group, indexing="ij"), -1).view(codes, group)
    draw = torch.rand(codes, group, generator=torch.Generator().manual_seed(0))
    return (2 * draw - 1) * init_range


def check_commitment(value: float | None, name: str) -> float | None:
    """``None`` (no auxiliary loss), or β as a float if it is a number (not a bool) in
    [0, :data:`~qlatent._utils.MAX_WEIGHT`]; else ValueError naming ``name``."""
    return None if value is None else check_nonnegative(value, name)


@BOTTLENECKS.register("vector_st")
class VectorST(CountedCodeModel, Bottleneck):
    """N / k straight-through k-dimensional quantizers, M learned code vectors and a learned
    code each.

    Args:
        dim: N, the number of coordinates (a multiple of ``group``).
        group: k, the coordinates quantized together (the paper's 2-D quantizers: k = 2).
        codes: M, the code vectors per group (the paper: M = 4 for k = 2). M = 1 is allowed: the
            code is then a learned constant that carries nothing (rate 0).
        init_range: the initial code vectors lie in [−init_range, init_range]^k.
        commitment: ``None`` (the paper's quantizer: no auxiliary loss), or β ≥ 0 to add
            DESIGN.md's VQ-style ``aux_loss`` = ‖c − sg(y)‖² + β‖y − sg(c)‖² (means over the
            elements) on the training path; eval mode gives zero as ``vq`` does.

    ``y`` ``(B, dim[, *spatial])`` -> ``y_hat`` of the same shape, ``indices`` int64
    ``(B, dim / group[, *spatial])`` (one code per group). Raises ValueError for a ``group`` or
    ``codes`` that is not a positive integer, a ``dim`` that is not a multiple of ``group``, an
    ``init_range`` that is not a positive number, a ``commitment`` that is neither ``None`` nor
    a finite non-negative number, and bad input as :class:`~.base.Bottleneck`.
    """

    index_kind = "vector"
    group = Fixed()
    num_codes = Fixed("codes")
    commitment = Setting(check_commitment)
    # the code vectors' start (the code vectors are the code), and a training loss's weight
    _FREE_OF_CODE = {"init_range": 1.0, "commitment": None}

    def __init__(
        self,
        *,
        dim: int,
        group: int = 2,
        codes: int = 4,
        init_range: float = 1.0,
        commitment: float | None = None,
    ) -> None:
        super().__init__(dim=dim)
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"group must be a positive integer, got {group!r}")
        if dim % group:
            raise ValueError(f"dim ({dim}) must be a multiple of group ({group})")
        self.group = group
        if isinstance(codes, bool) or not isinstance(codes, int) or codes < 1:
            raise ValueError(f"codes must be a positive integer, got {codes!r}")
        self.num_codes = codes
        if isinstance(init_range, bool) or not isinstance(init_range, int | float):
            raise ValueError(f"init_range must be a positive number, got {init_range!r}")
        if not 0 < init_range <= 1e30:  # float32 code vectors are drawn inside ±init_range
            raise ValueError(
                f"init_range must be a positive number of at most 1e30, got {init_range!r}"
            )
        self.init_range = float(init_range)
        self.commitment = commitment
        groups = dim // group
        start = _initial_codes(self.num_codes, group, self.init_range)
        self.codes = nn.Parameter(start.repeat(groups, 1, 1))  # (G, M, k)
        self.logits = nn.Parameter(torch.zeros(groups, self.num_codes))  # (G, M)
        self._init_code_model()

    @property
    def symbols_per_row(self) -> int:
        return self.dim // self.group

    def _fixed_support(self) -> tuple[int, int]:
        return 0, self.num_codes

    def _grouped(self, y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], self.symbols_per_row, self.group)

    def _nearest(self, y: Tensor) -> Tensor:
        """``(R, G)`` code numbers of the nearest code vector per group (ties: the lowest),
        block by block of rows, each block's differences at most :data:`NEAREST_NUMBERS`
        numbers (every row's distances are the same operations in any block)."""
        step = max(1, NEAREST_NUMBERS // (self.dim * self.num_codes))
        codes = self.codes.detach()
        if recording_graph():  # one block: the split bounded a dynamic batch size
            return self._nearest_block(y.detach(), codes)
        blocks = [self._nearest_block(block, codes) for block in y.detach().split(step)]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def _nearest_block(self, y: Tensor, codes: Tensor) -> Tensor:
        diff = self._grouped(y).unsqueeze(2) - codes  # (R, G, M, k)
        return diff.square().sum(-1).argmin(-1)

    def _lookup(self, codes: Tensor, k: Tensor) -> Tensor:
        """``(R, N)``: the code vectors ``codes[g, k[r, g]]`` of every group, concatenated."""
        rows = k.shape[0]
        index = k.unsqueeze(-1).unsqueeze(-1).expand(rows, -1, 1, self.group)  # (R, G, 1, k)
        picked = codes.expand(rows, -1, -1, -1).gather(2, index)  # (R, G, 1, k)
        return picked.reshape(rows, self.dim)

    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        k = self._nearest(y)
        q = self._lookup(self.codes, k)
        log_pi = F.log_softmax(self.logits, dim=-1).expand(y.shape[0], -1, -1)
        rate = -log_pi.gather(-1, k.unsqueeze(-1)).squeeze(-1).sum(-1)
        used = torch.zeros_like(self.logits, dtype=torch.bool).scatter_(1, k.T, 1)  # (G, M)
        stats = {"codes_used": used.sum(1).float().mean().detach()}
        if not self.training:
            return BottleneckOutput(q.detach(), rate.detach(), y.new_zeros(()), k, stats)
        y_hat = q + (y - y.detach())
        if self.commitment is None:
            return BottleneckOutput(y_hat, rate, y.new_zeros(()), None, stats)
        # only its aux: its y_hat, y + sg(q − y), would cut the decoder's gradient to the codes
        _, aux = codebook_and_commitment(y, q, self.commitment)
        return BottleneckOutput(y_hat, rate, aux, None, stats)

    def _quantize_rows(self, y: Tensor, generator: torch.Generator | None) -> Tensor:
        return self._nearest(y)

    def _dequantize_rows(self, indices: Tensor, generator: torch.Generator | None) -> Tensor:
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes):
            raise ValueError(
                f"code numbers must lie in [0, {self.num_codes}), got values in "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        return self._lookup(self.codes.detach(), indices.long())

    def __setstate__(self, state: dict) -> None:
        """As ``nn.Module.__setstate__``; a whole module pickled before ``commitment`` existed
        gets its default, the quantizer it was (no auxiliary loss)."""
        super().__setstate__(state)
        self.__dict__.setdefault("commitment", None)

    def _commitment_repr(self) -> str:
        """``, commitment=β`` where one is set: a module without one shows the ``repr`` (and
        the model digest) it had before the option existed."""
        commitment = shown_setting(self, "commitment")
        return "" if commitment is None else f", commitment={commitment}"

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, group={self.group}, codes={self.num_codes}, "
            f"init_range={shown_setting(self, 'init_range')}{self._commitment_repr()}"
        )
