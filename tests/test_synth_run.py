"""`phdl synth` (phdl.synth.run): writes a valid schema-v1 grid and resumes an interrupted run.

Uses the physics tests' stand-in inputs (grey atmosphere, ~40 lines near H-beta) over a 40 A
window, so a spectrum with its 30 gradient spectra costs well under a second.
"""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from phdl.grid import GridReader, completed_mask, read_grid_info
from phdl.labels import DEFAULT_LABELS
from phdl.synth import run

N_SPECTRA = 3


def _args(path) -> list[str]:
    return [
        str(path),
        "-n", str(N_SPECTRA),
        "--seed", "7",
        "--workers", "1",
        "--threads", "1",
        "--inputs", "test_synth_physics:standin_inputs",
        "--wavelength-range", "4880", "4920",
        "--fine-step", "0.04",
        "--quiet",
    ]  # fmt: skip


def _read(path) -> tuple[np.ndarray, np.ndarray]:
    info = read_grid_info(path)
    reader = GridReader(path)
    try:
        flux = np.stack([reader.flux(i) for i in range(info.n_spectra)])
        grads = np.stack([reader.gradients(i) for i in range(info.n_spectra)])
    finally:
        reader.close()
    return flux, grads


@pytest.fixture(autouse=True)
def restore_threads():
    """run.main sets torch's thread count for its in-process worker; put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def complete_grid(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "grid.h5"
    summary = run.main(_args(path))
    assert summary["computed"] == N_SPECTRA and summary["already_done"] == 0
    return path


def test_writes_a_valid_schema_v1_grid(complete_grid):
    info = read_grid_info(complete_grid)
    assert info.n_spectra == N_SPECTRA
    assert info.label_names == DEFAULT_LABELS
    assert info.gradient_names == DEFAULT_LABELS
    assert info.medium == "vacuum" and info.source == run.SOURCE
    assert 4880.0 <= info.wavelength[0] and info.wavelength[-1] <= 4920.0
    flux, grads = _read(complete_grid)
    assert flux.shape == (N_SPECTRA, info.n_pixels)
    assert grads.shape == (N_SPECTRA, len(DEFAULT_LABELS), info.n_pixels)
    assert np.all(np.isfinite(flux)) and np.all(np.isfinite(grads))
    assert np.all(flux <= 1.0 + 1e-6) and flux.min() < 0.95  # lines in the window
    assert completed_mask(complete_grid).all()
    # rerunning a finished build computes nothing
    again = run.main(_args(complete_grid))
    assert again["computed"] == 0 and again["already_done"] == N_SPECTRA


def test_interrupted_run_resumes_only_the_missing_spectra(tmp_path, monkeypatch, complete_grid):
    path = tmp_path / "grid.h5"
    compute = run._compute
    calls = []

    def crash_after_two(index, labels, gradients):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(index)
        return compute(index, labels, gradients)

    monkeypatch.setattr(run, "_compute", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run.main(_args(path))
    done = completed_mask(path)
    assert done.sum() == 2
    with h5py.File(path, "r") as f:  # read_grid_info refuses an incomplete grid, by design
        written_flux, written_grads = f["flux"][...], f["gradients"][...]
    assert np.all(np.isnan(written_flux[~done]))

    resumed = []
    monkeypatch.setattr(
        run, "_compute", lambda index, *a: resumed.append(index) or compute(index, *a)
    )
    summary = run.main(_args(path))
    assert summary["already_done"] == 2 and summary["computed"] == N_SPECTRA - 2
    assert sorted(resumed) == sorted(np.nonzero(~done)[0].tolist())
    flux, grads = _read(path)
    # spectra written before the interruption are untouched (bit for bit), and the whole grid
    # equals an uninterrupted build with the same seed (to float32 rounding: vectorised sums
    # may round differently in the last bit from one allocation to the next)
    np.testing.assert_array_equal(flux[done], written_flux[done])
    np.testing.assert_array_equal(grads[done], written_grads[done])
    full_flux, full_grads = _read(complete_grid)
    np.testing.assert_allclose(flux, full_flux, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads, full_grads, rtol=1e-5, atol=1e-7)


def _synth_process(path, n: int, workers: int, inputs: str = "test_synth_physics:standin_inputs"):
    """`python -m phdl synth` in a process of its own (the tests folder importable), with
    SIGINT's default action: a shell starts background jobs with SIGINT ignored, and Python then
    never turns it into KeyboardInterrupt."""
    import os
    import signal
    from pathlib import Path

    words = _args(path)
    words[words.index("-n") + 1] = str(n)
    words[words.index("--workers") + 1] = str(workers)
    words[words.index("--inputs") + 1] = inputs
    here = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "phdl", "synth", *words],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def test_two_workers_write_the_one_worker_grid(tmp_path, complete_grid):
    path = tmp_path / "grid.h5"
    process = _synth_process(path, N_SPECTRA, workers=2)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    flux, grads = _read(path)
    full_flux, full_grads = _read(complete_grid)
    np.testing.assert_allclose(flux, full_flux, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads, full_grads, rtol=1e-5, atol=1e-7)


def test_a_worker_that_cannot_start_ends_the_run_with_its_error(tmp_path):
    # a Pool replaces a worker whose initializer fails, forever: the error must end the run
    process = _synth_process(tmp_path / "grid.h5", N_SPECTRA, workers=2, inputs="no_such_module:x")
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0 and "no_such_module" in err


def test_ctrl_c_with_workers_stops_at_once_and_keeps_what_was_written(tmp_path):
    import signal
    import time

    path = tmp_path / "grid.h5"
    process = _synth_process(path, 2000, workers=2)
    try:
        time.sleep(12.0)  # labels written, workers started, some spectra done
        assert process.poll() is None, process.communicate()[1]
        sent = time.perf_counter()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()  # a hang must not outlive the test
    assert time.perf_counter() - sent < 30.0  # not after the 2000 spectra
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    done = completed_mask(path)
    assert 0 < done.sum() < 2000
    with h5py.File(path, "r") as f:
        flux = f["flux"][...]
    assert np.isfinite(flux[done]).all() and np.isnan(flux[~done]).all()


def test_compile_auto_only_where_it_pays_back():
    from phdl.data.lamost import lamost_wavelength

    args = run.build_parser().parse_args(["x.h5"])
    full, demo = lamost_wavelength(3700.0, 9100.0), lamost_wavelength(5000.0, 5400.0)
    assert run.compile_pays("auto", full, 1800.0, args, per_worker=100)
    assert not run.compile_pays("auto", full, 1800.0, args, per_worker=10)
    assert not run.compile_pays("auto", demo, 1800.0, args, per_worker=160)  # the demo
    assert run.compile_pays("on", demo, 1800.0, args, per_worker=1)
    assert not run.compile_pays("off", full, 1800.0, args, per_worker=10**6)
