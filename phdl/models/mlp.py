"""The Payne's emulator (Ting et al. 2019): scaled labels -> 300 -> 300 -> pixels.

A per-pixel MLP baseline with the SpectrumTransformer's interface (scaled labels (B, L) ->
normalised flux (B, P)): LeakyReLU hidden layers and a sigmoid output, because normalised
fluxes of absorption spectra lie in (0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from phdl.models.transformer import linear_jvp


@dataclass
class MLPConfig:
    """Sizes of a PayneMLP; The Payne used two hidden layers of 300."""

    n_labels: int = 30
    n_pixels: int = 4000
    hidden: int = 300
    n_hidden_layers: int = 2
    negative_slope: float = 0.01  # LeakyReLU slope


class PayneMLP(nn.Module):
    """Payne-style MLP emulator: scaled labels (B, L) in [-0.5, 0.5] -> normalised flux (B, P)."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.n_labels
        for _ in range(config.n_hidden_layers):
            layers += [nn.Linear(width, config.hidden), nn.LeakyReLU(config.negative_slope)]
            width = config.hidden
        layers += [nn.Linear(width, config.n_pixels), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def _check(self, labels: torch.Tensor) -> None:
        if labels.shape[-1] != self.config.n_labels:
            raise ValueError(
                f"mlp: expected {self.config.n_labels} labels, got shape {tuple(labels.shape)}"
            )

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Normalised flux (B, P) from scaled labels (B, L)."""
        self._check(labels)
        return self.net(labels)

    def jvp(
        self, labels: torch.Tensor, tangents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flux (B, P) and its derivatives (B, K, P) along K label tangents (B, K, L) per spectrum."""
        self._check(labels)
        x, dx = labels, tangents
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                x, dx = linear_jvp(layer, x, dx)
            elif isinstance(layer, nn.LeakyReLU):
                slope = torch.where(x > 0, 1.0, layer.negative_slope).to(x.dtype)
                x, dx = layer(x), slope.unsqueeze(1) * dx
            else:  # the sigmoid output: s(x) s(-x) = s (1 - s) without cancellation near 1
                x, dx = layer(x), (layer(x) * layer(-x)).unsqueeze(1) * dx
        return x, dx
