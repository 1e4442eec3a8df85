"""The models' and likelihoods' numbers, against independent computations (NumPy / plain torch).

Checked: the Bernoulli NLL is the summed cross-entropy of the logits, exact for logits of ±1e4,
for targets in [0, 1] and for data and logits of different dtypes; the squared error is
Σ (x̂ − x)² / variance per example; the loss is mean(distortion + λ·rate) + w·aux with the
warm-up weight on the rate alone, which gives each paper's own objective (VampPrior's negative
ELBO, LL-VQ's mse + vq_loss, the Soft VQ notebook's NMSE + 3·vq_loss scaled by the pixels);
``evaluate_objective`` is per example over an uneven last batch; the gated MLP VAE, the LL-VQ
conv networks and quantizers hold the papers' parameter counts; the sentence autoencoder's NLL
is that of its GRUs written out step by step; reconstructions lie in the data's range.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qlatent.bottlenecks import BottleneckOutput, build
from qlatent.experiments import llvq_fashion
from qlatent.losses import RateDistortionLoss, evaluate_objective
from qlatent.models import Autoencoder, AutoencoderOutput, gated_vae
from qlatent.models.text import TextAutoencoder
from qlatent.nn import Bernoulli, SquaredError, gated_mlp
from qlatent.nn.text import BOS, EOS, PAD, TextModelConfig


def _np_bernoulli_nll(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """−Σ [x log σ(l) + (1 − x) log(1 − σ(l))] per row, from log σ(l) = −log(1 + e^−l)."""
    log_p = -np.logaddexp(0.0, -logits)
    log_not_p = -np.logaddexp(0.0, logits)
    return -(x * log_p + (1 - x) * log_not_p).reshape(x.shape[0], -1).sum(1)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------- likelihoods
def test_bernoulli_nll_is_the_summed_cross_entropy_for_extreme_logits_and_soft_targets():
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.5, 0.25], [0.0, 1.0, 1.0, 0.0, 0.5, 0.75]])
    logits = torch.tensor([[1e4, -1e4, 1e4, -1e4, 1e4, 0.0], [1e4, -1e4, 3.0, -2.0, -1e4, 1.5]])
    expected = _np_bernoulli_nll(x.double().numpy(), logits.double().numpy())
    # row 0: 0 + 0 + 1e4 + 1e4 + 0.5·1e4 + log 2
    assert expected[0] == pytest.approx(2.5e4 + math.log(2), rel=1e-15)
    got = Bernoulli().nll(x, logits)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-6)
    assert torch.isfinite(got).all()
    # a target in (0, 1) is scored by its cross-entropy, whose least value, at the logit of
    # the target itself, is the binary entropy, not 0
    t = torch.tensor([[0.3]], dtype=torch.float64)
    best = Bernoulli().nll(t, torch.logit(t)).item()
    assert best == pytest.approx(-(0.3 * math.log(0.3) + 0.7 * math.log(0.7)), rel=1e-12)


def test_bernoulli_nll_of_half_precision_data_is_not_cut_to_half_precision():
    """The NLL came back in the data's dtype: float16 data against float32 logits of 100 on
    784 black pixels gave inf (78,400 nats is past float16's 65,504), and a real image's
    1326.408 nats came back as 1326.0."""
    logits = torch.full((1, 784), 100.0)
    got = Bernoulli().nll(torch.zeros(1, 784, dtype=torch.float16), logits)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(78400.0, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 784, generator=g) * 4
    x = torch.bernoulli(torch.rand(2, 784, generator=g))
    expected = _np_bernoulli_nll(x.double().numpy(), logits.double().numpy())
    np.testing.assert_allclose(Bernoulli().nll(x.half(), logits).numpy(), expected, rtol=1e-6)
    # float64 logits keep float64 against float32 data (they were cut to float32)
    got = Bernoulli().nll(x, logits.double() + 1e-9)
    assert got.dtype == torch.float64
    shifted = _np_bernoulli_nll(x.double().numpy(), logits.double().numpy() + 1e-9)
    np.testing.assert_allclose(got.numpy(), shifted, rtol=1e-13)


@pytest.mark.parametrize("link", ["identity", "sigmoid"])
def test_squared_error_is_the_sum_over_every_value_over_the_variance(link):
    g = torch.Generator().manual_seed(1)
    params = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64)
    x = torch.rand(3, 2, 4, 5, generator=g, dtype=torch.float64) - 0.5
    lik = SquaredError(variance=0.0625, link=link)
    p = params.numpy()
    x_hat = 1 / (1 + np.exp(-p)) if link == "sigmoid" else p
    expected = ((x_hat - x.numpy()) ** 2).reshape(3, -1).sum(1) / 0.0625
    np.testing.assert_allclose(lik.nll(x, params).numpy(), expected, rtol=1e-13)
    np.testing.assert_allclose(lik.mean(params).numpy(), x_hat, rtol=1e-13)


# ------------------------------------------------------------------------------------ the loss
def _output(
    params: torch.Tensor, rate: torch.Tensor, aux: float | torch.Tensor
) -> AutoencoderOutput:
    aux_loss = torch.as_tensor(aux, dtype=torch.float64)
    neck = BottleneckOutput(y_hat=torch.zeros(params.shape[0], 1), rate=rate, aux_loss=aux_loss)
    return AutoencoderOutput(params=params, bottleneck=neck)


def test_the_warm_up_weight_scales_the_rate_alone():
    g = torch.Generator().manual_seed(2)
    x = torch.bernoulli(torch.rand(5, 6, generator=g)).double()
    logits = torch.randn(5, 6, generator=g, dtype=torch.float64) * 3
    rate = torch.rand(5, generator=g, dtype=torch.float64) * 10
    out = _output(logits, rate, torch.tensor(0.7, dtype=torch.float64))
    loss_fn = RateDistortionLoss(lmbda=2.0, aux_weight=3.0)
    distortion = _np_bernoulli_nll(x.numpy(), logits.numpy())
    for beta, weight in ((None, 2.0), (0.25, 0.25), (0.0, 0.0)):
        losses = loss_fn(x, out, Bernoulli(), lmbda=beta)
        expected = np.mean(distortion + weight * rate.numpy()) + 3.0 * 0.7
        assert losses.loss.item() == pytest.approx(expected, rel=1e-13)
        # what is logged is the objective at λ = 1, whatever the weight trained at
        np.testing.assert_allclose(losses.objective.numpy(), distortion + rate.numpy())
    assert loss_fn.lmbda == 2.0


def test_the_loss_is_each_papers_own_objective():
    g = torch.Generator().manual_seed(3)
    # lattice paper (VampPrior code): mean over the batch of −RE + β·KL, p = sigmoid(logits)
    x = torch.bernoulli(torch.rand(4, 784, generator=g)).double()
    logits = torch.randn(4, 784, generator=g, dtype=torch.float64) * 2
    kl = torch.rand(4, generator=g, dtype=torch.float64) * 30
    p = torch.sigmoid(logits).numpy()
    re = (x.numpy() * np.log(p) + (1 - x.numpy()) * np.log(1 - p)).sum(1)
    got = RateDistortionLoss()(x, _output(logits, kl, 0.0), Bernoulli(), lmbda=0.3).loss
    assert got.item() == pytest.approx(np.mean(-re + 0.3 * kl.numpy()), rel=1e-12)

    # LL-VQ reference: F.mse_loss(x̂, x) + vq_loss, the distortion over the values per image
    x = torch.rand(4, 1, 28, 28, generator=g, dtype=torch.float64) - 0.5
    x_hat = torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64) * 0.3
    out = _output(x_hat, torch.full((4,), 1e6, dtype=torch.float64), 0.125)
    got = RateDistortionLoss(lmbda=0.0)(x, out, SquaredError(variance=784.0)).loss
    assert got.item() == pytest.approx(F.mse_loss(x_hat, x).item() + 0.125, rel=1e-12)

    # Soft VQ notebook: recon + 3·vq_loss with recon = mean((x̂ − x)²) / var, the library's
    # distortion summing over the 784 pixels and aux_weight = 3·784 (softvq-mnist's configs)
    x = torch.rand(4, 784, generator=g, dtype=torch.float64)
    logits = torch.randn(4, 784, generator=g, dtype=torch.float64)
    var = x.var().item()
    out = _output(logits, torch.zeros(4, dtype=torch.float64), 0.05)
    lik = SquaredError(variance=var, link="sigmoid")
    got = RateDistortionLoss(aux_weight=2352.0)(x, out, lik).loss
    recon = np.mean((1 / (1 + np.exp(-logits.numpy())) - x.numpy()) ** 2) / var
    assert got.item() == pytest.approx(784 * (recon + 3.0 * 0.05), rel=1e-12)


def test_evaluate_objective_is_per_example_over_an_uneven_last_batch():
    torch.manual_seed(4)
    encoder, decoder = torch.nn.Linear(12, 3), torch.nn.Linear(3, 12)
    model = Autoencoder(encoder, build("identity", dim=3), decoder, Bernoulli()).double()
    x = torch.bernoulli(torch.rand(7, 12, dtype=torch.float64))
    parts = evaluate_objective(model, RateDistortionLoss(lmbda=5.0), x, batch_size=3, hard=True)
    w1, b1 = encoder.weight.detach().numpy(), encoder.bias.detach().numpy()
    w2, b2 = decoder.weight.detach().numpy(), decoder.bias.detach().numpy()
    logits = (x.numpy() @ w1.T + b1) @ w2.T + b2
    expected = _np_bernoulli_nll(x.numpy(), logits)
    assert parts["distortion"].dtype == torch.float64 and parts["distortion"].shape == (7,)
    np.testing.assert_allclose(parts["distortion"].numpy(), expected, rtol=1e-12)
    assert parts["distortion"].mean().item() == pytest.approx(expected.mean(), rel=1e-12)
    np.testing.assert_array_equal(parts["rate"].numpy(), np.zeros(7))


# ------------------------------------------------------------------------------------ networks
def test_the_gated_vae_is_the_vampprior_network():
    """784-300-300-m gated encoder, m-300-300-784 decoder ending in logits: VampPrior's
    ``GatedDense(784, 300), GatedDense(300, 300)``, two ``Linear(300, 40)`` heads (here one of
    80 for the Gaussian VAE), ``GatedDense(40, 300), GatedDense(300, 300), Linear(300, 784)``."""
    gated = lambda a, b: 2 * (a * b + b)  # noqa: E731  h and g, weights and biases
    encoder = gated(784, 300) + gated(300, 300) + 300 * 40 + 40
    decoder = gated(40, 300) + gated(300, 300) + 300 * 784 + 784
    assert (encoder, decoder) == (663_640, 441_184)
    torch.manual_seed(5)
    model = gated_vae("lattice")
    assert (_params(model.encoder), _params(model.decoder)) == (encoder, decoder)
    assert _params(gated_vae("gaussian").encoder) == encoder + 300 * 40 + 40  # the logvar head

    # the forward pass, written out in NumPy: h(x)·σ(g(x)), no other nonlinearity
    net = gated_mlp([6, 5, 4, 3]).double()
    x = torch.randn(2, 6, dtype=torch.float64)
    a = x.numpy()
    for layer in net[:2]:
        h = a @ layer.h.weight.detach().numpy().T + layer.h.bias.detach().numpy()
        gate = a @ layer.g.weight.detach().numpy().T + layer.g.bias.detach().numpy()
        a = h / (1 + np.exp(-gate))
    a = a @ net[2].weight.detach().numpy().T + net[2].bias.detach().numpy()
    np.testing.assert_allclose(net(x).detach().numpy(), a, rtol=1e-12)


def test_the_llvq_networks_and_quantizers_hold_the_reference_counts():
    """The reference (AntixK's conv nets, hidden [64], D = 64, K = 512) and the paper's
    quantizer sizes: D for the lattice, K·D for a codebook (a buffer for VQ-EMA)."""
    conv = lambda cin, cout, k, bias=True: cin * cout * k * k + (cout if bias else 0)  # noqa: E731
    residual = conv(64, 64, 3, False) + conv(64, 64, 1, False)
    encoder = conv(1, 64, 4) + conv(64, 64, 3) + 2 * residual + conv(64, 64, 1)
    decoder = conv(64, 64, 3) + 2 * residual + conv(64, 1, 4)
    assert (encoder, decoder) == (124_096, 119_873)
    expected = {"vq": (32_768, 32_768), "vq_ema": (32_768, 0), "learnable_lattice": (64, 64)}
    for name, (size, trainable) in expected.items():
        cfg = llvq_fashion.ModelConfig(bottleneck=name, bottleneck_args={"num_codes": 512})
        torch.manual_seed(6)
        model = llvq_fashion.build_model(cfg, 1, 784)
        assert (_params(model.encoder), _params(model.decoder)) == (encoder, decoder)
        assert llvq_fashion.quantizer_size(model.bottleneck) == {
            "quantizer_params": size,
            "quantizer_trainable_params": trainable,
        }
        x = torch.rand(2, 1, 28, 28) - 0.5
        out = model.train()(x)
        assert out.params.shape == x.shape and out.bottleneck.y_hat.shape == (2, 64, 14, 14)
        # the distortion is the mean squared error per value, the reference's mse(x̂, x)
        loss = RateDistortionLoss(lmbda=0.0)(x, out, model.likelihood)
        mse = (out.params.detach() - x).square().mean().item()
        assert loss.distortion.mean().item() == pytest.approx(mse, rel=1e-5)


def test_reconstructions_lie_in_the_data_range():
    logits = torch.tensor([[-1e4, -30.0, 0.0, 30.0, 1e4]])
    for lik in (Bernoulli(), SquaredError(variance=0.1, link="sigmoid")):
        mean = lik.mean(logits)
        assert ((mean >= 0) & (mean <= 1)).all()
        np.testing.assert_allclose(mean.numpy(), [[0.0, 9.357623e-14, 0.5, 1.0, 1.0]], rtol=1e-6)
    torch.manual_seed(7)
    model = gated_vae("lattice", latent_dim=3, hidden=8, data_dim=10)
    with torch.no_grad():
        model.decoder[-1].bias.fill_(1e4)
    recon = model.eval().reconstruct(torch.rand(4, 10))
    assert torch.equal(recon, torch.ones(4, 10))


# --------------------------------------------------------------------------------- text model
def _gru_layer(inp, h, gru, suffix):
    """One GRU layer over ``inp`` (T, in) from state ``h``, PyTorch's equations written out."""
    w_ih, w_hh = getattr(gru, f"weight_ih{suffix}"), getattr(gru, f"weight_hh{suffix}")
    b_ih, b_hh = getattr(gru, f"bias_ih{suffix}"), getattr(gru, f"bias_hh{suffix}")
    size, outs = h.shape[0], []
    for t in range(inp.shape[0]):
        gi, gh = inp[t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        r = torch.sigmoid(gi[:size] + gh[:size])
        z = torch.sigmoid(gi[size : 2 * size] + gh[size : 2 * size])
        n = torch.tanh(gi[2 * size :] + r * gh[2 * size :])
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs), h


@torch.no_grad()
def test_the_text_models_nll_is_that_of_its_grus_written_out():
    """Each sentence alone, unpadded: a 2-layer bidirectional GRU whose top layer's last states
    (forward at the last token, backward at the first) make the code, tanh(Linear(code)) the
    2-layer decoder's initial states, teacher forcing from BOS, EOS scored, PAD not."""
    torch.manual_seed(8)
    cfg = TextModelConfig(
        vocab_size=11,
        max_tokens=6,
        embed=5,
        encoder_hidden=4,
        encoder_layers=2,
        code_dim=6,
        decoder_hidden=7,
        decoder_layers=2,
    )
    model = TextAutoencoder(build("identity", dim=6), cfg).eval()
    x = torch.tensor([[5, 6, 7, EOS, PAD, PAD], [8, EOS, PAD, PAD, PAD, PAD], [4, 5, 6, 7, 8, EOS]])
    got = model.likelihood.nll(x, model(x).params)
    expected = []
    for row in x:
        tokens = row[row != PAD]
        inp = model.embed.weight[tokens]
        for layer in range(2):
            zero = torch.zeros(4)
            fwd, h_fwd = _gru_layer(inp, zero, model.encoder, f"_l{layer}")
            bwd, h_bwd = _gru_layer(inp.flip(0), zero, model.encoder, f"_l{layer}_reverse")
            inp = torch.cat([fwd, bwd.flip(0)], 1)
        h0 = torch.tanh(model.from_code(model.to_code(torch.cat([h_fwd, h_bwd])))).view(2, 7)
        inp = model.embed.weight[torch.cat([torch.tensor([BOS]), tokens[:-1]])]
        for layer in range(2):
            inp, _ = _gru_layer(inp, h0[layer], model.decoder, f"_l{layer}")
        log_p = torch.log_softmax(model.output(inp).double(), -1)
        expected.append(-log_p[torch.arange(len(tokens)), tokens].sum().item())
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


# ------------------------------------------------ the conv encoder's output for qlatent train
def _conv_run(tmp_path, *extra):
    from qlatent.experiments import custom

    overrides = ["data.name=synthetic", "data.synthetic_size=24", "model.family=conv",
                 "model.hidden=[4]", "model.latent_dim=2", "model.num_residual=1",
                 "bottleneck.name=gaussian", "train.epochs=1",
                 "train.batch_size=8", "train.progress=false", f"out_dir={tmp_path / 'run'}",
                 *extra]  # fmt: skip
    return custom.load_config(None, overrides)


def test_the_conv_encoder_of_qlatent_train_leaves_negative_latents_alone(tmp_path):
    """``qlatent train``'s conv encoder ended in the LL-VQ reference's LeakyReLU, which scales
    every negative output by 0.01: a Gaussian VAE's μ and log σ² (log σ² = −6 needed a
    pre-activation of −600) and a lattice's input. It now ends in its 1×1 convolution;
    ``model.latent_activation = true`` keeps the reference's LeakyReLU."""
    from qlatent.experiments import custom

    cfg = _conv_run(tmp_path)
    plain = custom.build_model(cfg, (1, 28, 28), 0.1)
    assert isinstance(plain.encoder[-1], torch.nn.Conv2d)
    leaky = custom.build_model(
        _conv_run(tmp_path, "model.latent_activation=true"), (1, 28, 28), 0.1
    )
    assert isinstance(leaky.encoder[-1], torch.nn.LeakyReLU)
    leaky.load_state_dict(plain.state_dict())
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = plain.encoder(x)
        assert torch.equal(leaky.encoder(x), torch.nn.functional.leaky_relu(out))
    with pytest.raises(ValueError, match="latent_activation is for the conv family"):
        custom.load_config(None, ["model.latent_activation=true"])


def test_a_conv_checkpoint_from_before_the_setting_keeps_its_leaky_relu(tmp_path, capsys):
    """A conv checkpoint saved before ``model.latent_activation`` was trained with the final
    LeakyReLU: it is rebuilt with it (the same function of its weights), and resuming it
    without the setting is refused rather than continued with another encoder."""
    from qlatent.cli import main
    from qlatent.experiments import custom
    from qlatent.train.checkpoint import load, save_atomic

    custom.train(_conv_run(tmp_path))
    for name in ("best.pt", "last.pt"):  # as a checkpoint from before the setting
        path = tmp_path / "run" / name
        ckpt = load(path)
        del ckpt["run_config"]["model"]["latent_activation"]
        save_atomic(ckpt, path)
    model, cfg = custom.model_from_checkpoint(
        torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    )
    assert cfg.model.latent_activation and isinstance(model.encoder[-1], torch.nn.LeakyReLU)
    with pytest.raises(ValueError, match="--set model.latent_activation=true"):
        custom.train(_conv_run(tmp_path, "train.epochs=2"))
    custom.train(_conv_run(tmp_path, "train.epochs=2", "model.latent_activation=true"))
    assert (
        main(["reproduce", "llvq-fashion", "--quick", "--set", "model.latent_activation=true"]) == 2
    )
    assert "latent_activation" in capsys.readouterr().err
