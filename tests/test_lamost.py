"""LAMOST readers: every real reference file, each layout written with astropy, broken files."""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from phdl.data.lamost import (
    LAYOUTS,
    MASK_BITS,
    LamostFormatError,
    file_stem,
    from_specutils,
    identify_layout,
    pixel_mask,
    read_lamost,
)
from phdl.data.mock import line_spectrum, mock_lamost_hdul, write_mock_lamost
from phdl.data.spectrum import C_KMS

REFERENCE = Path(
    os.environ.get(
        "PHDL_LAMOST_REFERENCE", Path(__file__).resolve().parents[2] / "shared/reference/lamost"
    )
)
#: reference sub-folder -> layout its files must be identified as
EXPECTED_LAYOUT = {
    "dr1-lasp": "dr1-image",
    "dr8-repeats": "dr2-8-image",
    "dr7-mdwarfs": "dr2-8-image",
    "dr10-table": "dr9-table",
}
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"no LAMOST reference data at {REFERENCE}"
)


@pytest.fixture(scope="module")
def model():
    """A toy normalised model spectrum on a fine vacuum grid [A]."""
    wavelength = np.arange(3600.0, 9300.0, 0.5)
    return wavelength, line_spectrum(wavelength, n_lines=300)


@pytest.fixture(scope="module")
def reference_spectra():
    """Every real reference file read once: {path: spectrum or exception}."""
    results = {}
    for folder in EXPECTED_LAYOUT:
        for path in sorted((REFERENCE / folder).glob("*.fits*")):
            try:
                results[path] = read_lamost(path)
            except Exception as exc:  # collected, the test below reports them all
                results[path] = exc
    return results


@needs_reference
def test_every_reference_file_reads(reference_spectra):
    failures = {p.name: str(s) for p, s in reference_spectra.items() if isinstance(s, Exception)}
    assert not failures
    assert len(reference_spectra) == 430
    for path, spectrum in reference_spectra.items():
        assert spectrum.meta["layout"] == EXPECTED_LAYOUT[path.parent.name], path
        wavelength = spectrum.wavelength
        assert 3690 < wavelength[0] < 3900 and 8800 < wavelength[-1] < 9110, path
        step = np.diff(np.log10(wavelength))
        assert np.allclose(step, 1e-4, rtol=0, atol=2e-7), path  # float32 rows
        good = spectrum.good_pixels()
        assert good.mean() > 0.7, path
        assert np.all(spectrum.ivar[~good] == 0) and np.all(np.isfinite(spectrum.flux))
        assert spectrum.meta["class"] in ("STAR", "Unknown")
        assert spectrum.meta["snr_g"] is not None and spectrum.meta["snr_r"] is not None
        rv = spectrum.meta["rv_init_kms"]  # None where the header says Z = -9999
        assert rv is None or abs(rv) < 600, path
    missing_z = [p.name for p, s in reference_spectra.items() if s.meta["z"] is None]
    assert len(missing_z) == 4
    ids = [s.id for s in reference_spectra.values()]
    assert len(set(ids)) == len(ids)


@needs_reference
def test_dr1_wavelength_and_labels(reference_spectra):
    """DR1: wavelength = 10**(3.5682 + 1e-4 i); Z * c is LASP's radial velocity; S/N keys."""
    with open(REFERENCE / "dr1-lasp/lasp_labels.csv") as handle:
        lasp = {row["filename"]: row for row in csv.DictReader(handle)}
    dr1 = {p: s for p, s in reference_spectra.items() if p.parent.name == "dr1-lasp"}
    assert len(dr1) == 131
    agree = 0
    for path, spectrum in dr1.items():
        expected = 10.0 ** (3.5682 + 1e-4 * np.arange(spectrum.wavelength.size))
        np.testing.assert_allclose(spectrum.wavelength, expected, rtol=1e-12)
        row = lasp[path.name]
        assert spectrum.meta["designation"].endswith(row["designation"])
        assert spectrum.id == spectrum.meta["designation"]  # DR1 files have no OBSID key
        agree += spectrum.meta["snr_g"] == pytest.approx(float(row["snrg"]), abs=0.01) and (
            spectrum.meta["rv_init_kms"] == pytest.approx(float(row["rv"]), abs=0.5)
        )
    # the LASP table comes from a later reduction for 14 of these spectra (other S/N and RV)
    assert agree >= 115


@needs_reference
def test_dr8_ids_and_snr_match_catalogue(reference_spectra):
    with open(REFERENCE / "dr8-repeats/groups.csv") as handle:
        rows = {Path(r["combined_file"]).name: r for r in csv.DictReader(handle)}
    for path, spectrum in reference_spectra.items():
        if path.parent.name != "dr8-repeats":
            continue
        row = rows[path.name]
        assert spectrum.id == row["combined_obsid"] == str(spectrum.meta["obsid"])
        assert spectrum.meta["snr_g"] == pytest.approx(float(row["combined_snrg"]), abs=0.01)
        assert spectrum.meta["path"] == str(path)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("compress", [False, True])
def test_each_layout_written_with_astropy(tmp_path, model, layout, compress):
    """A file of each layout reads back with the right layout, wavelengths, mask and header."""
    name = f"spec-{layout}.fits" + (".gz" if compress else "")
    path = write_mock_lamost(tmp_path / name, *model, snr=30, rv_kms=-40.0, layout=layout, obsid=77)
    spectrum = read_lamost(path)
    assert spectrum.meta["layout"] == layout
    assert spectrum.id == "77" and spectrum.meta["obsid"] == 77
    expected_first = 10.0 ** (
        3.5682 + 1e-4 * np.round((np.log10(spectrum.wavelength[0]) - 3.5682) / 1e-4)
    )
    assert spectrum.wavelength[0] == pytest.approx(expected_first, rel=1e-7)
    assert spectrum.meta["rv_init_kms"] == pytest.approx(-40.0)
    assert spectrum.meta["z"] == pytest.approx(-40.0 / C_KMS)
    assert spectrum.mask.sum() == 10 and np.all(spectrum.ivar[spectrum.mask] == 0)
    assert set(k for k in spectrum.meta if k.startswith("snr_")) == {f"snr_{b}" for b in "ugriz"}
    assert spectrum.meta["vacuum_keyword"] is True


def test_layout_identified_from_content_not_name(tmp_path, model):
    """A DR1 file named like a table file, and files without EXTEN0, are still identified."""
    hdul = mock_lamost_hdul(*model, layout="dr1-image")
    hdul.writeto(tmp_path / "dr10-table.fits")
    assert read_lamost(tmp_path / "dr10-table.fits").meta["layout"] == "dr1-image"
    for layout in ("dr1-image", "dr2-8-image"):
        hdul = mock_lamost_hdul(*model, layout=layout)
        del hdul[0].header["EXTEN0"]
        assert identify_layout(hdul) == layout


def test_air_wavelengths_converted_to_vacuum(tmp_path, model):
    vacuum = read_lamost(write_mock_lamost(tmp_path / "v.fits", *model, layout="dr9-table"))
    air = read_lamost(
        write_mock_lamost(tmp_path / "a.fits", *model, layout="dr9-table", medium="air")
    )
    assert air.meta["converted_from_air"] and air.meta["vacuum_keyword"] is False
    np.testing.assert_allclose(air.wavelength, vacuum.wavelength, atol=2e-3)


def test_mask_policy(tmp_path, model):
    """'and' keeps pixels bad in one exposure only; 'or' drops them; bits select which count."""
    path = write_mock_lamost(tmp_path / "m.fits", *model, n_bad_pixels=10, n_or_masked_pixels=15)
    n_and = read_lamost(path, mask_policy="and").mask.sum()
    n_or = read_lamost(path, mask_policy="or").mask.sum()
    n_or_ccd_only = read_lamost(path, mask_policy="or", mask_bits=MASK_BITS["BADCCD"]).mask.sum()
    assert n_and == 10 and n_or > n_and and n_or_ccd_only == 10
    assert read_lamost(path, mask_policy="none").mask.sum() == 10  # ivar = 0 still counts
    with pytest.raises(ValueError, match="mask_policy"):
        pixel_mask(np.zeros(3), np.zeros(3), mask_policy="sometimes")


def test_id_falls_back_to_designation_then_file_stem(tmp_path, model):
    hdul = mock_lamost_hdul(*model, layout="dr2-8-image")
    hdul[0].header["OBSID"] = 0
    hdul.writeto(tmp_path / "a.fits")
    assert read_lamost(tmp_path / "a.fits").id == hdul[0].header["DESIG"]
    del hdul[0].header["DESIG"]
    hdul.writeto(tmp_path / "spec-b.fits.gz")
    assert read_lamost(tmp_path / "spec-b.fits.gz").id == "spec-b"
    assert file_stem("x/spec-1.fit.gz") == "spec-1"


def _broken_files(directory: Path, model) -> dict[str, str]:
    """Write one broken file per failure mode: file name -> expected reason (regex)."""
    good = directory / "good.fits"
    write_mock_lamost(good, *model)
    payload = good.read_bytes()
    (directory / "truncated.fits").write_bytes(payload[: len(payload) // 2])
    (directory / "truncated.fits.gz").write_bytes(gzip.compress(payload)[:3000])
    (directory / "text.fits").write_text("obsid,teff\n1,5000\n")
    (directory / "empty.fits").write_bytes(b"")
    fits.PrimaryHDU(np.zeros((64, 64), np.float32)).writeto(directory / "image.fits")
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="FLUX", format="10E", array=np.ones((1, 10)))]
    )
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(directory / "wrong_table.fits")

    def variant(name: str, row: int, values) -> None:
        hdul = mock_lamost_hdul(*model, layout="dr2-8-image")
        hdul[0].data[row] = values(hdul[0].data[row])
        hdul.writeto(directory / name)

    variant("zero_ivar.fits", 1, np.zeros_like)
    variant("nan_flux.fits", 0, lambda row: np.full_like(row, np.nan))
    variant("decreasing.fits", 2, lambda row: row[::-1].copy())
    hdul = mock_lamost_hdul(*model, layout="dr9-table")
    hdul[1].data["WAVELENGTH"][0][100] = hdul[1].data["WAVELENGTH"][0][99]
    hdul.writeto(directory / "repeated_wavelength.fits")
    return {
        "truncated.fits": "truncated",
        "truncated.fits.gz": "not a readable FITS",
        "text.fits": "not a readable FITS",
        "empty.fits": "not a readable FITS",
        "image.fits": "not a LAMOST spectrum",
        "wrong_table.fits": "not a LAMOST spectrum",
        "zero_ivar.fits": "ivar is zero",
        "nan_flux.fits": "flux has no finite value",
        "decreasing.fits": "not strictly increasing",
        "repeated_wavelength.fits": "not strictly increasing",
        "missing.fits": "no such file",
    }


def test_broken_files_raise_with_file_and_reason(tmp_path, model):
    expected = _broken_files(tmp_path, model)
    for name, reason in expected.items():
        with pytest.raises(LamostFormatError, match=reason) as info:
            read_lamost(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_from_specutils_like_object():
    """Any object with specutils' attributes converts (real specutils tested below if present)."""
    import astropy.units as u
    from astropy.nddata import StdDevUncertainty

    class Spectrum:
        spectral_axis = np.linspace(400, 900, 50) * u.nm
        flux = np.full(50, 2.0) * u.Jy
        uncertainty = StdDevUncertainty(np.full(50, 0.5))
        mask = np.zeros(50, bool)
        meta = {"medium": "air"}

    spectrum = from_specutils(Spectrum(), id="s1")
    assert spectrum.id == "s1" and spectrum.wavelength[0] == pytest.approx(4001.1, abs=0.2)
    np.testing.assert_allclose(spectrum.ivar, 4.0)


def test_specutils_roundtrip(tmp_path, model):
    specutils = pytest.importorskip("specutils")
    from phdl.data.lamost import register_specutils_loader

    spectrum_class = getattr(specutils, "Spectrum", None) or specutils.Spectrum1D
    assert register_specutils_loader()
    for layout in ("dr1-image", "dr9-table"):
        path = write_mock_lamost(tmp_path / f"{layout}.fits.gz", *model, layout=layout)
        spectrum = spectrum_class.read(path, format="lamost-lrs")
        back = from_specutils(spectrum)
        direct = read_lamost(path)
        assert back.id == direct.id and back.meta["layout"] == layout
        np.testing.assert_allclose(back.wavelength, direct.wavelength)
        np.testing.assert_allclose(back.ivar, direct.ivar)
        np.testing.assert_array_equal(back.mask, direct.mask)
        assert from_specutils(spectrum_class.read(path)).id == direct.id  # format identified


@needs_reference
def test_fast_engine_matches_astropy(reference_spectra):
    """The fast parser reads every reference file itself and agrees with astropy exactly."""
    from phdl.data import _fits

    for i, (path, fast) in enumerate(reference_spectra.items()):
        hdus = _fits.read_fits(path)  # no fallback needed for any real file
        assert len(hdus) == (2 if path.parent.name == "dr10-table" else 1)
        if i % 7:
            continue
        slow = read_lamost(path, engine="astropy")
        assert slow.id == fast.id and slow.meta == fast.meta
        for name in ("wavelength", "flux", "ivar", "mask"):
            np.testing.assert_array_equal(getattr(slow, name), getattr(fast, name))


def test_fast_parser_cards_and_scaling(tmp_path):
    """Quoted strings with '' and '/', booleans, D exponents, BSCALE/BZERO, gzip, cut files."""
    from phdl.data import _fits

    assert _fits._value(" 'it''s / here'     / comment") == "it's / here"
    assert _fits._value("                   T / flag") is True
    assert _fits._value("             1.5D-3") == pytest.approx(1.5e-3)
    assert _fits._value("                 -12 / n") == -12
    hdu = fits.PrimaryHDU(np.arange(10, dtype=np.int16).reshape(2, 5))
    hdu.header["BSCALE"], hdu.header["BZERO"] = 2.0, 1.0
    hdu.writeto(tmp_path / "scaled.fits.gz")
    [read] = _fits.read_fits(tmp_path / "scaled.fits.gz")
    with fits.open(tmp_path / "scaled.fits.gz") as reference:
        np.testing.assert_array_equal(read.data, reference[0].data)
    payload = gzip.decompress((tmp_path / "scaled.fits.gz").read_bytes())
    (tmp_path / "junk.fits").write_bytes(payload + b"garbage after the last HDU")
    assert len(_fits.read_fits(tmp_path / "junk.fits")) == 1
    (tmp_path / "cut.fits").write_bytes(payload[:2890])  # header + half the 20 data bytes
    with pytest.raises(_fits.Corrupt, match="truncated"):
        _fits.read_fits(tmp_path / "cut.fits")
    (tmp_path / "cut.fits.gz").write_bytes((tmp_path / "scaled.fits.gz").read_bytes()[:-12])
    with pytest.raises(_fits.Corrupt, match="gzip"):
        _fits.read_fits(tmp_path / "cut.fits.gz")
