"""What a trained emulator is to the rest of phdl: a network plus the label space and wavelengths.

The fitter, the report and the demo only ever see a `SpectrumEmulator`: physical labels in,
normalised flux on `wavelength` out. How it was trained (Lightning, loss, optimiser) is not
its concern; `phdl.emulator.load_emulator` builds one from a checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from phdl.labels import LabelScaling


def network_jvp(
    network: nn.Module, labels: torch.Tensor, tangents: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux (B, P) and its forward-mode derivatives (B, K, P) along tangents (B, K, L).

    phdl's networks write their forward mode out (`network.jvp`: the value once, K tangents in
    one pass); any other network gets `torch.func.jvp`, one tangent at a time.
    """
    if hasattr(network, "jvp"):
        return network.jvp(labels, tangents)
    parts = [
        torch.func.jvp(network, (labels,), (tangents[:, k],)) for k in range(tangents.shape[1])
    ]
    return parts[0][0], torch.stack([derivative for _, derivative in parts], dim=1)


class SpectrumEmulator(nn.Module):
    """A frozen label -> spectrum model with its label scaling and wavelength grid.

    `network` maps scaled labels (B, L) in [-0.5, 0.5] to fluxes (B, P). `flux_error` (P,), when
    known, is the emulator's own rms error per pixel on held-out spectra [normalised flux].
    """

    def __init__(
        self,
        network: nn.Module,
        label_scaling: LabelScaling,
        wavelength: np.ndarray,
        medium: str = "vacuum",
        resolution: float = float("nan"),
        flux_error: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.label_scaling = label_scaling
        self.wavelength = np.asarray(wavelength, dtype=np.float64)  # Angstrom
        self.medium = medium
        self.resolution = float(resolution)
        self.register_buffer("_label_min", torch.tensor(label_scaling.minimum, dtype=torch.float32))
        self.register_buffer("_label_max", torch.tensor(label_scaling.maximum, dtype=torch.float32))
        self.flux_error = None if flux_error is None else np.asarray(flux_error, dtype=np.float64)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.label_scaling.names

    @property
    def n_pixels(self) -> int:
        return int(self.wavelength.shape[0])

    def forward(self, scaled_labels: torch.Tensor) -> torch.Tensor:
        """Normalised flux (B, P) from scaled labels (B, L)."""
        return self.network(scaled_labels)

    def jvp(
        self, scaled_labels: torch.Tensor, tangents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flux (B, P) and d flux along scaled-label tangents (B, K, L): (B, K, P)."""
        return network_jvp(self.network, scaled_labels, tangents)

    @property
    def label_span(self) -> torch.Tensor:
        """Physical label range (L,): one scaled unit of each label in its physical units."""
        return self._label_max - self._label_min

    def scale(self, physical: torch.Tensor) -> torch.Tensor:
        """Physical labels (..., L) -> scaled labels (..., L)."""
        return (physical - self._label_min) / self.label_span - 0.5

    def unscale(self, scaled: torch.Tensor) -> torch.Tensor:
        """Scaled labels (..., L) -> physical labels (..., L)."""
        return (scaled + 0.5) * self.label_span + self._label_min

    def flux(self, physical_labels: torch.Tensor) -> torch.Tensor:
        """Normalised flux (B, P) from physical labels (B, L) in the units of `label_names`."""
        return self.network(self.scale(physical_labels))
