"""Mock LAMOST files: a model spectrum made to look observed, written in a LAMOST layout.

`write_mock_lamost` takes a normalised model spectrum on a vacuum rest-frame grid and writes one
FITS file that the readers in `phdl.data.lamost` read like a real one: LAMOST's log-linear
pixels (log10 step 1e-4 from 10**3.5682 A), a radial-velocity shift, a smooth instrumental
continuum (a Planck curve times a low-order polynomial times the blue/red arm throughputs), noise
with a requested S/N, bad pixels (ivar = 0 with and/or-mask bits) and the usual header keys
(OBSID, DESIG, Z, Z_ERR, HELIO_RV, VACUUM, CLASS, SUBCLASS, SNRU..SNRZ, COEFF0/COEFF1).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.io import fits

from phdl.data.lamost import (
    LAMOST_COEFF0,
    LAMOST_COEFF1,
    LAMOST_N_PIXELS,
    LAYOUTS,
    MASK_BITS,
)
from phdl.data.preprocess import ResolutionKernel
from phdl.data.spectrum import C_KMS, vacuum_to_air

#: Wavelength ranges [A] over which the per-band S/N (SNRU..SNRZ) is a median per pixel.
BAND_RANGES: dict[str, tuple[float, float]] = {
    "u": (3000.0, 4000.0),
    "g": (4000.0, 5500.0),
    "r": (5500.0, 6900.0),
    "i": (6900.0, 8400.0),
    "z": (8400.0, 10000.0),
}

#: Header spelling of the per-band S/N keys per layout (DR1 used SN_U, later SNRU).
_SNR_KEY = {"dr1-image": "SN_{}", "dr2-8-image": "SNR{}", "dr9-table": "SNR{}"}


def lamost_pixels(n_pixels: int = LAMOST_N_PIXELS, first_pixel: int = 0) -> np.ndarray:
    """LAMOST's log-linear vacuum wavelength grid [A], starting `first_pixel` pixels in."""
    return 10.0 ** (LAMOST_COEFF0 + LAMOST_COEFF1 * (first_pixel + np.arange(n_pixels)))


def _log_step(wavelength: np.ndarray) -> float | None:
    """log10 step of a log-uniform grid, None if the grid is not log-uniform."""
    steps = np.diff(np.log10(wavelength))
    return (
        float(steps.mean()) if np.all(np.abs(steps - steps.mean()) < 1e-6 * steps.mean()) else None
    )


def _fourier_shift(flux: np.ndarray, shift: float, ramp: int = 64) -> np.ndarray:
    """Band-limited sub-pixel shift: result[j] = flux(j + shift) for |shift| <= 1 [pixels].

    The array is made periodic by a cosine ramp from its last to its first value first, so the
    wrap-around does not ring (the same method as the fitter's Doppler shift).
    """
    blend = 0.5 * (1 - np.cos(np.pi * np.arange(1, ramp + 1) / (ramp + 1)))
    padded = np.concatenate([flux, flux[-1] + (flux[0] - flux[-1]) * blend])
    frequency = np.fft.rfftfreq(padded.size)
    shifted = np.fft.irfft(
        np.fft.rfft(padded) * np.exp(2j * np.pi * frequency * shift), padded.size
    )
    return shifted[: flux.size]


def _sample_model(
    rest_wavelength: np.ndarray, model: np.ndarray, observed: np.ndarray, doppler: float
) -> np.ndarray:
    """Model seen at `observed` [A] after a Doppler factor; band-limited on LAMOST-step grids.

    A model on a log-uniform grid with LAMOST's step (an emulator-like grid) is shifted in
    Fourier space, exact for a band-limited spectrum; other grids are interpolated linearly and
    should sample each resolution element with >= 5 pixels.
    """
    step = _log_step(rest_wavelength)
    if step is None or abs(step - LAMOST_COEFF1) > 1e-9:
        return np.interp(observed / doppler, rest_wavelength, model, left=1.0, right=1.0)
    # position of each observed pixel in model pixels: i0 + k + fraction
    position = (np.log10(observed / doppler) - np.log10(rest_wavelength[0])) / step
    whole = int(np.floor(position[0]))
    fraction = float(position[0] - whole)
    shifted = _fourier_shift(model, fraction)
    index = whole + np.arange(observed.size)
    inside = (index >= 0) & (index < model.size)
    return np.where(inside, shifted[np.clip(index, 0, model.size - 1)], 1.0)


def band_snr(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray) -> dict[str, float]:
    """Median S/N per pixel (flux * sqrt(ivar), good pixels only) in each band of BAND_RANGES."""
    wavelength, flux, ivar = (np.asarray(a, dtype=np.float64) for a in (wavelength, flux, ivar))
    good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
    snr = {}
    for band, (start, end) in BAND_RANGES.items():
        inside = good & (wavelength >= start) & (wavelength < end)
        snr[band] = float(np.median(flux[inside] * np.sqrt(ivar[inside]))) if inside.any() else 0.0
    return snr


def instrumental_continuum(
    wavelength: np.ndarray,
    temperature: float = 6000.0,
    poly: tuple[float, ...] = (1.0, 0.08, -0.05),
    dichroic: float = 5800.0,
) -> np.ndarray:
    """Smooth flux-calibration-like shape [arbitrary counts]: Planck x polynomial x arm throughput.

    The blue arm (3700-5900 A) and the red arm (5700-9100 A) each have a broad throughput hump;
    they are joined by a 60 A wide logistic at the dichroic wavelength.
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    hc_over_k = 1.438777e8  # h c / k_B [A K]
    planck = wavelength**-5 / np.expm1(hc_over_k / (wavelength * temperature))
    planck /= np.max(planck)
    x = (wavelength - 6400.0) / 2700.0  # ~[-1, 1] over the LAMOST range
    polynomial = np.polynomial.chebyshev.chebval(x, poly)
    blue = np.exp(-0.5 * ((wavelength - 4700.0) / 1100.0) ** 2)
    red = 0.8 * np.exp(-0.5 * ((wavelength - 7000.0) / 1600.0) ** 2)
    red_weight = 1.0 / (1.0 + np.exp(-(wavelength - dichroic) / 60.0))
    throughput = (1.0 - red_weight) * blue + red_weight * red
    return 1000.0 * planck * polynomial * throughput


def mock_lamost_hdul(
    wavelength: np.ndarray,
    flux: np.ndarray,
    snr: float = 50.0,
    rv_kms: float = 0.0,
    layout: str = "dr2-8-image",
    seed: int | None = 0,
    obsid: int = 1,
    n_bad_pixels: int = 10,
    n_or_masked_pixels: int = 10,
    continuum_temperature: float = 6000.0,
    resolution: float | None = None,
    medium: str = "vacuum",
    header: dict | None = None,
) -> fits.HDUList:
    """In-memory LAMOST file (see `write_mock_lamost` for the arguments)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown LAMOST layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    if medium not in ("vacuum", "air"):
        raise ValueError(f"medium must be 'vacuum' or 'air', got {medium!r}")
    if layout == "dr1-image" and medium == "air":
        raise ValueError("the dr1-image layout has no wavelength row, so it cannot be in air")
    rest_wavelength = np.asarray(wavelength, dtype=np.float64)
    model = np.asarray(flux, dtype=np.float64)
    if rest_wavelength.ndim != 1 or rest_wavelength.shape != model.shape:
        raise ValueError(
            f"model wavelength {rest_wavelength.shape} and flux {model.shape} must be 1-d of one length"
        )
    if np.any(np.diff(rest_wavelength) <= 0):
        raise ValueError("model wavelength must be strictly increasing")
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    rng = np.random.default_rng(seed)
    if resolution is not None:
        model = ResolutionKernel(rest_wavelength, resolution)(model)

    # LAMOST pixels covered by the shifted model
    doppler = 1.0 + rv_kms / C_KMS
    lo, hi = rest_wavelength[0] * doppler, rest_wavelength[-1] * doppler
    full = lamost_pixels()
    inside = np.flatnonzero((full >= lo) & (full <= hi))
    if inside.size < 10:
        raise ValueError(
            f"model wavelengths {rest_wavelength[0]:.0f}-{rest_wavelength[-1]:.0f} A barely "
            "overlap LAMOST's 3700-9100 A"
        )
    first = int(inside[0]) if layout != "dr1-image" else 0
    n_pixels = int(inside[-1]) + 1 - first
    observed = lamost_pixels(n_pixels, first)
    normalised = _sample_model(rest_wavelength, model, observed, doppler)

    # counts = instrumental continuum x model; noise variance proportional to counts
    continuum = instrumental_continuum(observed, continuum_temperature)
    counts = continuum * normalised
    g = (observed >= BAND_RANGES["g"][0]) & (observed < BAND_RANGES["g"][1])
    reference = continuum[g] if g.any() else continuum
    # sigma = a sqrt(continuum): S/N(continuum) = sqrt(continuum) / a, median over g equals snr
    a = np.median(np.sqrt(reference)) / snr
    sigma = a * np.sqrt(np.clip(continuum, 1e-12, None))
    noisy = counts + sigma * rng.standard_normal(n_pixels)
    ivar = 1.0 / sigma**2

    andmask = np.zeros(n_pixels)
    ormask = np.zeros(n_pixels)
    if n_bad_pixels:
        bad = rng.choice(n_pixels, size=min(n_bad_pixels, n_pixels // 10), replace=False)
        ivar[bad] = 0.0
        andmask[bad] = MASK_BITS["BADCCD"]
        ormask[bad] = MASK_BITS["BADCCD"]
    if n_or_masked_pixels:  # bad in one exposure only: kept by the default "and" policy
        some = rng.choice(n_pixels, size=min(n_or_masked_pixels, n_pixels // 10), replace=False)
        some = some[andmask[some] == 0]
        ormask[some] = MASK_BITS["NOSKY"]

    snr_bands = band_snr(observed, counts, ivar)
    snr_key = _SNR_KEY[layout]
    keys: dict = {
        "FILENAME": f"mock-{obsid}.fits",
        "OBSID": (int(obsid), "Unique number ID of this spectrum"),
        "AUTHOR": "phdl.data.mock",
        "DATA_V": {"dr1-image": "LAMOST DR1", "dr2-8-image": "LAMOST DR8"}.get(
            layout, "LAMOST DR10"
        ),
        "DESIG": f"PHDL MOCK {int(obsid):010d}",
        "RA": (float(rng.uniform(0, 360)), "[deg] Right ascension of object"),
        "DEC": (float(rng.uniform(-10, 60)), "[deg] Declination of object"),
        "HELIO": True,
        "HELIO_RV": (0.0, "[km/s] Heliocentric correction"),
        "VACUUM": (medium == "vacuum", "Wavelengths are in vacuum"),
        "NWORDER": 2,
        "WFITTYPE": "LOG-LINEAR",
        "COEFF0": (
            LAMOST_COEFF0 + LAMOST_COEFF1 * first,
            "Central wavelength (log10) of first pixel",
        ),
        "COEFF1": (LAMOST_COEFF1, "Log10 dispersion per pixel"),
        "VERSPIPE": "phdl-mock",
        "CLASS": "STAR",
        "SUBCLASS": "G0",
        "Z": (rv_kms / C_KMS, "Redshift of object"),
        "Z_ERR": (1.0 / C_KMS, "Redshift error of object"),
    }
    for band in "ugriz":
        keys[snr_key.format(band.upper())] = (round(snr_bands[band], 2), f"SNR of {band} filter")
    keys.update(header or {})

    wavelength_out = vacuum_to_air(observed) if medium == "air" else observed
    rows = {
        "flux": noisy,
        "ivar": ivar,
        "wavelength": wavelength_out,
        "andmask": andmask,
        "ormask": ormask,
    }
    if layout == "dr1-image":
        rows["wavelength"] = noisy - continuum  # DR1's row 2: continuum-subtracted flux
        keys["EXTEN0"] = "Flux Inverse Subcontinuum Andmask Ormask"
    elif layout == "dr2-8-image":
        keys["EXTEN0"] = "Flux, Inverse, Wavelength, Andmask, Ormask"
    order = ("flux", "ivar", "wavelength", "andmask", "ormask")
    if LAYOUTS[layout].kind == "image":
        primary = fits.PrimaryHDU(np.vstack([rows[q] for q in order]).astype(np.float32))
        primary.header.update(keys)
        return fits.HDUList([primary])
    primary = fits.PrimaryHDU()
    primary.header.update(keys)
    primary.header["N_EXTEN"] = 2
    columns = [
        fits.Column(name=name.upper(), format=f"{n_pixels}E", array=rows[name][None, :])
        for name in order
    ]
    columns.append(
        fits.Column(name="NORMALIZATION", format=f"{n_pixels}E", array=(noisy / continuum)[None, :])
    )
    table = fits.BinTableHDU.from_columns(columns, name="COADD")
    return fits.HDUList([primary, table])


def write_mock_lamost(
    path: str | os.PathLike,
    wavelength: np.ndarray,
    flux: np.ndarray,
    snr: float = 50.0,
    rv_kms: float = 0.0,
    layout: str = "dr2-8-image",
    overwrite: bool = False,
    **kwargs,
) -> Path:
    """Write a normalised model spectrum as a LAMOST FITS file (gzip if the name ends in .gz).

    wavelength: model grid [A, vacuum, rest frame]; flux: continuum-normalised model flux.
    snr: median S/N per pixel of the continuum in the g band (4000-5500 A).
    rv_kms: radial velocity [km/s]; the header's Z is rv_kms / c.
    layout: "dr2-8-image", "dr9-table" or "dr1-image" (see `phdl.data.lamost.LAYOUTS`).
    Other keywords (seed, obsid, n_bad_pixels, n_or_masked_pixels, continuum_temperature,
    resolution [R to convolve the model to], medium ["vacuum"/"air"], header [extra keys]) go to
    `mock_lamost_hdul`.
    """
    path = Path(path)
    hdul = mock_lamost_hdul(wavelength, flux, snr=snr, rv_kms=rv_kms, layout=layout, **kwargs)
    hdul[0].header["FILENAME"] = path.name.removesuffix(".gz")
    hdul.writeto(path, overwrite=overwrite)
    return path


def line_spectrum(
    wavelength: np.ndarray, n_lines: int = 400, depth: float = 0.5, seed: int | None = 0
) -> np.ndarray:
    """A toy normalised absorption spectrum: random Gaussian lines (0.3-1.5 A wide) on 1."""
    wavelength = np.asarray(wavelength, dtype=np.float64)
    rng = np.random.default_rng(seed)
    centres = rng.uniform(wavelength[0], wavelength[-1], n_lines)
    widths = rng.uniform(0.3, 1.5, n_lines)
    depths = depth * rng.uniform(0.05, 1.0, n_lines)
    flux = np.ones_like(wavelength)
    for centre, width, d in zip(centres, widths, depths):
        near = np.abs(wavelength - centre) < 6 * width
        flux[near] *= 1.0 - d * np.exp(-0.5 * ((wavelength[near] - centre) / width) ** 2)
    return flux
