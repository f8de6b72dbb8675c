"""The schema-v1 grid contract: round trip, lazy reads, every malformed case, difference import."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import make_toy_grid

from phdl.grid import (
    GridError,
    GridReader,
    completed_mask,
    create_grid,
    import_difference_grid,
    read_grid_info,
    write_grid,
    write_spectra,
)


def test_round_trip_keeps_everything(toy_grid):
    wavelength, names, labels, flux, gradients = make_toy_grid()
    info = read_grid_info(toy_grid)
    assert info.label_names == tuple(names)
    assert info.label_units[0] == "K"
    assert info.n_spectra == 64 and info.n_pixels == 96
    np.testing.assert_allclose(info.wavelength, wavelength)
    np.testing.assert_allclose(info.labels, labels)
    assert info.medium == "vacuum" and info.resolution == 1800.0
    reader = GridReader(toy_grid)
    np.testing.assert_allclose(reader.flux(7), flux[7])
    np.testing.assert_allclose(reader.gradients(7), gradients[7])
    np.testing.assert_array_equal(info.gradient_index, np.arange(len(names)))


def test_spectra_are_chunked_one_per_spectrum(toy_grid):
    with h5py.File(toy_grid) as f:
        assert f["flux"].chunks == (1, 96)
        assert f["gradients"].chunks[0] == 1


def test_reader_pickles_without_its_file_handle(toy_grid):
    import pickle

    reader = GridReader(toy_grid)
    reader.flux(0)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._file is None
    np.testing.assert_array_equal(clone.flux(3), reader.flux(3))


def _broken(tmp_path, toy_grid, edit):
    path = tmp_path / "broken.h5"
    path.write_bytes(toy_grid.read_bytes())
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _replace(f, name, data, **attrs):
    old_attrs = dict(f[name].attrs)
    del f[name]
    ds = f.create_dataset(name, data=data)
    for key, value in {**old_attrs, **attrs}.items():
        ds.attrs[key] = value


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.__delitem__("gradients"), "missing dataset"),
        (lambda f: _replace(f, "flux", np.ones((64, 95), np.float32)), "'flux' has shape"),
        (
            lambda f: _replace(f, "gradients", np.ones((64, 5, 90), np.float32)),
            "'gradients' has shape",
        ),
        (lambda f: _replace(f, "labels", np.ones((64, 4), np.float32)), "'labels' must have shape"),
        (lambda f: f["labels"].__setitem__((3, 1), np.nan), "'labels' contains 1 NaN/inf"),
        (lambda f: f["labels"].__setitem__((5, 0), np.inf), "first: spectrum 5, label 'teff'"),
        (lambda f: f["flux"].__setitem__((10, 4), np.nan), "'flux' contains 1 NaN/inf"),
        (lambda f: f["flux"].__setitem__((2, 4), np.inf), "first: spectrum 2, pixel 4"),
        (lambda f: f["gradients"].__setitem__((2, 0, 4), np.inf), "'gradients' contains inf"),
        (
            lambda f: _replace(
                f, "gradient_names", np.array(["teff", "eu_fe"], dtype=h5py.string_dtype())
            ),
            "not among the label names",
        ),
        (
            lambda f: _replace(
                f,
                "wavelength",
                np.r_[np.linspace(5000, 5100, 50), np.linspace(5090, 5200, 46)],
                medium="vacuum",
            ),
            "must increase strictly",
        ),
        (lambda f: f.attrs.__setitem__("schema_version", 7), "unknown schema version 7"),
        (lambda f: f.attrs.__delitem__("schema_version"), "'schema_version' is missing"),
        (lambda f: f["wavelength"].attrs.__setitem__("medium", "glass"), "'medium' must be one of"),
    ],
    ids=[
        "missing-dataset",
        "flux-shape",
        "gradient-shape",
        "label-shape",
        "nan-label",
        "inf-label",
        "nan-flux",
        "inf-flux",
        "inf-gradient",
        "unknown-gradient-name",
        "wavelength-order",
        "schema-version",
        "no-schema-version",
        "medium",
    ],
)
def test_malformed_grid_gives_clear_error(tmp_path, toy_grid, edit, message):
    path = _broken(tmp_path, toy_grid, edit)
    with pytest.raises(GridError, match=message) as err:
        read_grid_info(path)
    assert str(path) in str(err.value)


def test_nan_gradients_mean_not_computed_and_are_allowed(tmp_path, toy_grid):
    path = _broken(tmp_path, toy_grid, lambda f: f["gradients"].__setitem__((2, 1), np.nan))
    assert read_grid_info(path).n_spectra == 64


def test_empty_grid_is_refused(tmp_path):
    with pytest.raises(GridError, match="empty"):
        create_grid(
            tmp_path / "e.h5", np.linspace(5000, 5001, 3), ["teff"], np.zeros((0, 1)), ["teff"]
        )


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(GridError, match="no such grid file"):
        read_grid_info(tmp_path / "nope.h5")
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(GridError, match="not a readable HDF5 file"):
        read_grid_info(text)


def test_incomplete_grid_is_refused_and_resumable(tmp_path):
    wavelength, names, labels, flux, gradients = make_toy_grid(n_spectra=6)
    path = tmp_path / "partial.h5"
    create_grid(path, wavelength, names, labels, names)
    write_spectra(path, [0, 3], flux[[0, 3]], gradients[[0, 3]])
    assert completed_mask(path).tolist() == [True, False, False, True, False, False]
    with pytest.raises(GridError, match="incomplete: 2 of 6"):
        read_grid_info(path)
    write_spectra(path, [1, 2, 4, 5], flux[[1, 2, 4, 5]], gradients[[1, 2, 4, 5]])
    assert read_grid_info(path).n_spectra == 6
    np.testing.assert_allclose(GridReader(path).flux(4), flux[4])


def test_import_difference_grid_divides_by_the_step(tmp_path):
    wavelength, names, labels, flux, gradients = make_toy_grid(n_spectra=5)
    steps = {n: (50.0 if n == "teff" else 0.1) for n in names}
    differences = gradients * np.array([steps[n] for n in names], dtype=np.float32)[None, :, None]
    source = tmp_path / "differences.h5"
    write_grid(source, wavelength, names, labels, flux, names, differences)
    info = import_difference_grid(source, tmp_path / "imported.h5", delta=steps)
    np.testing.assert_allclose(
        GridReader(info.path).gradients(2), gradients[2], rtol=1e-5, atol=1e-7
    )
    # the step may also come from the file itself
    with h5py.File(source, "r+") as f:
        f["gradients"].attrs["delta"] = np.array([steps[n] for n in names])
    info = import_difference_grid(source, tmp_path / "imported2.h5")
    np.testing.assert_allclose(
        GridReader(info.path).gradients(4), gradients[4], rtol=1e-5, atol=1e-7
    )
    with pytest.raises(GridError, match="no difference step given"):
        import_difference_grid(source, tmp_path / "x.h5", delta={"teff": 1.0})
    with pytest.raises(GridError, match="in place"):
        import_difference_grid(source, source, delta=0.1)


def test_copy_completed_takes_the_finished_spectra_of_a_grid_being_built(tmp_path):
    from phdl.grid import completed_mask, copy_completed, create_grid, write_spectra

    wavelength, names, labels, flux, gradients = make_toy_grid(n_spectra=10)
    source = tmp_path / "building.h5"
    create_grid(source, wavelength, names, labels, names, resolution=1800.0, source="test",
                extra_attrs={"synth_seed": 3})  # fmt: skip
    done = np.array([0, 3, 4, 8])
    write_spectra(source, done, flux[done], gradients[done])
    with pytest.raises(GridError, match="incomplete: 4 of 10"):
        read_grid_info(source)
    info = copy_completed(source, tmp_path / "first.h5")
    assert info.n_spectra == 4 and info.attrs["synth_seed"] == 3
    np.testing.assert_array_equal(info.labels, labels[done])
    reader = GridReader(tmp_path / "first.h5")
    np.testing.assert_array_equal(reader.flux(2), flux[4])
    np.testing.assert_array_equal(reader.gradients(3), gradients[8])
    reader.close()
    assert completed_mask(tmp_path / "first.h5").all()
    with pytest.raises(GridError, match="onto itself"):
        copy_completed(source, source)
