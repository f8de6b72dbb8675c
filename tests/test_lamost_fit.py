"""End to end: mock LAMOST files of known labels -> LamostSpectra -> ObservedDataModule -> fitter."""

from __future__ import annotations

import numpy as np
import torch
from fit_toy import FEW_LABELS, ToyNetwork, random_labels

from phdl.data.files import LamostSpectra
from phdl.data.lamost import lamost_pixel_offset, lamost_wavelength
from phdl.data.mock import write_mock_lamost
from phdl.data.observed import ObservedDataModule
from phdl.fit.fitter import LabelFitter
from phdl.labels import DEFAULT_RANGES, LabelScaling
from phdl.models.base import SpectrumEmulator


def aligned_toy_emulator(resolution: float = 1800.0) -> SpectrumEmulator:
    """The fitter tests' analytic emulator, on LAMOST's own pixels from 4500 A (1200 pixels)."""
    wavelength = lamost_wavelength(4500.0)[:1200]
    assert lamost_pixel_offset(wavelength) == 0.0
    scaling = LabelScaling(
        FEW_LABELS,
        tuple(DEFAULT_RANGES[n][0] for n in FEW_LABELS),
        tuple(DEFAULT_RANGES[n][1] for n in FEW_LABELS),
    )
    network = ToyNetwork(FEW_LABELS, wavelength, resolution)
    emulator = SpectrumEmulator(network, scaling, wavelength, resolution=resolution)
    return emulator.eval().requires_grad_(False)


def test_mock_lamost_files_fit_back_to_their_labels(tmp_path):
    """Fits reach the input labels within their errors: emulator grid on LAMOST pixels and one
    continuum polynomial per spectrograph arm (the 5800 A dichroic breaks a single polynomial)."""
    emulator = aligned_toy_emulator()
    labels = random_labels(emulator, 4, seed=11)
    rv = np.array([-120.0, -15.0, 40.0, 210.0])
    with torch.no_grad():
        model = emulator.flux(torch.tensor(labels, dtype=torch.float32)).double().numpy()
    layouts = ("dr2-8-image", "dr9-table", "dr1-image", "dr2-8-image")
    for k, layout in enumerate(layouts):
        write_mock_lamost(
            tmp_path / f"star{k}.fits.gz", emulator.wavelength, model[k], snr=150,
            rv_kms=rv[k], layout=layout, seed=k, obsid=100 + k,
        )  # fmt: skip
    (tmp_path / "star9.fits").write_text("not a spectrum")

    source = LamostSpectra(str(tmp_path))
    module = ObservedDataModule(source, batch_size=8, wavelength=list(emulator.wavelength))
    batch = next(iter(module.predict_dataloader()))
    assert batch["id"][:4] == [f"star{k}" for k in range(4)]
    assert "not a readable FITS" in batch["reason"][4]
    fitter = LabelFitter.from_emulator(emulator, continuum_segments=[5800.0])
    result = fitter.fit(
        batch["flux"], batch["ivar"], batch["id"], batch["index"], batch["reason"], batch["snr"]
    )
    assert np.all(result["flag"][:4] == 0) and result["flag"][4] != 0
    for k, name in enumerate(FEW_LABELS):
        pull = (result[name][:4] - labels[:, k]) / result[f"{name}_err"][:4]
        assert np.all(np.abs(pull) < 4.0), (name, pull)
    np.testing.assert_allclose(result["rv"][:4], rv, atol=3.0)
