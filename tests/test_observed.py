"""Observed-spectrum sources and the predict datamodule: every reader, every malformed case."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from astropy.io import fits

from phdl.data.observed import (
    ArraySpectra,
    FITSSpectra,
    HDF5Spectra,
    ListSpectra,
    ObservedDataModule,
    ObservedDataset,
    SpecutilsSpectra,
    write_observed_hdf5,
)
from phdl.data.spectrum import ObservedSpectrum, vacuum_to_air

GRID = 10 ** (np.log10(5000.0) + 1e-4 * np.arange(300))


def _spectrum(i: int, wavelength=GRID) -> ObservedSpectrum:
    rng = np.random.default_rng(i)
    flux = 100.0 * (1 - 0.3 * np.exp(-0.5 * ((wavelength - 5100.0) / 1.5) ** 2))
    flux = flux + rng.standard_normal(wavelength.size)
    return ObservedSpectrum(f"s{i}", wavelength, flux, np.ones(wavelength.size))


def test_array_and_hdf5_sources_resample_onto_the_model_grid(tmp_path):
    spectra = [_spectrum(i) for i in range(3)]
    path = tmp_path / "obs.h5"
    write_observed_hdf5(path, spectra)
    source = HDF5Spectra(str(path))
    assert len(source) == 3 and source.ids() == ["s0", "s1", "s2"]
    dataset = ObservedDataset(source, GRID)
    item = dataset[1]
    assert item["id"] == "s1" and item["reason"] == "" and item["flux"].shape == (300,)
    np.testing.assert_allclose(item["flux"][:-1], spectra[1].flux[:-1], rtol=1e-6)
    assert 80 < item["snr"] < 120
    # a dataset that has opened its file still pickles (DataLoader workers)
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone[2]["flux"], dataset[2]["flux"])

    arrays = ArraySpectra(GRID, np.stack([s.flux for s in spectra]), np.ones((3, 300)))
    np.testing.assert_allclose(ObservedDataset(arrays, GRID)[1]["flux"], item["flux"])
    air = ArraySpectra(vacuum_to_air(GRID), np.stack([s.flux for s in spectra]),
                       np.ones((3, 300)), medium="air")  # fmt: skip
    np.testing.assert_allclose(ObservedDataset(air, GRID)[1]["flux"][5:-5], item["flux"][5:-5],
                               rtol=1e-5)  # fmt: skip


def test_malformed_spectra_get_a_reason_and_never_raise(tmp_path):
    good = _spectrum(0)
    nan_flux = ObservedSpectrum("nan", GRID, np.full(300, np.nan), np.ones(300))
    no_ivar = ObservedSpectrum("zero_ivar", GRID, good.flux, np.zeros(300))
    outside = _spectrum(1, wavelength=np.linspace(8000.0, 9000.0, 300))
    shapes = ObservedSpectrum("shape", GRID, good.flux[:200], np.ones(300))
    few = ObservedSpectrum("few", GRID, good.flux, np.where(np.arange(300) < 5, 1.0, 0.0))

    class Broken(ListSpectra):
        def __getitem__(self, index):
            if index == 6:
                raise OSError("truncated file")
            return super().__getitem__(index)

    source = Broken([good, nan_flux, no_ivar, outside, shapes, few, good])
    dataset = ObservedDataset(source, GRID, min_good_pixels=20)
    reasons = [dataset[i]["reason"] for i in range(len(dataset))]
    assert reasons[0] == ""
    assert "no usable pixel" in reasons[1] and "no usable pixel" in reasons[2]
    assert "usable pixels on the model grid" in reasons[3] and "8000.0-9000.0 A" in reasons[3]
    assert "one length" in reasons[4]
    assert "5 usable pixels" in reasons[5]
    assert reasons[6] == "OSError: truncated file" and dataset[6]["id"] == "6"
    assert all(np.all(dataset[i]["ivar"] == 0) for i in range(1, 7))


def test_fits_sources_table_image_and_header_wavelength(tmp_path):
    spectrum = _spectrum(0)
    columns = [fits.Column(name=n, format=f"{spectrum.flux.size}D", array=v[None])
               for n, v in (("FLUX", spectrum.flux), ("IVAR", spectrum.ivar),
                            ("WAVELENGTH", spectrum.wavelength))]  # fmt: skip
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]).writeto(
        tmp_path / "table_star.fits"
    )
    image = fits.PrimaryHDU(np.stack([spectrum.flux, np.ones(300) * 4.0, spectrum.wavelength]))
    image.header["OBSID"] = 1234
    image.writeto(tmp_path / "image_star.fits.gz")
    flux_only = fits.PrimaryHDU(spectrum.flux)
    flux_only.header["CRVAL1"], flux_only.header["CDELT1"] = np.log10(5000.0), 1e-4
    flux_only.writeto(tmp_path / "flux_only.fits")
    (tmp_path / "broken.fits").write_bytes(b"not a fits file")

    table = FITSSpectra(str(tmp_path / "table_star.fits"))
    assert table.ids() == ["table_star"]
    np.testing.assert_allclose(table[0].flux, spectrum.flux)
    image_source = FITSSpectra([str(tmp_path / "image_star.fits.gz")], layout="image", hdu=0,
                               flux=0, ivar=1, wavelength=2, uncertainty="sigma",
                               id_key="OBSID")  # fmt: skip
    assert image_source.ids() == ["1234"]
    np.testing.assert_allclose(image_source[0].ivar, 1 / 16.0)
    header = FITSSpectra([str(tmp_path / "flux_only.fits")], layout="image", hdu=0, flux=0,
                         ivar=0, wavelength="log10", uncertainty="variance")  # fmt: skip
    np.testing.assert_allclose(header[0].wavelength, GRID, rtol=1e-12)
    broken = ObservedDataset(FITSSpectra([str(tmp_path / "broken.fits")]), GRID)
    assert broken[0]["reason"] and broken[0]["id"] == "0"


def test_specutils_source_if_installed():
    specutils = pytest.importorskip("specutils")
    import astropy.units as u
    from astropy.nddata import InverseVariance

    spectrum = _spectrum(0)
    spectrum1d = specutils.Spectrum1D(
        flux=spectrum.flux * u.Jy, spectral_axis=spectrum.wavelength * u.AA,
        uncertainty=InverseVariance(np.full(300, 2.0) / u.Jy**2),
    )  # fmt: skip
    converted = SpecutilsSpectra([spectrum1d], ids=["x"])[0]
    assert converted.id == "x" and np.allclose(converted.ivar, 2.0)


def test_datamodule_skips_done_ids_and_rejects_duplicates():
    spectra = [_spectrum(i) for i in range(5)]
    module = ObservedDataModule(ListSpectra(spectra), batch_size=2, wavelength=list(GRID))
    module.skip_ids({"s1", "s3"})
    batches = list(module.predict_dataloader())
    assert [b["id"] for b in batches] == [["s0", "s2"], ["s4"]]
    assert batches[0]["flux"].shape == (2, 300) and batches[1]["index"].tolist() == [4]
    duplicate = ObservedDataModule(ListSpectra([spectra[0], spectra[0]]), wavelength=list(GRID))
    with pytest.raises(ValueError, match="unique"):
        duplicate.predict_dataloader()
    with pytest.raises(RuntimeError, match="wavelength grid"):
        ObservedDataModule(ListSpectra(spectra)).predict_dataloader()
