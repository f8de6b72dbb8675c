"""Shared fixtures: tiny generated grids and a clean environment for every test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from phdl.grid import write_grid
from phdl.labels import DEFAULT_RANGES

# Never prompt for wandb or reach the network from a test.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def seeded_random_state():
    """Every test starts from the same global torch/numpy random state, whatever ran before it
    (time-budgeted trainings in earlier tests draw a varying amount of random numbers)."""
    import torch

    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def no_files_left_in_the_repository(request):
    """Fail the test that wrote into the checkout (outputs belong in tmp_path): checked after
    every test, so the failure names the culprit rather than whichever test ran last."""
    before = set(os.listdir(REPOSITORY))
    yield
    left = sorted(set(os.listdir(REPOSITORY)) - before - {".pytest_cache"})
    assert not left, f"{request.node.nodeid} left files in the repository: {left}"


def make_toy_grid(
    n_spectra=64, n_pixels=96, label_names=("teff", "logg", "fe_h", "mg_fe", "ca_fe"), seed=0
):
    """A small analytic grid with exact gradient spectra: Gaussian absorption lines whose depths
    depend smoothly on the labels. Returns (labels, flux, gradients)."""
    rng = np.random.default_rng(seed)
    label_names = list(label_names)
    lo = np.array([DEFAULT_RANGES[n][0] for n in label_names])
    hi = np.array([DEFAULT_RANGES[n][1] for n in label_names])
    labels = lo + (hi - lo) * rng.random((n_spectra, len(label_names)))
    wavelength = np.linspace(5000.0, 5100.0, n_pixels)
    centres = np.linspace(5005.0, 5095.0, 2 * len(label_names))
    profile = np.exp(-0.5 * ((wavelength[None, :] - centres[:, None]) / 0.6) ** 2)  # (lines, P)
    s = (labels - lo) / (hi - lo)  # (N, L) in [0, 1]
    # each label drives two lines; depth d = 0.2 + 0.3 s  -> flux = 1 - sum d * profile
    owner = np.repeat(np.arange(len(label_names)), 2)
    depth = 0.2 + 0.3 * s[:, owner]  # (N, lines)
    flux = 1.0 - depth @ profile
    gradients = np.zeros((n_spectra, len(label_names), n_pixels))
    for j in range(len(label_names)):
        gradients[:, j, :] = -(0.3 / (hi[j] - lo[j])) * profile[owner == j].sum(axis=0)[None, :]
    return (
        wavelength,
        label_names,
        labels.astype(np.float32),
        flux.astype(np.float32),
        gradients.astype(np.float32),
    )


@pytest.fixture
def toy_grid(tmp_path):
    """Path of a 64-spectrum, 96-pixel schema-v1 grid with exact gradients."""
    path = tmp_path / "toy_grid.h5"
    wavelength, names, labels, flux, gradients = make_toy_grid()
    write_grid(
        path,
        wavelength,
        names,
        labels,
        flux,
        names,
        gradients,
        resolution=1800.0,
        source="phdl.tests.toy",
        normalisation="analytic",
    )
    return path
