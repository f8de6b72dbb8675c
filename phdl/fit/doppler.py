"""Radial-velocity shift of model spectra on their own wavelength grid, differentiable in v.

A model given at rest-frame wavelengths lambda_i is seen at lambda_i (1 + v/c). On the same grid,
the shifted model at pixel i is the rest model at ln lambda_i - ln(1 + v/c), interpolated with a
Catmull-Rom cubic in (fractional) pixel index. The cubic has a continuous derivative, so d model/dv
is smooth and Levenberg-Marquardt converges in v as in the labels (linear interpolation would give
a piecewise-constant derivative).
"""

from __future__ import annotations

import numpy as np
import torch

from phdl.data.spectrum import C_KMS


class DopplerShift:
    """Shift fluxes (B, P) or (B, P, K) on `wavelength` [A] by velocities (B,) [km/s]."""

    def __init__(self, wavelength: np.ndarray, device=None, dtype=torch.float64) -> None:
        wavelength = np.asarray(wavelength, dtype=np.float64)
        self.log_wavelength = torch.as_tensor(np.log(wavelength), dtype=dtype, device=device)
        self.n_pixels = wavelength.size

    def valid_pixels(self, max_speed: float) -> torch.Tensor:
        """Pixels (P,) whose shifted position stays inside the grid for any |v| <= max_speed."""
        loglam = self.log_wavelength
        shift = float(np.log1p(max_speed / C_KMS))
        return (loglam - shift >= loglam[1]) & (loglam + shift <= loglam[-2])

    def _positions(self, rv: torch.Tensor):
        """Fractional source index u (B, P) and du/dv [1/(km/s)] for velocities (B,)."""
        loglam = self.log_wavelength
        shift = torch.log1p(rv / C_KMS)  # (B,)
        x = loglam[None, :] - shift[:, None]
        right = torch.searchsorted(loglam, x.contiguous()).clamp(1, self.n_pixels - 1)
        step = loglam[right] - loglam[right - 1]
        u = (right - 1).to(x.dtype) + (x - loglam[right - 1]) / step
        u = u.clamp(0.0, self.n_pixels - 1.0)
        du_dv = -1.0 / (step * (C_KMS + rv[:, None]))
        return u, du_dv

    def __call__(
        self, flux: torch.Tensor, rv: torch.Tensor, derivative: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Shifted flux (same shape); with `derivative`, also d shifted / d v [per km/s]."""
        u, du_dv = self._positions(rv.to(self.log_wavelength.dtype))
        base = torch.floor(u).clamp(0, self.n_pixels - 2)
        t = (u - base).to(flux.dtype)
        base = base.long()
        t2, t3 = t * t, t * t * t
        weights = (
            0.5 * (-t3 + 2 * t2 - t),
            0.5 * (3 * t3 - 5 * t2 + 2),
            0.5 * (-3 * t3 + 4 * t2 + t),
            0.5 * (t3 - t2),
        )
        slopes = (
            0.5 * (-3 * t2 + 4 * t - 1),
            0.5 * (9 * t2 - 10 * t),
            0.5 * (-9 * t2 + 8 * t + 1),
            0.5 * (3 * t2 - 2 * t),
        )
        extra = flux.dim() - 2
        shifted = torch.zeros_like(flux)
        slope = torch.zeros_like(flux) if derivative else None
        for offset, weight, d_weight in zip((-1, 0, 1, 2), weights, slopes):
            index = (base + offset).clamp(0, self.n_pixels - 1)
            index = index.reshape(*index.shape, *([1] * extra)).expand_as(flux)
            values = torch.gather(flux, 1, index)
            w = weight.reshape(*weight.shape, *([1] * extra))
            shifted = shifted + w * values
            if derivative:
                slope = slope + d_weight.reshape(*weight.shape, *([1] * extra)) * values
        if not derivative:
            return shifted
        dv = du_dv.to(flux.dtype).reshape(*du_dv.shape, *([1] * extra))
        return shifted, slope * dv
