"""One observed spectrum as every reader produces it, and its resampling onto a model grid.

Readers (LAMOST FITS, arrays, HDF5, specutils) all return `ObservedSpectrum`; the fitter only
sees spectra already on the emulator's wavelength grid, with bad pixels carried as ivar = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Speed of light [km/s].
C_KMS = 299_792.458


@dataclass
class ObservedSpectrum:
    """Flux, inverse variance and bad-pixel mask on a vacuum wavelength grid [Angstrom].

    `mask` is True where a pixel must not be used; `ivar` is 0 there after `clean()`.
    """

    id: str
    wavelength: np.ndarray  # (P,) Angstrom, vacuum, strictly increasing
    flux: np.ndarray  # (P,) any consistent unit (normalisation is fitted)
    ivar: np.ndarray  # (P,) 1 / flux unit^2
    mask: np.ndarray | None = None  # (P,) bool, True = bad
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.wavelength = np.asarray(self.wavelength, dtype=np.float64)
        self.flux = np.asarray(self.flux, dtype=np.float64)
        self.ivar = np.asarray(self.ivar, dtype=np.float64)
        self.mask = (
            np.zeros(self.flux.shape, dtype=bool)
            if self.mask is None
            else np.asarray(self.mask, dtype=bool)
        )

    def validate(self) -> None:
        """Raise ValueError naming the spectrum and the problem if it cannot be used at all."""
        shapes = {a: getattr(self, a).shape for a in ("wavelength", "flux", "ivar", "mask")}
        if self.wavelength.ndim != 1 or len(set(shapes.values())) != 1:
            raise ValueError(
                f"spectrum {self.id}: wavelength, flux, ivar and mask must be 1-d of one length, got {shapes}"
            )
        if self.wavelength.size < 2:
            raise ValueError(f"spectrum {self.id}: fewer than 2 pixels")
        if not np.all(np.isfinite(self.wavelength)) or np.any(np.diff(self.wavelength) <= 0):
            raise ValueError(
                f"spectrum {self.id}: wavelength is not finite and strictly increasing"
            )
        good = self.good_pixels()
        if not good.any():
            raise ValueError(
                f"spectrum {self.id}: no usable pixel (all ivar = 0, masked or non-finite)"
            )

    def good_pixels(self) -> np.ndarray:
        """Pixels with finite flux, finite positive ivar and no mask bit."""
        return np.isfinite(self.flux) & np.isfinite(self.ivar) & (self.ivar > 0) & ~self.mask

    def clean(self) -> ObservedSpectrum:
        """Bad pixels get ivar = 0 and flux = 0 (so NaN never reaches a network)."""
        good = self.good_pixels()
        return ObservedSpectrum(
            self.id,
            self.wavelength,
            np.where(good, self.flux, 0.0),
            np.where(good, self.ivar, 0.0),
            ~good,
            dict(self.meta),
        )


def air_to_vacuum(wavelength_air: np.ndarray) -> np.ndarray:
    """Air -> vacuum wavelengths [Angstrom] (Morton 2000 / IAU standard, as in astropy/VALD)."""
    wavelength_air = np.asarray(wavelength_air, dtype=np.float64)
    s2 = (1e4 / wavelength_air) ** 2
    n = (
        1
        + 0.00008336624212083
        + 0.02408926869968 / (130.1065924522 - s2)
        + 0.0001599740894897 / (38.92568793293 - s2)
    )
    return wavelength_air * n


def vacuum_to_air(wavelength_vacuum: np.ndarray) -> np.ndarray:
    """Vacuum -> air wavelengths [Angstrom] (Morton 2000, as used by VALD)."""
    wavelength_vacuum = np.asarray(wavelength_vacuum, dtype=np.float64)
    s2 = (1e4 / wavelength_vacuum) ** 2
    n = 1 + 0.0000834254 + 0.02406147 / (130 - s2) + 0.00015998 / (38.9 - s2)
    return wavelength_vacuum / n


def resample(
    spectrum: ObservedSpectrum, wavelength: np.ndarray, rv_kms: float = 0.0
) -> ObservedSpectrum:
    """Linear interpolation onto `wavelength` [A] after removing a radial velocity [km/s].

    Variances propagate exactly for the linear weights: var = (1-t)^2 var_i + t^2 var_{i+1}.
    A new pixel is bad (ivar = 0) where either neighbour with non-zero weight is bad or where it
    falls outside the observed range. Shifting to the rest frame: lambda_rest = lambda_obs / (1 + v/c).
    """
    spectrum = spectrum.clean()
    target = np.asarray(wavelength, dtype=np.float64)
    source = spectrum.wavelength / (1.0 + rv_kms / C_KMS)
    right = np.searchsorted(source, target, side="right")
    inside = (right > 0) & (right < source.size)
    right = np.clip(right, 1, source.size - 1)
    left = right - 1
    t = (target - source[left]) / (source[right] - source[left])
    t = np.clip(t, 0.0, 1.0)
    wl, wr = 1.0 - t, t
    good = spectrum.good_pixels()
    good_new = inside & (good[left] | (wl == 0)) & (good[right] | (wr == 0))
    var = np.zeros_like(spectrum.ivar)
    var[good] = 1.0 / spectrum.ivar[good]
    flux = wl * spectrum.flux[left] + wr * spectrum.flux[right]
    new_var = wl**2 * var[left] + wr**2 * var[right]
    with np.errstate(divide="ignore"):
        ivar = np.where(good_new & (new_var > 0), 1.0 / np.where(new_var > 0, new_var, 1.0), 0.0)
    return ObservedSpectrum(
        spectrum.id,
        target,
        np.where(good_new, flux, 0.0),
        ivar,
        ~(good_new & (ivar > 0)),
        dict(spectrum.meta, rv_removed_kms=float(rv_kms)),
    )
