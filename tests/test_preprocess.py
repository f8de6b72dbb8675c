"""Preprocessing: bad pixels and regions, resampling onto a model grid, resolution matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phdl.data.lamost import read_lamost
from phdl.data.mock import band_snr, instrumental_continuum, line_spectrum, write_mock_lamost
from phdl.data.preprocess import (
    BAD_REGIONS,
    WATER_REGIONS,
    Preprocessor,
    ResolutionKernel,
    degrade_resolution,
    mask_regions,
    region_mask,
)
from phdl.data.spectrum import C_KMS, ObservedSpectrum, vacuum_to_air


def _flat(n: int = 2000, start: float = 5000.0, stop: float = 8000.0, **meta) -> ObservedSpectrum:
    wavelength = np.linspace(start, stop, n)
    return ObservedSpectrum("flat", wavelength, np.full(n, 10.0), np.full(n, 4.0), None, meta)


def test_default_regions_masked_and_water_optional():
    spectrum = Preprocessor()(_flat())
    for start, end in BAD_REGIONS.values():
        inside = (spectrum.wavelength >= start) & (spectrum.wavelength <= end)
        assert np.all(spectrum.ivar[inside] == 0) and np.all(spectrum.mask[inside])
    water = region_mask(spectrum.wavelength, WATER_REGIONS)
    assert np.all(spectrum.ivar[water] > 0)
    assert np.all(Preprocessor(mask_water=True)(_flat()).ivar[water] == 0)
    assert 0.7 < spectrum.meta["good_fraction"] < 0.95
    assert np.all(Preprocessor(bad_regions=[])(_flat()).ivar > 0)


def test_bad_pixels_get_zero_ivar_and_flux():
    spectrum = _flat()
    spectrum.flux[10] = np.nan
    spectrum.ivar[20] = -1.0
    spectrum.mask[30] = True
    cleaned = mask_regions(spectrum, [])
    for i in (10, 20, 30):
        assert cleaned.ivar[i] == 0 and cleaned.flux[i] == 0 and cleaned.mask[i]
    assert np.isfinite(cleaned.flux).all()


def test_regions_checked():
    with pytest.raises(ValueError, match="end must exceed start"):
        Preprocessor(bad_regions=[(6000.0, 5000.0)])


def test_resample_onto_model_grid_with_rest_frame_shift():
    """A line observed at +100 km/s lands at its rest wavelength when shift_to_rest is on."""
    rest = 6500.0
    wavelength = np.linspace(6000.0, 7000.0, 5001)
    observed_centre = rest * (1 + 100.0 / C_KMS)
    flux = 1.0 - 0.5 * np.exp(-0.5 * ((wavelength - observed_centre) / 1.0) ** 2)
    spectrum = ObservedSpectrum(
        "s", wavelength, flux, np.full(5001, 100.0), None, {"rv_init_kms": 100.0}
    )
    grid = np.linspace(6400.0, 6600.0, 2001)
    shifted = Preprocessor(wavelength=grid, shift_to_rest=True, bad_regions=[])(spectrum)
    kept = Preprocessor(wavelength=grid, bad_regions=[])(spectrum)
    assert shifted.wavelength[np.argmin(shifted.flux)] == pytest.approx(rest, abs=0.15)
    assert kept.wavelength[np.argmin(kept.flux)] == pytest.approx(observed_centre, abs=0.15)
    assert shifted.meta["rv_removed_kms"] == 100.0 and kept.meta["rv_removed_kms"] == 0.0
    assert shifted.meta["rv_init_kms"] == 100.0  # the fitter's start value travels on


def test_air_model_grid_pixels_match_one_to_one():
    spectrum = _flat(start=5000.0, stop=5600.0)
    spectrum.flux[:] = spectrum.wavelength  # flux = vacuum wavelength
    air_grid = np.linspace(5100.0, 5500.0, 401)
    result = Preprocessor(wavelength=air_grid, medium="air", bad_regions=[])(spectrum)
    np.testing.assert_allclose(vacuum_to_air(result.flux), air_grid, atol=1e-3)


def test_too_few_usable_pixels_refused():
    spectrum = _flat(start=5700.0, stop=5950.0, path="x.fits")
    with pytest.raises(ValueError, match=r"x.fits.*usable"):
        Preprocessor()(spectrum)
    with pytest.raises(ValueError, match="strictly increasing"):
        Preprocessor(wavelength=[2.0, 1.0])


def test_resolution_kernel_fwhm_and_conservation():
    wavelength = np.exp(np.linspace(np.log(4000.0), np.log(6000.0), 20000))
    flux = np.ones_like(wavelength)
    centre = 10000
    flux[centre] = 0.0
    kernel = ResolutionKernel(wavelength, 1800.0)
    line = 1.0 - kernel(flux)
    step = np.gradient(wavelength)
    assert line.sum() * step[centre] == pytest.approx(step[centre], rel=1e-3)  # EW conserved
    mean = np.sum(wavelength * line) / line.sum()
    sigma = np.sqrt(np.sum((wavelength - mean) ** 2 * line) / line.sum())
    assert 2.3548 * sigma == pytest.approx(wavelength[centre] / 1800.0, rel=0.01)
    np.testing.assert_allclose(kernel(np.ones((3, wavelength.size))), 1.0, atol=1e-12)
    as_torch = kernel(torch.tensor(flux, dtype=torch.float64))
    np.testing.assert_allclose(as_torch.numpy(), 1.0 - line, atol=1e-12)


def test_resolution_varies_with_wavelength_and_model_resolution():
    """R(lambda) callable; a model of R=5000 degraded to 1800 adds only the difference."""
    wavelength = np.linspace(4000.0, 8000.0, 20001)
    lines = np.ones_like(wavelength)
    for centre in (4500.0, 7500.0):
        lines[np.argmin(np.abs(wavelength - centre))] = 0.0

    def measured_fwhm(flux, centre):
        near = np.abs(wavelength - centre) < 30
        depth = 1.0 - flux[near]
        mean = np.sum(wavelength[near] * depth) / depth.sum()
        return 2.3548 * np.sqrt(np.sum((wavelength[near] - mean) ** 2 * depth) / depth.sum())

    def resolving_power(lam):
        return 1000.0 + 1000.0 * (lam - 4000.0) / 4000.0  # 1000 (blue) -> 2000 (red)

    degraded = degrade_resolution(wavelength, lines, resolving_power)
    assert measured_fwhm(degraded, 4500.0) == pytest.approx(4500.0 / 1125.0, rel=0.02)
    assert measured_fwhm(degraded, 7500.0) == pytest.approx(7500.0 / 1875.0, rel=0.02)
    model_5000 = degrade_resolution(wavelength, lines, 5000.0)
    twice = degrade_resolution(wavelength, model_5000, 1800.0, r_model=5000.0)
    once = degrade_resolution(wavelength, lines, 1800.0)
    np.testing.assert_allclose(twice, once, atol=2e-3)
    with pytest.raises(ValueError, match="at most the model"):
        ResolutionKernel(wavelength, 6000.0, r_model=5000.0)
    np.testing.assert_allclose(degrade_resolution(wavelength, lines, 5000.0, 5000.0), lines)


@pytest.mark.parametrize("layout", ["dr2-8-image", "dr9-table"])
def test_mock_snr_and_rv_read_back(tmp_path, layout):
    """Mocks: S/N near the request, Z = v/c in the header, and the data's lines sit at +v."""
    wavelength = np.arange(3600.0, 9300.0, 0.25)
    model = degrade_resolution(wavelength, line_spectrum(wavelength, n_lines=600, seed=3), 1800.0)
    rv = 57.0
    path = write_mock_lamost(
        tmp_path / "m.fits", wavelength, model, snr=80, rv_kms=rv, layout=layout
    )
    spectrum = read_lamost(path)
    assert spectrum.meta["rv_init_kms"] == pytest.approx(rv)
    measured = band_snr(spectrum.wavelength, spectrum.flux, spectrum.ivar)
    assert measured["g"] == pytest.approx(80, rel=0.1)
    assert spectrum.meta["snr_g"] == pytest.approx(measured["g"], rel=0.05)
    assert spectrum.meta["snr_u"] < spectrum.meta["snr_g"]  # blue arm falls off
    # recover the velocity from the data: chi2 against continuum x shifted model
    continuum = instrumental_continuum(spectrum.wavelength)
    good = spectrum.good_pixels()
    trial = np.arange(0.0, 120.0, 3.0)
    chi2 = [
        np.sum(
            spectrum.ivar[good]
            * (
                spectrum.flux
                - continuum * np.interp(spectrum.wavelength / (1 + v / C_KMS), wavelength, model)
            )[good]
            ** 2
        )
        for v in trial
    ]
    assert trial[int(np.argmin(chi2))] == pytest.approx(rv, abs=6.0)
    reduced = min(chi2) / good.sum()
    assert 0.8 < reduced < 1.2  # noise matches ivar


def test_lamost_pixel_grid_alignment_and_warning():
    """Grids on LAMOST pixels resample exactly; an offset grid warns (linear smoothing)."""
    from phdl.data.lamost import lamost_pixel_offset, lamost_wavelength

    grid = lamost_wavelength(4000.0, 6000.0)
    assert lamost_pixel_offset(grid) == 0.0
    assert lamost_pixel_offset(grid * 10 ** (0.3e-4)) == pytest.approx(0.3)
    assert np.isnan(lamost_pixel_offset(np.linspace(4000.0, 6000.0, 100)))
    observed = lamost_wavelength(3900.0, 6100.0)
    rng = np.random.default_rng(0)
    spectrum = ObservedSpectrum(
        "s", observed, rng.normal(1, 0.1, observed.size), np.full(observed.size, 100.0)
    )
    on_grid = Preprocessor(wavelength=grid, bad_regions=[])(spectrum)
    first = np.searchsorted(observed, grid[0] - 1e-6)
    np.testing.assert_allclose(on_grid.flux, spectrum.flux[first : first + grid.size], rtol=1e-12)
    np.testing.assert_allclose(on_grid.ivar, 100.0, rtol=1e-9)
    assert on_grid.meta["grid_pixel_offset"] == 0.0
    with pytest.warns(UserWarning, match="offset by \\+0.30 LAMOST pixels"):
        Preprocessor(wavelength=grid * 10 ** (0.3e-4))


def test_resolution_kernel_blocks_match_single_band():
    wavelength = np.linspace(5000.0, 5200.0, 4001)
    flux = line_spectrum(wavelength, n_lines=40)
    kernel = ResolutionKernel(wavelength, 1800.0)
    assert kernel._cache is not None
    kernel._cache, kernel.block = None, 333  # force the memory-bounded path
    np.testing.assert_allclose(
        kernel(flux), degrade_resolution(wavelength, flux, 1800.0), atol=1e-13
    )
    as_torch = kernel(torch.tensor(np.stack([flux, flux])))
    np.testing.assert_allclose(as_torch.numpy()[1], kernel(flux), atol=1e-13)


def test_mock_samples_emulator_grids_band_limited():
    """A model on a LAMOST-step grid is shifted in Fourier space: errors at the aliasing floor of
    R~1800 sampling (~1e-3), several times below linear interpolation's."""
    from phdl.data.mock import _sample_model, lamost_pixels

    rng = np.random.default_rng(1)
    centres, depths = rng.uniform(4500.0, 5100.0, 200), rng.uniform(0.05, 0.6, 200)

    def truth_at(lam):  # R = 1800 Gaussian lines, evaluated exactly anywhere
        sigma = centres / (2.3548 * 1800.0)
        return 1.0 - (depths * np.exp(-0.5 * ((lam[:, None] - centres) / sigma) ** 2)).sum(1)

    emulator_grid = 10 ** (np.log10(4500.0) + 1e-4 * np.arange(1200))  # 0.1 pixel offset
    model = truth_at(emulator_grid)
    observed = lamost_pixels()
    observed = observed[(observed > 4600.0) & (observed < 5000.0)]
    for rv in (0.0, 33.3, -147.0):
        doppler = 1 + rv / C_KMS
        sampled = _sample_model(emulator_grid, model, observed, doppler)
        error = np.abs(sampled - truth_at(observed / doppler)).max()
        linear = np.interp(observed / doppler, emulator_grid, model)
        assert error < 4e-3 and np.abs(linear - truth_at(observed / doppler)).max() > 3 * error
