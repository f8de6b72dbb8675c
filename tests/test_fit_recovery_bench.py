"""bench/fit_recovery.py's Cramer-Rao bound: right for labels the window hardly constrains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from benches import load_bench

from phdl.emulator import load_emulator
from phdl.fit.fitter import LabelFitter

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "phdl-demo.ckpt"


@pytest.mark.skipif(not CHECKPOINT.exists(), reason=f"no {CHECKPOINT}")
def test_cramer_rao_scales_with_gradient_size_even_for_lineless_labels():
    """Shrinking one label's gradient spectra by 1e-8 raises its bound by 1e8 and leaves the
    others alone (a plain pseudo-inverse reported ~0 for such labels)."""
    fit_recovery = load_bench("fit_recovery")
    emulator = load_emulator(CHECKPOINT)
    model = LabelFitter.from_emulator(emulator).spectrum_model
    n_labels, n_pixels = len(emulator.label_names), emulator.wavelength.size
    scaled = torch.zeros(2, n_labels)
    with torch.no_grad():
        flux = emulator.network(scaled).double().numpy()
    rng = np.random.default_rng(1)
    gradients = np.full((2, n_labels, n_pixels), np.nan)
    gradients[:, :4] = 0.05 * rng.standard_normal((2, 4, n_pixels))
    ivar = np.full_like(flux, 1e4)
    continuum = np.ones_like(flux)

    reference = fit_recovery.cramer_rao(model, flux, gradients, ivar, continuum)
    weak = gradients.copy()
    weak[:, 3] *= 1e-8
    bound = fit_recovery.cramer_rao(model, flux, weak, ivar, continuum)

    assert np.all(np.isnan(bound[:, 4:]))  # no gradient spectra: no bound
    np.testing.assert_allclose(bound[:, :3], reference[:, :3], rtol=1e-6)
    np.testing.assert_allclose(bound[:, 3], 1e8 * reference[:, 3], rtol=1e-4)
