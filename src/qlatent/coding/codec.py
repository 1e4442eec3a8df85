"""Entropy coding of a bottleneck's hard-path symbols with ``constriction``'s ANS coder.

The lattice paper's representation cost is −log P(Ẑ = z | U = u), with the dither U common
randomness of encoder and decoder. Here it becomes a file. The coder knows no bottleneck class:
a bottleneck hands it a **code model** (``bottleneck.code_model()``, the protocol of
:mod:`.models`) that pushes its symbols with their probabilities and pops them back, and the
coder adds the container, the end-of-stream check and the size checks. The code models:

- **dithered rectangular lattice** (``lattice``): coordinate k_i of z = Δ ⊙ k has probability
  P(X̂ ∈ Δ_i k_i − u_i + [−Δ_i/2, Δ_i/2)) under the Laplace(0, b_i) prior, coded exactly as a
  dither-dependent sign and a geometric magnitude (:class:`~.models.DitheredLaplace`), so the
  coded length is the hard path's rate up to the coder's fixed-point overhead. The dither is
  regenerated from the seed in the header (:class:`qlatent.rng.SeedKeys`), identically on every
  machine and thread count and without torch's random number generators.
- **good lattices** (``lattice`` with E8, Λ16, Λ24 ... and a Laplace prior): the point z coded
  by its coset (E8, Λ16, Λ24) or coordinate by coordinate in a triangular basis
  (:class:`~.models.GoodLattice`). A bottleneck may still read files of an earlier code model
  of its own (``bottleneck.code_model_for(kind)``).
- **counted symbols** (``vq``, ``vq_ema``, ``soft_em_vq``, ``learnable_lattice`` after
  ``bottleneck.update(training_latents)``): each feature with its own categorical of the counted
  frequencies (:class:`~.models.Counted`); a symbol outside the counted range is an escape
  followed by 32 raw bits.
- **uniform codeword indices** (the codebook methods before ``update()``): log K bits each.

``compress(bottleneck, y, seed=s)`` gives ``bytes`` (see :mod:`.container`) and
``decompress(bottleneck, data)`` returns exactly ``bottleneck.eval()(y,
generator=SeedKeys(s)).y_hat``. Shapes: ``y`` is ``(B, d)`` or ``(B, d, *spatial)``; the result
has the same shape with ``d = bottleneck.dim``. :func:`ideal_bits` is the information content
the coder approaches: Σ −log2 P(symbol) under the same code model.

A bottleneck is anything with ``dim``, ``code_model()``, ``_check_input(y)`` and ``_cast(y)``
(the base class of :mod:`qlatent.bottlenecks` provides the last two); a new method gets files by
implementing ``code_model()`` alone.
"""

from __future__ import annotations

import copy
import hashlib
import math

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import DIGEST_FORM, autocast_off, from_rows, repr_for_digest, to_rows
from .container import (
    CODE_MODELS,
    MAX_RANK,
    CodingError,
    Header,
    check_digest,
    other_model,
    pack,
    unpack,
)
from .models import constriction


def model_digest(module: nn.Module) -> bytes:
    """SHA-256 over a module's class, configuration (``repr``) and every weight and buffer.

    The ``repr`` is read within :func:`qlatent._utils.repr_for_digest`, where it names only what
    determines the code: ``compile`` is shown off (:func:`~qlatent._utils.shown_compile`; the
    fused kernels code as the eager ones), and each setting that a module's class lists in
    ``_FREE_OF_CODE`` (setting -> constructor default: the training losses' weights, the EMA
    M-step's, a codebook's initialisation, a good lattice's Monte-Carlo rate settings) is shown
    at its default (:func:`~qlatent._utils.shown_setting`). The same weights under other such
    settings write the same files and read each other's; a module at its defaults has the
    digest it always had.

    Returns the 32-byte digest that :func:`compress` writes into the header and
    :func:`decompress` checks. Raises TypeError if ``module`` is not an ``nn.Module``, ValueError
    if a weight or buffer is on the meta device (no values yet).
    """
    return _digest(module, DIGEST_FORM)


def _digest(module: nn.Module, form: int) -> bytes:
    """:func:`model_digest` of ``module`` in ``form`` (:func:`qlatent._utils.repr_for_digest`)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a bottleneck (a torch.nn.Module), got {type(module).__name__}")
    h = hashlib.sha256()
    h.update(type(module).__qualname__.encode())
    with repr_for_digest(form):  # settings that change no code shown at their defaults
        h.update(repr(module).encode())
    for name, tensor in sorted(module.state_dict().items()):
        if tensor.is_meta:
            raise ValueError(
                f"{type(module).__name__}'s {name} is on the meta device: it has a shape but no "
                "values to take a digest of (load the weights first)"
            )
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def check_model_digest(module: nn.Module, digest: bytes) -> None:
    """:class:`CodingError` unless ``digest`` (a file's) names ``module``: its
    :func:`model_digest`, or the digest earlier versions wrote for it, whose ``repr`` also
    showed ``compile`` and the settings that change no code as they were (a file written by a
    module with ``debias=True`` or a ``commitment`` of 1 before those were left out). The
    earlier forms are computed only for a file that does not carry the current one."""
    current = model_digest(module)
    if digest == current:
        return
    if any(digest == _digest(module, form) for form in range(DIGEST_FORM - 1, -1, -1)):
        return
    raise other_model(digest, current)


def _model_of(bottleneck):
    """``bottleneck.code_model()``; TypeError (with the reason) if it has none (yet)."""
    make = getattr(bottleneck, "code_model", None)
    if make is None:
        raise TypeError(f"{type(bottleneck).__name__} has no entropy model to code its symbols")
    return make()


def _on_cpu(bottleneck) -> tuple[nn.Module, torch.device | None]:
    """``(bottleneck, None)`` if its parameters and buffers are on the CPU, else ``(a copy on the
    CPU, the device they were on)``: code models run on the CPU (the entropy coder takes NumPy
    arrays), and the dither and coordinates they compute must live beside the rows. The copy
    holds the same numbers, so its files are the files of the original."""
    if not isinstance(bottleneck, nn.Module):
        raise TypeError(
            f"expected a bottleneck (a torch.nn.Module), got {type(bottleneck).__name__}"
        )
    tensors = [*bottleneck.parameters(), *bottleneck.buffers()]
    if any(t.is_meta for t in tensors):
        raise ValueError(
            f"the bottleneck ({type(bottleneck).__name__}) is on the meta device: it has shapes "
            "but no values to code with (load its weights first)"
        )
    elsewhere = [t.device for t in tensors if t.device.type != "cpu"]
    if not elsewhere:
        return bottleneck, None
    return copy.deepcopy(bottleneck).cpu(), elsewhere[0]


def code_model(bottleneck) -> int:
    """Which code model (container id) ``bottleneck``'s symbols use; TypeError if none (yet).

    The id is a key of :data:`~.container.CODE_MODELS`, e.g. the uniform-index model of a
    codebook bottleneck before ``update()`` and the counted model after it.
    """
    return _model_of(bottleneck).kind


def _check_tensor(y: Tensor, *, filed: bool) -> None:
    """ValueError for a ``y`` on the meta device (no values), and where it goes into a file
    (``filed``) for one the container cannot describe: more than :data:`MAX_RANK` axes or a
    size of 2^32 or more, refused before anything is coded (it failed only in :func:`pack`,
    after the whole input was coded)."""
    if not isinstance(y, Tensor):
        return  # the bottleneck's own check names it
    if y.is_meta:
        raise ValueError(f"y is on the meta device: it has a shape {tuple(y.shape)} but no values")
    if filed and (y.dim() > MAX_RANK or any(n >= 2**32 for n in y.shape)):
        raise ValueError(
            f"y has shape {tuple(y.shape)}: a .qlc file holds at most {MAX_RANK} axes of fewer "
            "than 2^32 entries each"
        )


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return seed


#: 32 bits pushed first (so decoded last), as two 16-bit symbols
_CHECK_WORD = np.array([0x514C, 0x4331], dtype=np.int32)


def _terminator():
    """The model of :data:`_CHECK_WORD`'s halves: uniform over 16 bits.

    An ANS coder starts empty, in state 0, and while its state x is below a symbol's frequency,
    coding a symbol whose cumulative probability starts at 0 leaves x unchanged: a run of such
    symbols pushed first would cost nothing (they decode from the final state for free). The
    file would then be shorter than its information content by an amount that depends on the
    symbol order. Pushing 32 known bits first lifts the state above 2^32, after which every
    symbol pays its −log2 P; decoding checks that they come out last and the stream is empty.
    """
    return constriction().stream.model.Uniform(1 << 16)


@autocast_off
@torch.no_grad()
def compress(bottleneck, y: Tensor, *, seed: int, digest: bytes | None = None) -> bytes:
    """The hard-path symbols of ``y`` as a ``.qlc`` byte string.

    Args:
        bottleneck: a trained bottleneck with a code model: ``lattice`` (its prior; the good
            lattices with the Laplace prior), ``vq``, ``vq_ema``, ``soft_em_vq`` (counted after
            ``update()``, uniform before) or ``learnable_lattice`` (after ``update()``); used in
            eval mode. On another device than the CPU, a CPU copy of it does the coding.
        y: ``(B, in_dim)`` or ``(B, in_dim, *spatial)`` encoder output, on any device.
        seed: the dither's seed, stored in the header.
        digest: the model digest to write (default: :func:`model_digest` of ``bottleneck``; the
            CLI passes the whole autoencoder's so that its decoder is pinned too).

    Returns:
        The container bytes (header, ANS payload, checksum); ``8 * len(data)`` is the coded
        rate in bits for the whole batch, header included.

    Raises:
        TypeError: ``bottleneck`` has no code model (yet).
        ValueError: bad ``seed`` (not an integer in [0, 2^63)) or ``digest``; ``y`` on the meta
            device, of more axes or larger sizes than the container holds, or failing the
            bottleneck's input check (rank, ``in_dim`` on axis 1, NaN/Inf).
    """
    seed = _check_seed(seed)
    if digest is not None:
        check_digest(digest)
    on_cpu, _ = _on_cpu(bottleneck)
    model = _model_of(on_cpu)
    _check_tensor(y, filed=True)
    bottleneck._check_input(y)
    rows = to_rows(on_cpu._cast(y.detach().cpu()))
    shape = (y.shape[0], bottleneck.dim, *y.shape[2:])
    coder = constriction().stream.stack.AnsCoder()
    coder.encode_reverse(_CHECK_WORD, _terminator())  # decoded last
    lo = hi = 0
    if rows.shape[0]:  # nothing to code for an empty input: the header's shape says so
        lo, hi = model.encode(coder, rows, seed)
    payload = coder.get_compressed().astype("<u4").tobytes()
    digest = model_digest(bottleneck) if digest is None else digest
    header = Header(model.kind, digest, seed, lo, hi, tuple(shape))
    return pack(header, payload)


#: the most values :func:`decompress` produces unless told otherwise (512 MiB of float32)
MAX_ELEMENTS = 1 << 27


def _check_size(bottleneck, model, shape: tuple[int, ...], words: int, max_elements: int) -> int:
    """Refuse a header whose shape the payload cannot hold, or beyond ``max_elements``, before
    anything of that size is allocated: the work of a refused decode is O(file size). Returns
    the number of rows (positions) to decode."""
    if len(shape) < 2 or shape[1] != bottleneck.dim:
        raise CodingError(f"the file's shape {shape} does not fit a {bottleneck.dim}-d code")
    positions = shape[0] * math.prod(shape[2:])  # Python integers: no wrap-around
    elements = positions * bottleneck.dim
    if elements > max_elements:
        raise CodingError(
            f"the header announces {elements:,} values (shape {shape}), more than "
            f"max_elements={max_elements:,}; pass a larger max_elements to decode it"
        )
    # ANS codes a sequence in its information content plus at most a few words; half of the
    # bound and two words of slack keep any file this coder wrote well inside it
    available = 32 * words + 64
    needed = positions * model.min_row_bits()
    if needed > 2 * available:
        raise CodingError(
            f"corrupt header: shape {shape} needs at least {needed:,.0f} bits, the payload "
            f"holds {32 * words:,}"
        )
    return positions


@autocast_off
@torch.no_grad()
def decompress(
    bottleneck,
    data: bytes,
    *,
    digest: bytes | None = None,
    max_elements: int = MAX_ELEMENTS,
    model: nn.Module | None = None,
) -> Tensor:
    """``y_hat`` from a ``.qlc`` byte string written for this ``bottleneck`` (same digest).

    Every size in the header is checked against the payload and against ``max_elements`` (the
    most values the result may hold) before anything is allocated; a file that fails any check
    raises :class:`CodingError`. A file whose payload was edited and its checksum recomputed
    cannot be told from a genuine one (a CRC detects damage, not forgery): it decodes to some
    other y_hat of the announced shape, or fails the end-of-stream check. ``y_hat`` is on the
    bottleneck's device (decoded by a CPU copy of it if that is another device).

    Returns ``y_hat`` of the shape stored in the header, ``(B, dim)`` or ``(B, dim, *spatial)``
    with ``dim = bottleneck.dim`` on axis 1. The file must carry ``digest`` if given, else the
    digest of ``model`` (default: the bottleneck), as :func:`check_model_digest` accepts it.
    Raises ValueError for a ``max_elements`` that is not a non-negative integer, a malformed
    ``digest`` or both ``digest`` and ``model``, TypeError if the bottleneck has no code model.
    """
    if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 0:
        raise ValueError(f"max_elements must be a non-negative integer, got {max_elements!r}")
    if digest is not None:
        check_digest(digest)
        if model is not None:
            raise ValueError("decompress takes a digest or a model to check it against, not both")
    # the digest first: a file from another model is refused as such, code model or not
    header, payload = unpack(data, expected_digest=digest)
    if digest is None:
        check_model_digest(bottleneck if model is None else model, header.digest)
    bottleneck, device = _on_cpu(bottleneck)
    model = _model_of(bottleneck)
    if header.code_model != model.kind:  # an earlier code model the bottleneck still knows
        earlier = getattr(bottleneck, "code_model_for", None)
        model = (earlier(header.code_model) if earlier is not None else None) or model
    if header.code_model != model.kind:
        raise CodingError(
            f"the file holds symbols for the {CODE_MODELS[header.code_model]!r} code model, this "
            f"bottleneck uses {CODE_MODELS.get(model.kind, model.kind)!r}"
        )
    if len(payload) % 4:
        raise CodingError("corrupt payload: its length is not a whole number of 32-bit words")
    shape = header.shape
    positions = _check_size(bottleneck, model, shape, len(payload) // 4, max_elements)
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    try:
        coder = constriction().stream.stack.AnsCoder(words)
        if positions == 0:
            rows = bottleneck._cast(torch.zeros(0, bottleneck.dim))
        else:
            rows = model.decode(coder, positions, header.seed, header.symbol_min, header.symbol_max)
        end = coder.decode(_terminator(), _CHECK_WORD.size)
        if not np.array_equal(end, _CHECK_WORD) or not coder.is_empty():
            raise CodingError("corrupt payload: the decoder did not end where the encoder began")
    except CodingError:
        raise
    except (ValueError, RuntimeError, AssertionError, OverflowError, IndexError) as err:
        raise CodingError(f"corrupt payload: the entropy decoder failed ({err})") from err
    y_hat = from_rows(rows, shape)
    return y_hat if device is None else y_hat.to(device)


@autocast_off
@torch.no_grad()
def ideal_bits(bottleneck, y: Tensor, *, seed: int) -> float:
    """Σ −log2 P(symbol) of ``y``'s hard-path symbols under the code model :func:`compress`
    uses: the lattice's exact rate −log2 P(z | u) with seed ``seed``'s dither; the counted
    model's probabilities (32 raw bits more per escape); log2 K per uniform index; the good
    lattices' coordinate-by-coordinate model. A file is this long plus the coder's overhead and
    the header.

    ``y`` is ``(B, in_dim)`` or ``(B, in_dim, *spatial)``, as for :func:`compress`. Returns one
    Python float: bits (base 2, not nats) in total over the whole batch, not per example.
    Raises as :func:`compress` (TypeError without a code model, ValueError for a bad ``seed``
    or ``y``).
    """
    bottleneck, _ = _on_cpu(bottleneck)
    _check_tensor(y, filed=False)
    bottleneck._check_input(y)
    model = _model_of(bottleneck)
    seed = _check_seed(seed)
    # every module's own mode put back (train(was_training) set a submodule kept in eval mode,
    # an EMA codebook, to the bottleneck's training mode)
    modes = [(module, module.training) for module in bottleneck.modules()]
    bottleneck.eval()
    try:
        return model.ideal_bits(to_rows(bottleneck._cast(y.detach().cpu())), seed)
    finally:
        for module, training in modes:
            module.training = training
