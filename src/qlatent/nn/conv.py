"""Convolutional encoder and decoder of the VQ-VAE family's image experiments.

The LL-VQ-VAE reference code (Khalil et al., arXiv 2310.09382) takes them from AntixK's
PyTorch-VAE ``vq_vae.py``. For FashionMNIST (``hidden = [64]``, ``D = 64``)::

    encoder  (B, 1, 28, 28)
      Conv 4×4 s2 → 64, LeakyReLU                        (B, 64, 14, 14)   one per hidden width
      Conv 3×3 → 64, LeakyReLU
      2 × residual  x + Conv1×1(ReLU(Conv3×3(x)))        (no bias)
      LeakyReLU, Conv 1×1 → D, LeakyReLU                 (B, D, 14, 14)    the latent z_e

    decoder  (B, D, 14, 14)
      Conv 3×3 → 64, LeakyReLU, 2 × residual, LeakyReLU
      ConvT 4×4 s2 between hidden widths (none for one width)
      ConvT 4×4 s2 → C, LeakyReLU                        (B, C, 28, 28)

The output's LeakyReLU (rather than AntixK's tanh) is the reference code's; data are in
[−0.5, 0.5]. Each hidden width halves the spatial size once. Both are counted before they are
allocated (ValueError past :data:`~qlatent._size.MAX_MODEL_NUMBERS`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .._size import sized
from .gated import check_width, check_widths


class ResidualLayer(nn.Module):
    """``x + Conv1×1(ReLU(Conv3×3(x)))``, both without bias; ``(B, C, H, W)`` in and out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        check_width(channels, "channels")
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _check_widths(hidden: Sequence[int], num_residual: int, **channels: int) -> list[int]:
    hidden = check_widths(hidden, "hidden")
    if not hidden:
        raise ValueError(f"hidden must be a non-empty list of positive widths, got {hidden!r}")
    if isinstance(num_residual, bool) or not isinstance(num_residual, int) or num_residual < 0:
        raise ValueError(f"num_residual must be a non-negative integer, got {num_residual!r}")
    for name, value in channels.items():
        check_width(value, name)
    return hidden


def conv_encoder(
    in_channels: int,
    hidden: Sequence[int],
    latent_dim: int,
    *,
    num_residual: int = 2,
    final_activation: bool = True,
) -> nn.Sequential:
    """``(B, in_channels, H, W)`` → ``(B, latent_dim, H / 2^len(hidden), W / 2^len(hidden))``.

    ``final_activation``: end with a LeakyReLU after the 1×1 convolution, as the LL-VQ-VAE
    reference code does; without it the latent is the convolution's output, negative values
    unscaled (what a Gaussian's μ and log σ² or a lattice's input need)."""
    hidden = _check_widths(hidden, num_residual, in_channels=in_channels, latent_dim=latent_dim)

    def make() -> nn.Sequential:
        layers: list[nn.Module] = []
        width = in_channels
        for h in hidden:
            layers += [nn.Conv2d(width, h, 4, stride=2, padding=1), nn.LeakyReLU()]
            width = h
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU()]
        layers += [ResidualLayer(width) for _ in range(num_residual)]
        layers += [nn.LeakyReLU(), nn.Conv2d(width, latent_dim, 1)]
        if final_activation:
            layers.append(nn.LeakyReLU())
        return nn.Sequential(*layers)

    return sized(make, "the conv encoder")


def conv_decoder(
    latent_dim: int,
    hidden: Sequence[int],
    out_channels: int,
    *,
    num_residual: int = 2,
    final_activation: bool = True,
) -> nn.Sequential:
    """Mirror of :func:`conv_encoder`: ``(B, latent_dim, h, w)`` → ``(B, out_channels, H, W)``.

    ``final_activation``: end with a LeakyReLU as the LL-VQ-VAE reference code does (outputs in
    data units); without it the output is unbounded, e.g. logits for a sigmoid link."""
    hidden = _check_widths(hidden, num_residual, out_channels=out_channels, latent_dim=latent_dim)
    widths = hidden[::-1]

    def make() -> nn.Sequential:
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, widths[0], 3, padding=1), nn.LeakyReLU()]
        layers += [ResidualLayer(widths[0]) for _ in range(num_residual)]
        layers.append(nn.LeakyReLU())
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU()]
        layers.append(nn.ConvTranspose2d(widths[-1], out_channels, 4, stride=2, padding=1))
        if final_activation:
            layers.append(nn.LeakyReLU())
        return nn.Sequential(*layers)

    return sized(make, "the conv decoder")
