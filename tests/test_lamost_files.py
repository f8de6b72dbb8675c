"""Streaming file dataset: directories, globs, list files; bad files become rejects, never errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from test_lamost import REFERENCE, _broken_files, needs_reference

from phdl.data.files import (
    Rejected,
    SpectrumFileDataset,
    read_rejects,
    read_spectra,
    resolve_paths,
    write_rejects,
)
from phdl.data.mock import line_spectrum, write_mock_lamost
from phdl.data.preprocess import Preprocessor
from phdl.data.spectrum import ObservedSpectrum


@pytest.fixture(scope="module")
def model():
    wavelength = np.arange(3600.0, 9300.0, 0.5)
    return wavelength, line_spectrum(wavelength, n_lines=300)


@pytest.fixture
def mixed_directory(tmp_path, model):
    """Three good files (one per layout, one gzip), every broken kind, and a CSV to ignore."""
    for i, layout in enumerate(("dr1-image", "dr2-8-image", "dr9-table")):
        suffix = ".fits.gz" if layout == "dr2-8-image" else ".fits"
        write_mock_lamost(tmp_path / f"ok_{layout}{suffix}", *model, layout=layout, obsid=i + 1)
    expected = _broken_files(tmp_path, model)
    expected.pop("missing.fits")
    (tmp_path / "catalogue.csv").write_text("obsid\n1\n")
    return tmp_path, expected


def test_directory_yields_spectra_and_rejects(mixed_directory):
    directory, expected = mixed_directory
    dataset = SpectrumFileDataset(directory)
    names = [p.rsplit("/", 1)[-1] for p in dataset.paths]
    assert "catalogue.csv" not in names and len(dataset) == len(expected) + 4  # + good.fits
    spectra, rejects = read_spectra(directory)
    assert sorted(s.id for s in spectra) == ["1", "1", "2", "3"]  # good.fits has obsid 1 too
    assert all(isinstance(s, ObservedSpectrum) for s in spectra)
    reasons = {r.path.rsplit("/", 1)[-1]: r.reason for r in rejects}
    assert set(reasons) == set(expected)
    for name, pattern in expected.items():
        assert pattern in reasons[name], (name, reasons[name])
        assert not reasons[name].startswith(str(directory))  # path is its own column


def test_workers_read_lazily_and_agree(mixed_directory):
    """Two DataLoader workers give the same records as the main process; paths only pickled."""
    directory, _ = mixed_directory
    dataset = SpectrumFileDataset(directory, Preprocessor())
    assert isinstance(dataset.paths, np.ndarray) and len(pickle.dumps(dataset)) < 20_000
    serial = read_spectra(dataset.paths.tolist(), Preprocessor())
    parallel = read_spectra(dataset.paths.tolist(), Preprocessor(), num_workers=2, batch_size=3)
    assert [s.id for s in serial[0]] == [s.id for s in parallel[0]]
    assert serial[1] == parallel[1]
    np.testing.assert_array_equal(serial[0][0].ivar, parallel[0][0].ivar)


def test_glob_and_list_file(mixed_directory):
    directory, _ = mixed_directory
    assert len(resolve_paths(str(directory / "ok_*"))) == 3
    listing = directory / "inputs.txt"
    listing.write_text(
        "# spectra to fit\nok_dr1-image.fits\n\nok_dr9-table.fits  # a comment\nnone.fits\n"
    )
    spectra, rejects = read_spectra(listing)
    assert [s.meta["layout"] for s in spectra] == ["dr1-image", "dr9-table"]
    assert rejects == [Rejected(str(directory / "none.fits"), "no such file")]
    with pytest.raises(FileNotFoundError, match="no such directory"):
        resolve_paths(directory / "nowhere")


def test_preprocess_failure_is_a_reject(mixed_directory):
    directory, _ = mixed_directory
    too_strict = Preprocessor(min_good_fraction=0.999)
    spectra, rejects = read_spectra(str(directory / "ok_*"), too_strict)
    assert not spectra and len(rejects) == 3
    assert all("pixels usable" in r.reason for r in rejects)


@pytest.mark.parametrize("suffix", [".csv", ".fits"])
def test_write_and_read_rejects(tmp_path, suffix):
    rejects = [Rejected("/data/a.fits", "truncated FITS file"), Rejected("b.fits", "ivar, zero")]
    path = write_rejects(rejects, tmp_path / f"run/rejects{suffix}")
    assert read_rejects(path) == rejects
    with pytest.raises(FileExistsError):
        write_rejects(rejects, path)
    write_rejects([], path, overwrite=True)
    assert read_rejects(path) == []
    with pytest.raises(ValueError, match="must end in"):
        write_rejects(rejects, tmp_path / "rejects.txt")


@needs_reference
def test_reference_directory_streams_without_rejects():
    spectra, rejects = read_spectra(
        REFERENCE, Preprocessor(wavelength=np.arange(3900.0, 8900.0, 1.0))
    )
    assert len(spectra) == 430 and not rejects
    assert all(s.wavelength.size == 5000 for s in spectra)


def test_lamost_source_plugs_into_observed_datamodule(mixed_directory):
    """`LamostSpectra` is a SpectrumSource: bad files become flagged rows, ids known up front."""
    from phdl.data.files import LamostSpectra
    from phdl.data.observed import ObservedDataModule, ObservedDataset

    directory, expected = mixed_directory
    source = LamostSpectra(str(directory))
    grid = np.arange(4000.0, 8800.0, 2.0)
    items = {
        str(source.paths[i]).rsplit("/", 1)[-1]: ObservedDataset(source, grid)[i]
        for i in range(len(source))
    }
    assert (
        not items["ok_dr9-table.fits"]["reason"]
        and items["ok_dr9-table.fits"]["id"] == "ok_dr9-table"
    )
    assert (items["ok_dr1-image.fits"]["ivar"] > 0).mean() > 0.8
    for name, pattern in expected.items():
        assert pattern in items[name]["reason"], (name, items[name]["reason"])
        assert name in items[name]["reason"] and str(directory) not in items[name]["reason"]
    assert source.ids()[0] == "decreasing"
    assert LamostSpectra(str(directory / "ok_*"), id_from="header").ids() == ["1", "2", "3"]
    with pytest.raises(ValueError, match="unique"):  # truncated.fits and truncated.fits.gz
        ObservedDataModule(source, wavelength=list(grid)).remaining_indices()
    module = ObservedDataModule(LamostSpectra(str(directory / "ok_*")), 2, wavelength=list(grid))
    batch = next(iter(module.predict_dataloader()))
    assert batch["flux"].shape == (2, grid.size) and batch["id"] == [
        "ok_dr1-image",
        "ok_dr2-8-image",
    ]


def test_lamost_source_from_yaml_class_path(mixed_directory):
    """The predict config can name it: `source: {class_path: phdl.data.files.LamostSpectra, ...}`."""
    import json

    from jsonargparse import ArgumentParser

    from phdl.data.files import LamostSpectra
    from phdl.data.observed import SpectrumSource

    directory, _ = mixed_directory
    parser = ArgumentParser()
    parser.add_argument("--source", type=SpectrumSource)
    config = {
        "class_path": "phdl.data.files.LamostSpectra",
        "init_args": {"paths": str(directory / "ok_*"), "mask_policy": "or"},
    }
    source = parser.instantiate_classes(parser.parse_args(["--source", json.dumps(config)])).source
    assert isinstance(source, LamostSpectra) and len(source) == 3 and source.mask_policy == "or"


def test_scan_command_summarises_and_writes_rejects(mixed_directory, capsys):
    from phdl.data.files import main

    directory, expected = mixed_directory
    assert main([str(directory), "--rejects", str(directory / "out/rejects.csv")]) == 0
    printed = capsys.readouterr().out
    assert "dr9-table: 1" in printed and f"rejected: {len(expected)}" in printed
    assert len(read_rejects(directory / "out/rejects.csv")) == len(expected)
