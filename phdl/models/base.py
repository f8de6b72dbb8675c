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

    def scale(self, physical: torch.Tensor) -> torch.Tensor:
        """Physical labels (..., L) -> scaled labels (..., L)."""
        return (physical - self._label_min) / (self._label_max - self._label_min) - 0.5

    def unscale(self, scaled: torch.Tensor) -> torch.Tensor:
        """Scaled labels (..., L) -> physical labels (..., L)."""
        return (scaled + 0.5) * (self._label_max - self._label_min) + self._label_min

    def flux(self, physical_labels: torch.Tensor) -> torch.Tensor:
        """Normalised flux (B, P) from physical labels (B, L) in the units of `label_names`."""
        return self.network(self.scale(physical_labels))
