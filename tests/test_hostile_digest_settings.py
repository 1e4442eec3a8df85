"""The model digest of a ``.qlc`` file names what determines the code, and nothing else.

A file's header holds :func:`qlatent.coding.codec.model_digest` of the module that wrote it, and
``decompress`` refuses a module whose digest differs. Settings that change neither the coded
bytes nor the decoded ``y_hat`` (a training loss's weight, the EMA M-step's decay, a codebook's
initialisation, a good lattice's Monte-Carlo rate counts) made the same weights refuse their own
files: the digest read them from the module's ``repr``. They are now shown at their defaults
while the digest reads the ``repr`` (``_FREE_OF_CODE``), so

- the same weights under another such setting write the same bytes and read each other's
  files, with the same ``y_hat`` bit for bit;
- a module at its defaults keeps the digest it always had (the golden bitstreams hold it),
  checked against the digest's definition over the ``repr`` it always printed;
- settings that do determine the code (the lattice, the prior, the number of codes or levels,
  the weights) still change the digest, and their files are refused.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.coding import CodingError, compress, decompress
from qlatent.coding.codec import model_digest
from qlatent.coding.container import unpack
from qlatent.rng import SeedKeys

SEED = 11

# (method, constructor arguments, setting, another value, count symbols with update())
E8 = {"dim": 8, "lattice": "e8", "init_spacing": 0.6, "init_scale": 1.3}
E8_Z = {"dim": 12, "lattice": ["e8", "z", "z", "z", "z"], "init_spacing": 0.6}
E8_GAUSS = {**E8, "prior": "gaussian"}
VQ = {"dim": 4, "num_codes": 16}
FREE = [
    ("lattice", E8, "samples", 16, False),
    ("lattice", E8, "eval_samples", 64, False),
    ("lattice", E8, "prior_samples", 4, False),
    ("lattice", E8_Z, "eval_prior_samples", 0, False),
    ("lattice", E8, "proposal", "box", False),
    ("lattice", E8_GAUSS, "proposal", "tilted", False),
    ("lattice", E8_GAUSS, "debias", True, False),
    ("lattice", E8_Z, "exact_rectangular", False, False),
    ("vq", VQ, "commitment", 1.0, False),
    ("vq", VQ, "init", "normal", True),
    ("vq_ema", VQ, "commitment", 1.0, True),
    ("vq_ema", VQ, "decay", 0.5, False),
    ("vq_ema", VQ, "eps", 1e-3, True),
    ("vq_ema", VQ, "store_smoothed", True, False),
    ("soft_em_vq", VQ, "num_samples", 3, False),
    ("soft_em_vq", VQ, "temperature", 0.01, True),
    ("soft_em_vq", VQ, "commitment", 0.0, False),
    ("soft_em_vq", VQ, "vib_weight", 0.5, True),
    ("soft_em_vq", VQ, "decay", 0.9, True),
    ("learnable_lattice", {"dim": 4, "init_range": 0.5}, "num_codes", 64, True),
    ("learnable_lattice", {"dim": 4}, "commitment", 1.0, True),
    ("learnable_lattice", {"dim": 4}, "size_weight", -1.0, True),
    ("vector_st", {"dim": 4}, "init_range", 3.0, True),
    ("scalar_st", {"dim": 4, "levels": 8}, "init_range", 0.25, True),
]


def _trained(name: str, kwargs: dict, counted: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    """A module whose weights moved off their start (EMA codebooks by M-steps, the rest by a
    small perturbation), in eval mode, its symbols counted where asked, and an input."""
    torch.manual_seed(1)
    module = build(name, **kwargs)
    x = 1.5 * torch.randn(48, module.in_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        if name in ("vq_ema", "soft_em_vq"):
            module.train()
            for step in range(3):
                module(x, generator=torch.Generator().manual_seed(step))
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    module.eval()
    if counted:
        module.update(x)
    return module, x


def _twin(name: str, kwargs: dict, setting: str, value, source) -> torch.nn.Module:
    """The same weights as ``source`` under ``setting=value``."""
    twin = build(name, **{**kwargs, setting: value}).eval()
    twin.load_state_dict(source.state_dict())
    return twin


def _held(module, setting: str):
    """The value ``module`` holds for ``setting`` (an EMA codebook's own on its ``ema``)."""
    return getattr(module.ema if setting == "store_smoothed" else module, setting)


@pytest.mark.parametrize(
    ("name", "kwargs", "setting", "value", "counted"),
    FREE,
    ids=[f"{case[0]}-{case[2]}" for case in FREE],
)
def test_a_setting_that_changes_no_code_reads_the_files_of_another_value(
    name, kwargs, setting, value, counted
):
    a, x = _trained(name, kwargs, counted)
    b = _twin(name, kwargs, setting, value, a)
    assert _held(b, setting) == value != _held(a, setting)
    data = compress(a, x, seed=SEED)
    # the code itself: the other value writes the same bytes (header, payload and digest)
    assert compress(b, x, seed=SEED) == data
    y_hat = decompress(a, data)
    assert torch.equal(decompress(b, data), y_hat)
    assert torch.equal(decompress(a, compress(b, x, seed=SEED)), y_hat)
    assert torch.equal(b(x, generator=SeedKeys(SEED)).y_hat, y_hat)


def test_a_setting_assigned_after_construction_keeps_the_digest():
    a, x = _trained("lattice", E8, False)
    data = compress(a, x, seed=SEED)
    a.eval_samples, a.eval_prior_samples, a.debias = 2048, [8], True
    assert torch.equal(decompress(a, data), a(x, generator=SeedKeys(SEED)).y_hat)


def _digest_over(module: torch.nn.Module, text: str) -> bytes:
    """The digest's definition, SHA-256 over the class name, the configuration text and every
    weight and buffer (name, dtype, shape, bytes), with ``text`` for the configuration."""
    h = hashlib.sha256()
    h.update(type(module).__qualname__.encode())
    h.update(text.encode())
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


# the configuration text of each method at its defaults, as its repr has always printed it:
# the digest of a default module (and of the golden bitstreams) is the one over this text
DEFAULT_TEXT = {
    "vq": "VectorQuantizer(dim=4, num_codes=16, commitment=0.25, init='unit_scaling')",
    "vq_ema": (
        "EMAVectorQuantizer(\n  dim=4, num_codes=16, commitment=0.25\n"
        "  (ema): EMACodebook(num_codes=16, decay=0.99, eps=1e-05)\n)"
    ),
    "soft_em_vq": (
        "SoftEMVectorQuantizer(\n  dim=4, num_codes=16, num_samples=10, temperature=1.0, "
        "commitment=0.25, vib_weight=0.0\n"
        "  (ema): EMACodebook(num_codes=16, decay=0.99, eps=1e-05)\n)"
    ),
    "lattice": (
        "DitheredGoodLattice(dim=8, lattice='E8', prior='laplace', samples=128, "
        "prior_samples=32, eval_samples=1024, eval_prior_samples=64, proposal='prior', "
        "spacing_per='block', scale_per='coordinate', debias=False, compile=False, "
        "exact_rectangular=True)"
    ),
    "learnable_lattice": (
        "LearnableLattice(dim=4, num_codes=512, commitment=0.25, size_weight=1.0, init_range=0.5)"
    ),
    "vector_st": "VectorST(dim=4, group=2, codes=4, init_range=1.0)",
}
ARGS = {
    "vq": VQ,
    "vq_ema": VQ,
    "soft_em_vq": VQ,
    "lattice": {"dim": 8, "lattice": "e8"},
    "learnable_lattice": {"dim": 4, "init_range": 0.5},
    "vector_st": {"dim": 4},
}
OTHER = {
    "vq": {"commitment": 2.0, "init": "uniform_inverse_k", "compile": True},
    "vq_ema": {"commitment": 0.0, "decay": 0.9, "eps": 0.1, "store_smoothed": True},
    "soft_em_vq": {"num_samples": 2, "temperature": 3.0, "commitment": 1.0, "vib_weight": 1.0},
    "lattice": {
        "samples": 8,
        "prior_samples": 0,
        "eval_samples": 32,
        "eval_prior_samples": 2,
        "proposal": "tilted",
        "debias": True,
        "exact_rectangular": False,
        "compile": True,
    },
    "learnable_lattice": {"num_codes": 8, "commitment": 0.5, "size_weight": -1.0},
    "vector_st": {"init_range": 7.0},
}


@pytest.mark.parametrize("name", sorted(DEFAULT_TEXT))
def test_the_digest_is_the_default_modules_whatever_the_code_free_settings(name):
    torch.manual_seed(0)
    default = build(name, **ARGS[name])
    assert repr(default) == DEFAULT_TEXT[name]
    assert model_digest(default) == _digest_over(default, DEFAULT_TEXT[name])
    other = build(name, **ARGS[name], **OTHER[name])
    other.load_state_dict(default.state_dict())
    assert repr(other) != DEFAULT_TEXT[name]  # the module still shows what it holds
    assert model_digest(other) == model_digest(default)


def _refused(writer, reader, x) -> None:
    data = compress(writer, x, seed=SEED)
    assert model_digest(reader) != model_digest(writer)
    with pytest.raises(CodingError, match="written by a different model"):
        decompress(reader, data)


def _payload(module, x) -> bytes:
    return unpack(compress(module, x, seed=SEED))[1]


def test_the_lattice_and_the_prior_still_name_another_model():
    e8, x = _trained("lattice", E8, False)
    # the same weights on D8 (shapes alike; dict() skips the structural check) code otherwise
    d8 = build("lattice", **{**E8, "lattice": "d8"}).eval()
    d8.load_state_dict(dict(e8.state_dict()))
    assert _payload(d8, x) != _payload(e8, x)
    _refused(e8, d8, x)
    gaussian = build("lattice", **E8_GAUSS).eval()
    gaussian.load_state_dict(dict(e8.state_dict()))
    header = unpack(compress(gaussian, x, seed=SEED))[0]
    assert header.code_model != unpack(compress(e8, x, seed=SEED))[0].code_model
    _refused(e8, gaussian, x)
    _refused(gaussian, e8, x)


def test_the_spacing_layout_still_names_another_model():
    block, x = _trained("lattice", E8, False)
    per_coordinate = build("lattice", **E8, spacing_per="coordinate").eval()
    with torch.no_grad():  # the same lattice, one scale per coordinate: the same code
        per_coordinate.log_spacing.copy_(block.log_spacing.expand(8))
        per_coordinate.log_scale.copy_(block.log_scale)
    assert _payload(per_coordinate, x) == _payload(block, x)
    _refused(block, per_coordinate, x)  # conservative: the layout is part of the model


@pytest.mark.parametrize(
    ("name", "kwargs", "setting", "value"),
    [
        ("vq", VQ, "num_codes", 32),
        ("vq_ema", VQ, "num_codes", 8),
        ("scalar_st", {"dim": 4}, "levels", 8),
        ("vector_st", {"dim": 4}, "codes", 9),
    ],
)
def test_the_number_of_codes_still_names_another_model(name, kwargs, setting, value):
    counted = name.endswith("_st")  # these code only counted symbols
    a, x = _trained(name, kwargs, counted)
    b, _ = _trained(name, {**kwargs, setting: value}, counted)
    _refused(a, b, x)


@pytest.mark.parametrize(
    ("name", "kwargs", "weight"),
    [
        ("lattice", {"dim": 8, "init_spacing": 0.5}, "log_spacing"),
        ("lattice", E8, "log_spacing"),
        ("lattice", E8, "log_scale"),
        ("vq", VQ, "codebook"),
        ("vq_ema", VQ, "ema.codebook"),
        ("learnable_lattice", {"dim": 4}, "basis"),
    ],
)
def test_a_weight_change_still_names_another_model(name, kwargs, weight):
    counted = name in ("vq_ema", "learnable_lattice")
    a, x = _trained(name, kwargs, counted)
    b = build(name, **kwargs).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():  # the parameter or buffer itself
        b.state_dict(keep_vars=True)[weight].mul_(1.25)
    y_a = decompress(a, compress(a, x, seed=SEED))
    y_b = decompress(b, compress(b, x, seed=SEED))
    # the weight is part of the code: the decoded values move (a spacing, a codebook) or the
    # coded bytes do (a prior's scale)
    assert not torch.equal(y_a, y_b) or _payload(a, x) != _payload(b, x)
    _refused(a, b, x)


def test_the_defaults_shown_to_the_digest_are_the_constructors_defaults():
    """``_FREE_OF_CODE`` repeats each setting's constructor default: a default changed in one
    place only would give every module at the new default another digest than its files'."""
    import inspect

    from qlatent.bottlenecks import (
        _codebook,
        good_lattice,
        learnable_lattice,
        scalar_st,
        soft_em_vq,
        vector_st,
        vq,
        vq_ema,
    )

    modules = (good_lattice, learnable_lattice, scalar_st, soft_em_vq, vector_st, vq, vq_ema)
    classes = {
        cls
        for mod in (_codebook, *modules)
        for cls in vars(mod).values()
        if inspect.isclass(cls) and getattr(cls, "_FREE_OF_CODE", None)
    }
    assert len(classes) >= 8
    for cls in classes:
        # the EMA codebook takes its decay and eps from the quantizers that hold it
        owners = (
            [vq_ema.EMAVectorQuantizer, soft_em_vq.SoftEMVectorQuantizer]
            if cls is _codebook.EMACodebook
            else [cls]
        )
        for name, shown in cls._FREE_OF_CODE.items():
            for owner in owners:
                parameters = inspect.signature(owner.__init__).parameters
                if name in parameters:
                    assert parameters[name].default == shown, (cls.__name__, owner, name)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(name="lattice", dim=8, lattice="e8", debias=True),
        dict(name="lattice", dim=8, lattice="e8", compile=True),
        dict(name="vq", dim=4, num_codes=8, commitment=1.0),
    ],
    ids=["e8-debias", "e8-compile", "vq-commitment"],
)
def test_files_written_under_the_earlier_digests_still_decode(kwargs):
    """Files written before ``compile`` and the code-free settings were left out of the digest
    carry its earlier forms (``repr`` as it was, form 0; ``compile`` shown off, form 1): the
    same model still reads them, bit for bit, and a digest of no form of it is refused."""
    from qlatent._utils import DIGEST_FORM
    from qlatent.coding import CodingError, compress, decompress
    from qlatent.coding.codec import _digest, model_digest

    kwargs = dict(kwargs)
    neck = build(kwargs.pop("name"), **kwargs).eval()
    y = torch.randn(6, neck.in_dim, generator=torch.Generator().manual_seed(0))
    expected = decompress(neck, compress(neck, y, seed=3))
    earlier = {_digest(neck, form) for form in range(DIGEST_FORM)}
    assert model_digest(neck) != _digest(neck, 0)  # the settings are not the defaults
    for digest in earlier:
        data = compress(neck, y, seed=3, digest=digest)
        assert torch.equal(decompress(neck, data), expected)
    with pytest.raises(CodingError, match="different model"):
        decompress(neck, compress(neck, y, seed=3, digest=bytes(32)))
