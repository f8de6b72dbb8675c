"""Make an observed spectrum consistent with the emulator: bad pixels, bad regions, grid, resolution.

What happens here, in order (`Preprocessor.__call__`):
1. bad pixels (ivar = 0, non-finite flux or ivar, chosen mask bits; the reader set `mask`)
   get ivar = 0 and flux = 0;
2. configurable wavelength regions are masked (the dichroic overlap and strong telluric bands by
   default, in the observed frame);
3. optionally the spectrum is resampled onto the emulator's wavelength grid with `resample()`
   (ivar propagated; exact when the grid is on LAMOST's own pixels, see `lamost_wavelength`,
   a warning otherwise), optionally shifted to the rest frame by the header's radial velocity
   (`meta["rv_init_kms"]` = Z * c, set by the reader and kept as the fitter's start value);
4. a spectrum with too few usable pixels is refused (ValueError naming it).

The data are NOT continuum-normalised here: the fitter multiplies the normalised model by a
Chebyshev polynomial fitted jointly with the labels, so the flux stays in the file's units.

Resolution: the model side is degraded, never the data. `ResolutionKernel` convolves model
spectra of resolving power `r_model` to any target R(lambda) (LAMOST: R ~ 1000-2000, nominally
1800 at 5500 A, varying with wavelength and fibre).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from phdl.data.lamost import lamost_pixel_offset
from phdl.data.spectrum import ObservedSpectrum, air_to_vacuum, resample

#: Nominal LAMOST low-resolution resolving power (at 5500 A, 2/3 slit).
LAMOST_NOMINAL_RESOLUTION = 1800.0

#: Regions masked by default [Angstrom, vacuum, observed frame].
BAD_REGIONS: dict[str, tuple[float, float]] = {
    "dichroic": (5700.0, 5900.0),  # blue/red arm overlap: poorly calibrated joint
    "telluric_o2_b": (6860.0, 6950.0),  # O2 B band
    "telluric_o2_a": (7590.0, 7700.0),  # O2 A band
}

#: Water-vapour telluric bands, masked when `mask_water=True` [Angstrom].
WATER_REGIONS: dict[str, tuple[float, float]] = {
    "telluric_h2o_7200": (7150.0, 7350.0),
    "telluric_h2o_8200": (8100.0, 8400.0),
}

DEFAULT_BAD_REGIONS: tuple[tuple[float, float], ...] = tuple(BAD_REGIONS.values())


def region_mask(
    wavelength: np.ndarray, regions: Sequence[tuple[float, float]] | Mapping
) -> np.ndarray:
    """True where `wavelength` [A] falls inside any (start, end) region [A] (ends included)."""
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if isinstance(regions, Mapping):
        regions = list(regions.values())
    inside = np.zeros(wavelength.shape, dtype=bool)
    for start, end in regions:
        if not end > start:
            raise ValueError(f"bad region ({start}, {end}): end must exceed start [Angstrom]")
        inside |= (wavelength >= start) & (wavelength <= end)
    return inside


def mask_regions(
    spectrum: ObservedSpectrum, regions: Sequence[tuple[float, float]] | Mapping
) -> ObservedSpectrum:
    """Copy of `spectrum` with every pixel inside `regions` [A] marked bad (ivar = 0)."""
    spectrum = ObservedSpectrum(
        spectrum.id,
        spectrum.wavelength,
        spectrum.flux,
        spectrum.ivar,
        spectrum.mask | region_mask(spectrum.wavelength, regions),
        dict(spectrum.meta),
    )
    return spectrum.clean()


@dataclass
class Preprocessor:
    """Observed spectrum -> spectrum ready for the fitter (picklable: used in DataLoader workers).

    wavelength: target (emulator) grid [A]; None keeps the observed pixels.
    medium: medium of `wavelength` ("vacuum" or "air"; an air grid is converted to vacuum
        to resample, and the result keeps the grid's own pixel positions one-to-one).
    bad_regions: (start, end) regions [A, vacuum, observed frame] to mask.
    mask_water: also mask the water bands in `WATER_REGIONS`.
    shift_to_rest: remove `meta["rv_init_kms"]` (Z * c) while resampling; the fitter then fits
        only the residual velocity. Off by default: the fitter fits RV from that start value.
    min_good_fraction: refuse a spectrum with fewer usable pixels than this fraction.
    """

    wavelength: np.ndarray | Sequence[float] | None = None
    medium: str = "vacuum"
    bad_regions: Sequence[tuple[float, float]] = field(
        default_factory=lambda: list(DEFAULT_BAD_REGIONS)
    )
    mask_water: bool = False
    shift_to_rest: bool = False
    min_good_fraction: float = 0.3

    def __post_init__(self) -> None:
        if self.medium not in ("vacuum", "air"):
            raise ValueError(f"medium must be 'vacuum' or 'air', got {self.medium!r}")
        self.grid_pixel_offset = float("nan")
        if self.wavelength is not None:
            grid = np.asarray(self.wavelength, dtype=np.float64)
            if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) <= 0):
                raise ValueError("target wavelength grid must be 1-d and strictly increasing")
            self.wavelength = grid
            vacuum = air_to_vacuum(grid) if self.medium == "air" else grid
            self.grid_pixel_offset = lamost_pixel_offset(vacuum)
            if abs(self.grid_pixel_offset) > 0.01:
                warnings.warn(
                    f"target grid is offset by {self.grid_pixel_offset:+.2f} LAMOST pixels: "
                    "linear resampling will smooth lines and correlate noise (errors up to ~1% "
                    "of the continuum at 0.5 pixel); build the emulator grid on "
                    "phdl.data.lamost.lamost_wavelength() pixels",
                    stacklevel=2,
                )
        self.bad_regions = [tuple(map(float, region)) for region in self.bad_regions]
        region_mask(np.zeros(1), self.bad_regions)  # checks each region once, here

    @classmethod
    def from_grid(cls, path: str, **kwargs) -> Preprocessor:
        """Preprocessor onto the wavelength grid (and medium) of a schema-v1 grid file."""
        from phdl.grid import read_grid_info

        info = read_grid_info(path, check_values=False)
        return cls(wavelength=info.wavelength, medium=info.medium, **kwargs)

    @property
    def regions(self) -> list[tuple[float, float]]:
        """All masked regions [A]: the bad regions plus the water bands if asked for."""
        water = list(WATER_REGIONS.values()) if self.mask_water else []
        return list(self.bad_regions) + water

    def __call__(self, spectrum: ObservedSpectrum) -> ObservedSpectrum:
        """Clean, mask regions, resample; ValueError naming the spectrum if too little is left."""
        spectrum = mask_regions(spectrum.clean(), self.regions)
        if self.wavelength is not None:
            target = self.wavelength
            if self.medium == "air":
                target = air_to_vacuum(target)
            rv = spectrum.meta.get("rv_init_kms") if self.shift_to_rest else None
            spectrum = resample(spectrum, target, rv_kms=float(rv or 0.0))
            spectrum.meta["grid_pixel_offset"] = self.grid_pixel_offset
            if self.medium == "air":
                spectrum.meta["grid_medium"] = "air"
        good_fraction = float(spectrum.good_pixels().mean())
        spectrum.meta["good_fraction"] = good_fraction
        if good_fraction < self.min_good_fraction:
            path = spectrum.meta.get("path", "")
            raise ValueError(
                f"spectrum {spectrum.id}{f' ({path})' if path else ''}: only "
                f"{good_fraction:.0%} of pixels usable (< {self.min_good_fraction:.0%})"
            )
        spectrum.validate()
        return spectrum


ResolvingPower = float | np.ndarray | Callable[[np.ndarray], np.ndarray]


def _resolving_power(r: ResolvingPower, wavelength: np.ndarray) -> np.ndarray:
    values = r(wavelength) if callable(r) else r
    return np.broadcast_to(np.asarray(values, dtype=np.float64), wavelength.shape)


class ResolutionKernel:
    """Gaussian line-spread convolution from resolving power `r_model` to `r_target`(lambda).

    Each pixel gets a Gaussian of FWHM = lambda * sqrt(1/R_target^2 - 1/R_model^2) [A],
    truncated at `n_sigma` and normalised to sum 1 over the (possibly uneven) model pixels, so a
    flat spectrum stays flat and equivalent widths are conserved. Build once per model grid and
    apply to any batch (..., P) of numpy arrays or torch tensors.
    """

    def __init__(
        self,
        wavelength: np.ndarray,
        r_target: ResolvingPower,
        r_model: ResolvingPower = np.inf,
        n_sigma: float = 4.0,
    ) -> None:
        wavelength = np.asarray(wavelength, dtype=np.float64)
        if wavelength.ndim != 1 or np.any(np.diff(wavelength) <= 0):
            raise ValueError("model wavelength grid must be 1-d and strictly increasing")
        r_out = _resolving_power(r_target, wavelength)
        r_in = _resolving_power(r_model, wavelength)
        if np.any(r_out <= 0) or np.any(r_out > r_in):
            raise ValueError(
                "target resolving power must be positive and at most the model's "
                f"(target {r_out.min():.0f}-{r_out.max():.0f}, model {r_in.min():.0f}+)"
            )
        with np.errstate(divide="ignore"):
            fwhm = wavelength * np.sqrt(np.clip(1.0 / r_out**2 - 1.0 / r_in**2, 0.0, None))
        sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # (P,) Angstrom
        # half-width in pixels: the most pixels any output pixel's kernel spans
        self.step = np.gradient(wavelength)
        self.half = int(np.ceil(np.max(n_sigma * sigma / self.step))) if np.any(sigma > 0) else 0
        self.wavelength = wavelength
        self.fwhm = fwhm
        self.sigma = sigma
        self.n_sigma = n_sigma
        # rows per block so one block's band holds <= ~4M weights (memory stays bounded)
        self.block = max(1, int(4_000_000 // (2 * self.half + 1)))
        self._cache = self._band(0, wavelength.size) if self.block >= wavelength.size else None

    def _band(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """(index, weight) of output pixels first..last-1: each (rows, 2K+1), rows sum to 1."""
        offsets = np.arange(-self.half, self.half + 1)
        pixel = np.arange(first, last)[:, None] + offsets[None, :]
        inside = (pixel >= 0) & (pixel < self.wavelength.size)
        index = np.clip(pixel, 0, self.wavelength.size - 1)
        delta = self.wavelength[index] - self.wavelength[first:last, None]
        sigma = self.sigma[first:last, None]
        safe_sigma = np.where(sigma > 0, sigma, 1.0)
        weight = np.exp(-0.5 * (delta / safe_sigma) ** 2) * self.step[index]
        weight = np.where(inside & (np.abs(delta) <= self.n_sigma * safe_sigma), weight, 0.0)
        # no broadening needed (R_target = R_model): the pixel itself
        weight = np.where(sigma > 0, weight, (offsets == 0)[None, :].astype(float))
        return index, weight / weight.sum(axis=1, keepdims=True)

    def _blocks(self):
        if self._cache is not None:
            yield self._cache
            return
        for first in range(0, self.wavelength.size, self.block):
            yield self._band(first, min(first + self.block, self.wavelength.size))

    def __call__(self, flux):
        """Convolve flux (..., P) [numpy or torch] on the model grid; returns the same type."""
        if type(flux).__module__.startswith("torch"):
            import torch

            parts = []
            for index, weight in self._blocks():
                index = torch.as_tensor(index, device=flux.device)
                weight = torch.as_tensor(weight, dtype=flux.dtype, device=flux.device)
                parts.append((flux[..., index] * weight).sum(-1))
            return torch.cat(parts, dim=-1)
        flux = np.asarray(flux)
        parts = [np.einsum("...pk,pk->...p", flux[..., i], w) for i, w in self._blocks()]
        return np.concatenate(parts, axis=-1)


def degrade_resolution(
    wavelength: np.ndarray,
    flux: np.ndarray,
    r_target: ResolvingPower,
    r_model: ResolvingPower = np.inf,
) -> np.ndarray:
    """Model flux (..., P) of resolving power `r_model` convolved to `r_target`(lambda)."""
    return ResolutionKernel(wavelength, r_target, r_model)(flux)
