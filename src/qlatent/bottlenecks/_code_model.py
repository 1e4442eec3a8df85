"""Code models learned from usage, for bottlenecks whose symbols are small integers.

A codeword index (``vq``, ``vq_ema``, ``soft_em_vq``) or a learnable-lattice coordinate has no
density to integrate, so its entropy code is a table of how often each symbol occurred: after
training, :meth:`CountedCodeModel.update` runs the hard path over training latents, counts the
symbols of every feature (the one index, or each of the D coordinates) and stores the counts in
buffers, which are saved with the weights and frozen until the next ``update`` — CompressAI's
``update()`` pattern, with counts in place of a learned CDF.

The probability of symbol s of feature f is the Krichevsky–Trofimov estimate
(n_f(s) + ½) / (N + ½·(L_f + 1)) over the L_f symbols of the counted range [low_f, low_f + L_f)
and one escape symbol. A symbol outside the range is coded as the escape followed by its value
in 32 raw bits, so any integer can be coded; the counted range of a codebook is all K indices,
so escapes occur only for lattice coordinates never seen in training.

Shapes: features F = 1 for a codeword index, F = D for a lattice coordinate vector.
Buffers: ``code_low`` ``(F,)`` int64, ``code_counts`` ``(F, L)`` int64 (L the widest range; the
padding of a narrower feature is −1). Both are empty until the first ``update``. A checkpoint
saved before these buffers existed loads with them empty. Buffers that ``update`` could not have
written (another rank, dtype or number of features, no counted symbol, a count below −1, padding
before a count, a range beyond 32-bit symbols, or a codebook's range other than its K indices)
are refused when loaded (ValueError naming the buffer), and by :meth:`code_model`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .._modes import in_eval_mode
from .._utils import autocast_off

#: additive smoothing of the counts (Krichevsky–Trofimov): every symbol, seen or not, and the
#: escape get half a count
SMOOTHING = 0.5
#: widest counted range per feature
MAX_WIDTH = 1 << 16

#: the buffers of the code model (a training-mode forward never changes them)
CODE_MODEL_BUFFERS = ("code_low", "code_counts")


class CountedCodeModel:
    """Mixin for a :class:`~qlatent.bottlenecks.base.Bottleneck` with integer symbols.

    Subclasses call :meth:`_init_code_model` in ``__init__`` and may override
    :meth:`_fixed_support` (a codebook counts all its K indices, seen or not).
    """

    code_low: Tensor
    code_counts: Tensor

    def _init_code_model(self) -> None:
        self.register_buffer("code_low", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("code_counts", torch.zeros(0, 0, dtype=torch.int64))

    @property
    def code_model_ready(self) -> bool:
        """Whether :meth:`update` has counted symbols."""
        return self.code_counts.numel() > 0

    def _fixed_support(self) -> tuple[int, int] | None:
        """``(low, width)`` of every feature's counted range, or None to take it from the data."""
        return None

    def code_model(self):
        """The counted frequencies as a code model (:class:`qlatent.coding.models.Counted`);
        TypeError before :meth:`update` has counted anything."""
        if not self.code_model_ready:
            raise TypeError(
                f"{type(self).__name__} has no code model yet: call "
                "bottleneck.update(training_latents) after training"
            )
        return self._counted_code_model()

    def _counted_code_model(self):
        from ..coding.models import Counted

        problem = self._code_model_problem(self.code_low, self.code_counts)
        if problem:
            raise ValueError(f"{type(self).__name__}'s code model is inconsistent: {problem}")
        return Counted(
            self.code_probabilities(),
            self.code_low.cpu(),
            self.code_symbols,
            lambda symbols: self._dequantize_rows(symbols, None),
            scalar=self.index_kind == "scalar",
        )

    def code_symbols(self, y: Tensor) -> Tensor:
        """The hard-path symbols of encoder outputs ``y`` as ``(N, F)`` int64 (eval mode)."""
        from .base import _to_rows

        rows = _to_rows(y.detach().to(self._parameter_dtype()))
        symbols = self._quantize_rows(rows, None)
        return symbols.reshape(rows.shape[0], -1).to(torch.int64)

    def _parameter_dtype(self) -> torch.dtype:
        for t in (*self.parameters(), *self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    @autocast_off
    @torch.no_grad()
    def update(self, latents: Tensor | Iterable[Tensor]) -> dict[str, float]:
        """Count the hard-path symbols of ``latents`` (encoder outputs, one tensor or an
        iterable of batches, each ``(B, in_dim)`` or ``(B, in_dim, *spatial)``) and freeze the
        counts as the code model. Replaces any earlier counts.

        Returns ``{"symbols": N·F counted, "features": F, "width": L}``.
        """
        if not isinstance(latents, Tensor | Iterable):
            raise TypeError(
                f"latents must be a tensor or an iterable of tensors, got {type(latents).__name__}"
            )
        with in_eval_mode(self):
            low, counts, total = self._count([latents] if isinstance(latents, Tensor) else latents)
        device = self.code_low.device
        self._buffers["code_low"] = low.to(device)
        self._buffers["code_counts"] = counts.to(device)
        return {"symbols": float(total), "features": counts.shape[0], "width": counts.shape[1]}

    def _count(self, batches: Iterable[Tensor]) -> tuple[Tensor, Tensor, int]:
        fixed = self._fixed_support()
        low = high = counts = None
        total = 0
        for y in batches:
            self._check_input(y)
            if y.numel() == 0:  # nothing to count (its symbols cannot be shaped into rows)
                continue
            s = self.code_symbols(y).cpu()
            features = s.shape[1]
            if fixed is not None:
                b_low = torch.full((features,), fixed[0], dtype=torch.int64)
                b_high = b_low + fixed[1] - 1
                if (s < b_low).any() or (s > b_high).any():
                    raise ValueError(f"symbols outside the fixed support {fixed}")
            else:
                b_low, b_high = s.amin(0), s.amax(0)
            if counts is not None:  # the range so far, widened to this batch's
                b_low, b_high = torch.minimum(low, b_low), torch.maximum(high, b_high)
            width = int((b_high - b_low).max()) + 1
            if width > MAX_WIDTH:  # checked before (F, width) counts are allocated
                raise ValueError(
                    f"a feature's symbols span {width:,} values, more than the code model's "
                    f"{MAX_WIDTH:,} (a lattice spacing far below the latents' spread?)"
                )
            if counts is None:
                counts = torch.zeros(features, width, dtype=torch.int64)
            elif (b_low < low).any() or (b_high > high).any():
                grown = torch.zeros(features, width, dtype=torch.int64)
                shift = low - b_low
                for f in range(features):  # move each feature's counts to its new origin
                    span = int(high[f] - low[f]) + 1
                    grown[f, shift[f] : shift[f] + span] = counts[f, :span]
                counts = grown
            low, high = b_low, b_high
            flat = torch.arange(features) * counts.shape[1] + (s - low)
            counts.view(-1).index_add_(
                0, flat.reshape(-1), torch.ones(flat.numel(), dtype=torch.int64)
            )
            total += s.numel()
        if counts is None:
            raise ValueError("update() needs at least one non-empty batch of latents")
        # mark the padding beyond each feature's range
        width = (high - low + 1).unsqueeze(1)
        counts[torch.arange(counts.shape[1]).unsqueeze(0) >= width] = -1
        return low, counts, total

    def code_probabilities(self) -> list[Tensor]:
        """Per feature, float64 probabilities of its counted symbols followed by the escape."""
        if not self.code_model_ready:
            raise ValueError(f"{type(self).__name__} has no code model yet: call update() first")
        out = []
        for row in self.code_counts.cpu():
            n = row[row >= 0].double() + SMOOTHING
            n = torch.cat([n, n.new_tensor([SMOOTHING])])
            out.append(n / n.sum())
        return out

    def _code_model_features(self) -> int:
        """F, the symbols of one row: one codeword index, or ``symbols_per_row``."""
        return 1 if self.index_kind == "scalar" else self.symbols_per_row

    def _code_model_problem(self, low, counts, prefix: str = "") -> str | None:
        """Why buffers ``code_low`` and ``code_counts`` cannot be this bottleneck's code model
        (the buffers named with ``prefix``), or None: either both empty (no code model yet) or
        as :meth:`update` writes them."""
        low_name, counts_name = f"{prefix}code_low", f"{prefix}code_counts"
        for name, t, rank in ((low_name, low, 1), (counts_name, counts, 2)):
            if not isinstance(t, Tensor):
                return f"{name} is a {type(t).__name__}, not a tensor"
            if t.dtype != torch.int64 or t.dim() != rank:
                return f"{name} must be a rank-{rank} int64 tensor, got {t.dtype} {tuple(t.shape)}"
        if low.numel() == 0 and counts.numel() == 0 and low.shape == (0,) == counts.shape[:1]:
            return None  # no code model yet
        features, width = counts.shape
        expected = self._code_model_features()
        if features != expected or low.shape != (features,):
            return (
                f"{counts_name} {tuple(counts.shape)} and {low_name} {tuple(low.shape)} must "
                f"have one row per symbol of a row ({expected})"
            )
        if not 1 <= width <= MAX_WIDTH:
            return f"{counts_name} must count 1 to {MAX_WIDTH:,} symbols per row, not {width:,}"
        counts, low = counts.detach().cpu(), low.detach().cpu()
        if bool((counts < -1).any()):
            return f"{counts_name} holds a count below 0 (-1 marks padding)"
        counted = counts >= 0
        if not bool(counted[:, 0].all()) or bool((counted[:, 1:] > counted[:, :-1]).any()):
            return f"{counts_name} has padding (-1) before a count"
        fixed = self._fixed_support()
        if fixed is not None:
            if bool((low != fixed[0]).any()) or width != fixed[1] or not bool(counted.all()):
                return (
                    f"{counts_name} and {low_name} must count the symbols {fixed[0]} to "
                    f"{fixed[0] + fixed[1] - 1}, every one"
                )
        elif bool((low < -(2**31)).any()) or bool((low > 2**31 - width).any()):
            return f"{low_name} puts the counted range beyond 32-bit symbols"
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, *rest):
        problem = self._identity_problem(local_metadata, prefix)  # type: ignore[attr-defined]
        if problem:  # weights that mean other things here: nothing of them, counts included
            rest[-1].append(problem)
            return
        # the code model's buffers take the saved shape; a checkpoint from before they existed
        # loads with them empty ("no code model yet"); saved ones must be consistent
        keys = [prefix + name for name in CODE_MODEL_BUFFERS]
        if not any(key in state_dict for key in keys) and any(
            key.startswith(prefix) for key in state_dict
        ):
            # weights without counts: the counts held belonged to the weights being replaced (a
            # stale code model compressed on, while a module loaded fresh from the same
            # weights had none), so none are kept
            for name in CODE_MODEL_BUFFERS:
                held = self._buffers[name]
                self._buffers[name] = held.new_zeros((0,) * held.dim())
        saved = [state_dict.get(prefix + name, self._buffers[name]) for name in CODE_MODEL_BUFFERS]
        problem = self._code_model_problem(*saved, prefix=prefix)
        if problem:
            raise ValueError(problem)
        for name in CODE_MODEL_BUFFERS:
            key = prefix + name
            if key in state_dict:
                self._buffers[name] = torch.empty_like(
                    state_dict[key], device=self._buffers[name].device
                )
            else:
                state_dict[key] = self._buffers[name]
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing, *rest
        )
