"""The codebook kept by exponential moving averages: :class:`EMACodebook`, the M-step of hard
and soft EM (Roy et al. 2018, arXiv 1805.11063), with counts and sums smoothed by Laplace, and
:class:`EMASettings`, its ``decay`` and ``eps`` read and set on the quantizer that holds it.
Used by ``vq_ema`` and ``soft_em_vq``, and re-exported by :mod:`._codebook`.

Under ``torch.distributed`` the batch statistics are all-reduced first, so every rank applies
the same update and keeps the same codebook (not inside :func:`local_updates`, for passes whose
updates are put back). A forward recomputed by ``torch.utils.checkpoint`` (:func:`recomputing`)
repeats the forward it recomputes, with no second update (:meth:`EMACodebook.recorded_step`).

Shapes: ``z`` ``(N, d)`` rows, codebook ``e`` ``(K, d)``.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._utils import in_transform, shown_setting
from ._codebook_init import init_codebook
from ._constructor_values import Fixed, Setting, check_flag
from ._recomputation import _row_sums, recomputed_record, recomputing


def _check_decay(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return float(value)


def _check_eps(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    # an infinite eps made every smoothed count NaN, and with it the codebook
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


#: how many :func:`local_updates` blocks are open (their M-steps are this rank's own)
_LOCAL_UPDATES = 0


@contextlib.contextmanager
def local_updates() -> Iterator[None]:
    """Inside it an :class:`EMACodebook` update uses this rank's batch alone, with no
    all-reduce: for a pass whose updates are put back afterwards (validation on the training
    path), where the ranks run different numbers of batches (shards of unequal size). An
    all-reduce per batch there paired one rank's codebook statistics with another's metric
    totals, and the run failed on a collective mismatch."""
    global _LOCAL_UPDATES
    _LOCAL_UPDATES += 1
    try:
        yield
    finally:
        _LOCAL_UPDATES -= 1


def _synchronized() -> bool:
    """Whether an update sums its statistics over the ranks of a world larger than one."""
    if _LOCAL_UPDATES:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class TrainingStep:
    """What one training-mode forward quantized with, kept for its recomputation: the sums of
    its input rows (:func:`_row_sums`, to recognise them), its codebook before the M-step
    ``(K, d)``, soft EM's sampled codes ``(N, m)`` (``None`` for hard EM), and the graph task
    that last recomputed it (a second recomputation in one backward pass is of another forward
    with the same input)."""

    row_sums: Tensor
    codebook: Tensor
    samples: Tensor | None = None
    task: int = -1


class EMACodebook(nn.Module):
    """Codebook kept by exponential moving averages (the M-step of hard / soft EM).

    With batch statistics n_k (counts, fractional for soft EM) and s_k = Σ_i w_ik z_i::

        c_k ← λ c_k + (1 − λ) n_k          m_k ← λ m_k + (1 − λ) s_k
        c̃_k = (c_k + ε) / (Σ c + K ε) · Σ c  (Laplace smoothing)      e_k = m_k / c̃_k

    ``c`` starts at zero and ``m`` at the initial codebook, as in tensor2tensor and the common
    VQ-VAE-EMA code. A code that is never chosen keeps m_k = λ^t m_k(0) over a smoothed count of
    about ε, so it drifts far away and stays unused ("dead"); that is the method, not a bug.

    ``store_smoothed=True`` writes c̃ back into ``c`` (c ← c̃), as zalandoresearch's
    ``VectorQuantizerEMA`` and the LL-VQ-VAE reference code built on it do; tensor2tensor and
    Sonnet keep c̃ local. It changes what happens to a dead code: its count no longer decays to 0
    but settles at about ε / (1 − λ) (1e-3 for λ = 0.99, ε = 1e-5), so e_k = λ^t m_k(0) / c̃_k
    shrinks back towards the data after about 700 steps instead of about 1,150 (for
    ‖m_k(0)‖ ≈ 8 and data of norm about 10), and the code can be revived while the network
    still learns.

    Under ``torch.distributed`` (world size > 1) n and s are summed over ranks before the update,
    so every rank computes the same codebook from the global batch.

    The M-step belongs to the forward, not the backward: a quantizer records each training-mode
    forward's codebook (:meth:`record_step`) so that a recomputation under
    ``torch.utils.checkpoint`` quantizes with it and skips the update (:meth:`recorded_step`).
    The last ``RECOMPUTABLE`` forwards are kept, recognised by their input rows (to rounding:
    :func:`_same_rows`). A recomputation after more training-mode forwards than that, or after
    a ``.to()`` or cast of the module, raises RuntimeError, as does a training-mode forward run
    inside a backward pass by other means (a backward hook, a custom Function's backward).
    Several checkpointed forwards of one input before one backward are matched latest first,
    the order in which the autograd engine recomputes them.
    """

    #: how many training-mode forwards a recomputation can find, the latest first
    RECOMPUTABLE = 4

    codebook: Tensor
    ema_count: Tensor
    ema_sum: Tensor
    num_codes = Fixed()
    decay = Setting(_check_decay)
    eps = Setting(_check_eps)
    store_smoothed = Setting(check_flag)
    # the M-step of training reads these; the codebook itself is the code
    _FREE_OF_CODE = {"decay": 0.99, "eps": 1e-5, "store_smoothed": False}

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        decay: float,
        eps: float,
        init: str = "unit_scaling",
        store_smoothed: bool = False,
    ) -> None:
        super().__init__()
        self.num_codes, self.decay, self.eps = num_codes, decay, eps
        self.store_smoothed = store_smoothed
        initial = init_codebook(init, num_codes, dim)
        self.register_buffer("codebook", initial)
        self.register_buffer("ema_count", torch.zeros(num_codes))
        self.register_buffer("ema_sum", initial.clone())
        self._steps: collections.deque[TrainingStep] = collections.deque(maxlen=self.RECOMPUTABLE)

    @torch.compiler.disable
    def record_step(self, rows: Tensor, codebook: Tensor, samples: Tensor | None = None) -> None:
        """Keeps what a training-mode forward of ``rows`` ``(N, d)`` quantized with (its
        ``codebook`` before the M-step, soft EM's ``samples``) for its recomputation. Not under
        ``torch.inference_mode``, whose forwards have no backward to recompute them, nor under
        a ``torch.func`` transform, whose tensors die with it."""
        if not (torch.is_inference_mode_enabled() or in_transform()):
            self._steps.append(TrainingStep(_row_sums(rows), codebook, samples))

    @torch.compiler.disable
    def recorded_step(self, rows: Tensor) -> TrainingStep | None:
        """Inside a backward pass (:func:`recomputing`), the recorded forward of ``rows`` that
        this one recomputes: the latest whose input matches, to rounding, and that this backward
        has not recomputed yet; ``None`` outside a backward pass. RuntimeError when none is
        recorded (more than ``RECOMPUTABLE`` training-mode forwards since, a ``.to()`` or cast
        in between, or a training-mode forward run inside a backward pass by other means). A
        checkpoint nested in another recomputes its forward twice in one backward pass: the
        second time, the forward found the first time."""
        self._check_transformed(rows)
        if not recomputing():
            return None
        step = recomputed_record(self._steps, rows)
        if step is not None:
            return step
        raise RuntimeError(
            "a training-mode forward of an EMA codebook quantizer inside a backward pass "
            "(torch.utils.checkpoint's recomputation) matches none of its last "
            f"{self.RECOMPUTABLE} training-mode forwards: backpropagate a checkpointed forward "
            f"before {self.RECOMPUTABLE} more, and do not move or cast the module in between"
        )

    def _check_transformed(self, rows: Tensor) -> None:
        """RuntimeError when a ``torch.func`` transform (``grad``, ``vjp``, ``jacrev``) runs
        the training forward of ``rows`` while the statistics the M-step writes in place are
        not among the transformed inputs: torch refuses to write into such captured tensors,
        with an error that names neither the module nor a way out."""
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor
        if not wrapped(rows):
            return
        captured = [
            name for name in ("codebook", *self._STATISTICS) if not wrapped(getattr(self, name))
        ]
        if captured:
            raise RuntimeError(
                "a training-mode forward of an EMA codebook quantizer (vq_ema, soft_em_vq) "
                "updates its codebook in place, and under this torch.func transform its "
                f"buffers {captured} are captured tensors, which torch does not let it write: "
                "pass the floating-point buffers among the transformed inputs "
                "(functional_call with them in an argnums argument), take the gradients with "
                "torch.autograd, or run the module in eval mode inside the transform"
            )

    def __getstate__(self) -> dict:
        """As ``nn.Module``'s, without the recorded forwards: a copy (pickle, ``deepcopy``,
        ``torch.save`` of the whole module) has no forward of its own to recompute, and the
        old codebooks made a saved ``vq_ema`` three times its size."""
        state = super().__getstate__()
        state["_steps"] = collections.deque(maxlen=self.RECOMPUTABLE)
        return state

    def __setstate__(self, state: dict) -> None:
        """As ``nn.Module.__setstate__``; a module pickled before forwards were recorded
        (``torch.save`` of the whole module) gets an empty record, as a new one has."""
        super().__setstate__(state)
        if "_steps" not in self.__dict__:
            self._steps = collections.deque(maxlen=self.RECOMPUTABLE)

    @torch.no_grad()
    def update(self, counts: Tensor, sums: Tensor) -> None:
        """One M-step from this batch's ``counts`` ``(K,)`` and ``sums`` ``(K, d)``.
        RuntimeError when a buffer it writes is parametrized (:meth:`_check_unparametrized`)."""
        self._check_unparametrized()
        stats = torch.cat([counts.reshape(-1, 1), sums], dim=1).to(self.ema_sum.dtype)
        if _synchronized():
            dist.all_reduce(stats)  # the global batch: every rank gets the same codebook
        self.ema_count.mul_(self.decay).add_(stats[:, 0], alpha=1.0 - self.decay)
        self.ema_sum.mul_(self.decay).add_(stats[:, 1:], alpha=1.0 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
        # before any code has been counted the smoothed counts are zero; keep the codebook then
        if total > 0:
            self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
            if self.store_smoothed:
                self.ema_count.copy_(smoothed)

    def _check_unparametrized(self) -> None:
        """RuntimeError when ``torch.nn.utils.parametrize`` holds the codebook or a statistic:
        a parametrized tensor is computed afresh at every read, so the M-step's in-place writes
        went into a temporary and were lost without a word (the codebook never moved)."""
        held = [
            name
            for name in ("codebook", *self._STATISTICS)
            if nn.utils.parametrize.is_parametrized(self, name)
        ]
        if held:
            raise RuntimeError(
                f"the EMA codebook's buffers {held} are parametrized (torch.nn.utils."
                "parametrize), and the M-step of a training-mode forward writes them in place, "
                "which a parametrization would discard: remove the parametrization, or run the "
                "quantizer in eval mode, which only reads its codebook"
            )

    #: the running statistics, kept in float32 at least whatever the module is cast to
    _STATISTICS = ("ema_count", "ema_sum")

    def _apply(self, fn, recurse: bool = True):
        """As ``nn.Module._apply``, except that ``ema_count`` and ``ema_sum`` never drop below
        float32: an update moves a count by (1 − λ)(n − c), less than half a bfloat16 step of
        c beyond c = 32 (λ = 0.99), so in bfloat16 the counts and sums stalled at different
        points and a codeword settled at 0.256 instead of its cluster's mean 0.3. The codebook
        itself follows the module's dtype (what the bottleneck computes in)."""
        # (a statistic held by a parametrization is no buffer of this module: not kept here)
        before = {name: self._buffers[name] for name in self._STATISTICS if name in self._buffers}
        self._steps.clear()  # kept in the old device and dtype: a recomputation refuses them
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is None or not new.is_floating_point() or new.element_size() >= 4:
                continue
            kept = torch.empty(new.shape, dtype=torch.float32, device=new.device)
            if not (old.is_meta or new.is_meta):
                kept.copy_(old)  # the values before the cast, not their rounding
            self._buffers[name] = kept
        return self

    def extra_repr(self) -> str:
        extra = ", store_smoothed=True" if shown_setting(self, "store_smoothed") else ""
        decay, eps = shown_setting(self, "decay"), shown_setting(self, "eps")
        return f"num_codes={self.num_codes}, decay={decay}, eps={eps}{extra}"


class EMASettings:
    """``decay`` and ``eps`` of a quantizer's EMA codebook (``self.ema``) read and set on the
    quantizer itself, checked as :class:`EMACodebook` checks them: ``neck.decay = 1.5`` made
    an attribute nothing read, while the codebook went on at its own decay. Also what refuses
    a trace or an export of its training-mode forward
    (:attr:`~qlatent.bottlenecks.base.Bottleneck._UNTRACEABLE`)."""

    ema: EMACodebook
    _UNTRACEABLE = {
        "training": (
            "its M-step rewrites the codebook in place after Python decisions (the first "
            "counted batch, torch.distributed, a checkpoint's recomputation) and with the "
            "decay and eps of the tracing call, which a trace fixes as constants, and the "
            "trace itself runs M-steps. Trace it in eval mode, which only reads the codebook, "
            "or export the eval-mode module with torch.export.export"
        )
    }
    _UNEXPORTABLE = {
        "training": (
            "its M-step rewrites the codebook in place after Python decisions on values (the "
            "first counted batch) and keeps records for a checkpoint's recomputation, which an "
            "exported program cannot hold. Export it in eval mode, which only reads the "
            "codebook, and train it eagerly or under torch.compile"
        )
    }

    @property
    def decay(self) -> float:
        return self.ema.decay

    @decay.setter
    def decay(self, value: float) -> None:
        self.ema.decay = value

    @property
    def eps(self) -> float:
        return self.ema.eps

    @eps.setter
    def eps(self, value: float) -> None:
        self.ema.eps = value
