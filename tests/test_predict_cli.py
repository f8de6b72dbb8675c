"""`phdl predict` end to end: single device in-process, DDP and a hard kill in subprocesses.

DDP relaunches sys.argv per rank, so it only ever runs as `python -m phdl predict` in a
subprocess (DESIGN section 7). The crash is `os._exit` from a callback after batch k: no
teardown, no merge, exactly what a killed job leaves behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from fit_toy import observe, random_labels, write_mlp_checkpoint

from phdl.cli import main
from phdl.data.observed import write_observed_hdf5
from phdl.data.spectrum import ObservedSpectrum
from phdl.emulator import load_emulator
from phdl.fit.fitter import FLAG_BITS
from phdl.fit.writer import read_table

REPO = Path(__file__).resolve().parents[1]
N_SPECTRA = 14
BATCH = 3

CRASH = textwrap.dedent(
    '''
    """Test callback: the process dies (no teardown) after batch `after` was written."""
    import os

    from lightning.pytorch import Callback


    class CrashAfter(Callback):
        def __init__(self, after: int) -> None:
            self.after = after

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl_idx=0):
            if batch_idx == self.after:
                os._exit(3)
    '''
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A checkpoint, and an HDF5 file of emulator-made spectra with three malformed ones."""
    root = tmp_path_factory.mktemp("predict")
    checkpoint = root / "emulator.ckpt"
    write_mlp_checkpoint(checkpoint)
    emulator = load_emulator(checkpoint)
    labels = random_labels(emulator, N_SPECTRA, seed=11)
    flux, ivar = observe(emulator, labels, snr=150.0, rv=np.linspace(-60.0, 60.0, N_SPECTRA))
    wavelength = emulator.wavelength
    spectra = [
        ObservedSpectrum(f"star{i:03d}", wavelength, flux[i], ivar[i]) for i in range(N_SPECTRA)
    ]
    spectra[4] = ObservedSpectrum("star004", wavelength, np.full_like(flux[4], np.nan), ivar[4])
    spectra[7] = ObservedSpectrum("star007", wavelength, flux[7], np.zeros_like(ivar[7]))
    spectra[9] = ObservedSpectrum("star009", wavelength + 3000.0, flux[9], ivar[9])
    observed = root / "observed.h5"
    write_observed_hdf5(observed, spectra)
    return {"root": root, "checkpoint": checkpoint, "observed": observed, "labels": labels}


def _arguments(inputs, output: Path) -> list[str]:
    return [
        "predict",
        "--config", str(REPO / "configs/predict_demo.yaml"),
        "--model.init_args.checkpoint", str(inputs["checkpoint"]),
        "--model.init_args.rv_bounds", "[-200, 200]",
        "--data.init_args.source.init_args.path", str(inputs["observed"]),
        "--data.init_args.batch_size", str(BATCH),
        "--trainer.callbacks.output", str(output),
        "--trainer.default_root_dir", str(output.parent),
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


def _subprocess(arguments: list[str], cwd: Path, extra_path: Path | None = None):
    paths = [str(p) for p in (extra_path, REPO, REPO / "tests") if p is not None]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
    }
    return subprocess.run(
        [sys.executable, "-m", "phdl", *arguments], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def single(inputs):
    """The catalogue of a single-device in-process run (the reference for the others)."""
    output = inputs["root"] / "single.fits"
    main(_arguments(inputs, output))
    return output


def _assert_same_rows(table, reference, tolerance: float = 1e-3):
    assert list(table["id"]) == list(reference["id"])
    assert list(table["flag"]) == list(reference["flag"])
    for name in ("teff", "logg", "fe_h", "mg_fe", "rv"):
        difference = np.abs(np.asarray(table[name]) - np.asarray(reference[name]))
        scale = np.asarray(reference[f"{name}_err"])
        fitted = np.isfinite(scale)
        assert np.all(difference[fitted] <= tolerance * scale[fitted]), name


def test_single_device_predict_writes_one_flagged_row_per_spectrum(single, inputs):
    table = read_table(str(single))
    assert len(table) == N_SPECTRA and len(set(table["id"])) == N_SPECTRA
    assert list(table["index"]) == list(range(N_SPECTRA))
    assert not Path(str(single) + ".parts").exists()
    bad = {4: "no usable pixel", 7: "no usable pixel", 9: "usable pixels on the model grid"}
    for row, reason in bad.items():
        assert table["flag"][row] == FLAG_BITS["BAD_INPUT"] and reason in table["flag_reason"][row]
        assert np.isnan(table["teff"][row])
    good = [i for i in range(N_SPECTRA) if i not in bad]
    assert np.all(table["converged"][good]) and np.all(np.abs(table["chi2_red"][good] - 1) < 0.3)
    pulls = (table["fe_h"][good] - inputs["labels"][good, 3]) / table["fe_h_err"][good]
    assert np.all(np.abs(pulls) < 5.0)
    header = fits.getheader(single, 1)
    units = {header[f"TTYPE{i}"]: header.get(f"TUNIT{i}") for i in range(1, header["TFIELDS"] + 1)}
    assert units["teff"] == "K" and units["fe_h_err"] == "dex" and units["rv"] == "km s-1"
    assert header["FLAG1"] == "BAD_INPUT" and header["NLABELS"] == 8
    fitted = [c[: -len("_err")] for c in table.colnames if c.endswith("_err")]
    assert len(fitted) == 9 and all(f"{name}_flag" in table.colnames for name in fitted)
    assert header["FLAG16"] == "PRIOR_DOMINATED"
    rejects = read_table(str(single).replace(".fits", "_rejects.csv"))
    assert list(rejects["index"]) == sorted(bad)
    assert all(bad[i] in reason for i, reason in zip(rejects["index"], rejects["reason"]))


def test_rerun_with_everything_done_changes_nothing(single, inputs):
    before = read_table(str(single))
    main(_arguments(inputs, single))
    after = read_table(str(single))
    assert len(after) == N_SPECTRA
    _assert_same_rows(after, before, tolerance=0.0)


@pytest.mark.ddp
def test_two_process_ddp_catalogue_agrees_row_by_row(single, inputs, tmp_path):
    output = tmp_path / "ddp.fits"
    arguments = _arguments(inputs, output) + ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    result = _subprocess(arguments, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert not Path(str(output) + ".parts").exists()
    _assert_same_rows(read_table(str(output)), read_table(str(single)))


def test_killed_run_resumes_to_the_same_catalogue(single, inputs, tmp_path):
    (tmp_path / "crash_after.py").write_text(CRASH)
    output = tmp_path / "resumed.fits"
    crash = ["--trainer.callbacks+=crash_after.CrashAfter", "--trainer.callbacks.after", "1"]
    result = _subprocess(_arguments(inputs, output) + crash, tmp_path, extra_path=tmp_path)
    assert result.returncode == 3, result.stderr[-4000:]
    assert not output.exists()
    parts = sorted(Path(str(output) + ".parts").glob("part-*.fits"))
    assert len(parts) == 2  # batches 0 and 1 were written before the kill
    main(_arguments(inputs, output))
    table = read_table(str(output))
    assert len(table) == N_SPECTRA and len(set(table["id"])) == N_SPECTRA
    _assert_same_rows(table, read_table(str(single)))


@pytest.mark.parametrize("suffix", [".fits", ".hdf5", ".ecsv", ".csv"])
def test_catalogue_formats_round_trip_with_units(tmp_path, suffix):
    from phdl.fit.writer import catalogue_table, write_table

    columns = {
        "id": np.array(["a", "bb"]), "index": np.array([0, 1]),
        "fe_h": np.array([0.1, np.nan]), "teff": np.array([5000.0, 6000.0]),
    }  # fmt: skip
    table = catalogue_table(columns, {"fe_h": "dex", "teff": "K"}, {"NLABELS": 2})
    path = str(tmp_path / f"catalogue{suffix}")
    write_table(table, path)
    back = read_table(path)
    assert list(back["id"]) == ["a", "bb"] and np.isnan(back["fe_h"][1])
    if suffix != ".csv":
        assert str(back["teff"].unit) == "K" and "dex" in str(back["fe_h"].unit)
    if suffix == ".csv":
        table["model_flux"] = np.zeros((2, 5))
        with pytest.raises(ValueError, match="vector columns"):
            write_table(table, path)
