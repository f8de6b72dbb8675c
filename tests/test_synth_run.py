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


def test_compile_auto_only_where_it_pays_back():
    from phdl.data.lamost import lamost_wavelength

    args = run.build_parser().parse_args(["x.h5"])
    full, demo = lamost_wavelength(3700.0, 9100.0), lamost_wavelength(5000.0, 5400.0)
    assert run.compile_pays("auto", full, 1800.0, args, per_worker=100)
    assert not run.compile_pays("auto", full, 1800.0, args, per_worker=10)
    assert not run.compile_pays("auto", demo, 1800.0, args, per_worker=160)  # the demo
    assert run.compile_pays("on", demo, 1800.0, args, per_worker=1)
    assert not run.compile_pays("off", full, 1800.0, args, per_worker=10**6)


_RSS_AFTER_FREE = """
import os, sys, torch
from phdl.malloc import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
x = torch.ones(64 << 20, dtype=torch.float32)  # 256 MiB, every page touched
del x
pages = int(open("/proc/self/statm").read().split()[1])
print(kept, pages * os.sysconf("SC_PAGE_SIZE") >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_keep_freed_memory_keeps_a_freed_tensor_for_reuse():
    """With glibc's default a freed 256 MiB tensor goes back to the kernel (the next one is
    page-faulted anew); after keep_freed_memory() it stays resident for reuse."""
    rss = {}
    for mode in ("default", "keep"):
        out = subprocess.run(
            [sys.executable, "-c", _RSS_AFTER_FREE, mode], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        kept, rss[mode] = out.stdout.split()
        rss[mode] = int(rss[mode])
    assert kept == "True"
    assert rss["keep"] - rss["default"] > 200, rss  # MiB
