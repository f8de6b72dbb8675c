"""Test doubles for the fitter: analytic emulators and their checkpoints (no training needed).

`toy_emulator` is phdl.data.toy's line-list physics written in torch: flux = exp(-sum_j tau_j
profile_j) with tau_j = a_j exp(c_j . s), s the labels scaled to [0, 1]. It is a SpectrumEmulator
like a trained one (the fitter only depends on that contract), with exact derivatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from phdl.data.toy import toy_line_list
from phdl.labels import DEFAULT_RANGES, LabelScaling
from phdl.models.base import SpectrumEmulator

FEW_LABELS = ("teff", "logg", "vmic", "fe_h", "mg_fe", "ca_fe", "ti_fe", "si_fe")


class ToyNetwork(nn.Module):
    """Scaled labels (B, L) in [-0.5, 0.5] -> toy line-list flux (B, P)."""

    def __init__(self, label_names: Sequence[str], wavelength: np.ndarray, resolution: float):
        super().__init__()
        lines = toy_line_list(label_names, wavelength, seed=0)
        sigma = lines.centre / (2.3548 * resolution)
        profile = np.exp(-0.5 * ((wavelength[None] - lines.centre[:, None]) / sigma[:, None]) ** 2)
        self.register_buffer("profile", torch.tensor(profile, dtype=torch.float32))
        self.register_buffer("strength", torch.tensor(lines.strength, dtype=torch.float32))
        self.register_buffer("response", torch.tensor(lines.response, dtype=torch.float32))

    def forward(self, scaled: torch.Tensor) -> torch.Tensor:
        tau = self.strength * torch.exp((scaled + 0.5) @ self.response.T)
        return torch.exp(-tau @ self.profile)


def toy_emulator(
    label_names: Sequence[str] = FEW_LABELS, n_pixels: int = 1200, resolution: float = 1800.0
) -> SpectrumEmulator:
    """A frozen analytic SpectrumEmulator on a LAMOST-like log-linear grid from 4500 A."""
    wavelength = 10 ** (np.log10(4500.0) + 1e-4 * np.arange(n_pixels))
    names = tuple(label_names)
    scaling = LabelScaling(
        names,
        tuple(DEFAULT_RANGES[n][0] for n in names),
        tuple(DEFAULT_RANGES[n][1] for n in names),
    )
    emulator = SpectrumEmulator(ToyNetwork(names, wavelength, resolution), scaling, wavelength,
                                resolution=resolution)  # fmt: skip
    return emulator.eval().requires_grad_(False)


def random_labels(emulator: SpectrumEmulator, n: int, seed: int = 0, inner: float = 0.35):
    """(n, L) physical labels drawn uniformly from the central part of the grid."""
    rng = np.random.default_rng(seed)
    scaled = rng.uniform(-inner, inner, (n, len(emulator.label_names)))
    return emulator.unscale(torch.tensor(scaled, dtype=torch.float32)).numpy().astype(np.float64)


def observe(
    emulator: SpectrumEmulator,
    labels: np.ndarray,
    snr: float = 100.0,
    rv: np.ndarray | None = None,
    seed: int = 0,
    continuum: bool = True,
):
    """Noisy spectra (flux, ivar) (n, P) made by the emulator, shifted and times a continuum."""
    from phdl.fit.doppler import DopplerShift

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        flux = emulator.flux(torch.tensor(labels, dtype=torch.float32)).double()
    if rv is not None:
        flux = DopplerShift(emulator.wavelength)(flux, torch.as_tensor(rv, dtype=torch.float64))
    flux = flux.numpy()
    if continuum:
        x = np.linspace(-1, 1, flux.shape[1])
        flux = flux * (100.0 * (1.0 + 0.1 * x - 0.05 * x**2))[None]
    sigma = np.median(flux, axis=1, keepdims=True) / snr
    noisy = flux + sigma * rng.standard_normal(flux.shape)
    return noisy, np.broadcast_to(1.0 / sigma**2, flux.shape).copy()


def write_mlp_checkpoint(
    path, label_names: Sequence[str] = FEW_LABELS, n_pixels: int = 400, seed: int = 0
) -> None:
    """An untrained Payne-MLP EmulatorModule checkpoint (what `phdl fit` writes, minus training).

    The fitter treats any checkpoint alike; spectra made with the same weights test the plumbing
    (CLI, DDP, resume) without a training run.
    """
    from phdl.emulator import network_from_hparams

    torch.manual_seed(seed)
    names = list(label_names)
    wavelength = 10 ** (np.log10(5000.0) + 1e-4 * np.arange(n_pixels))
    hparams = {
        "label_scaling": {
            "names": names,
            "minimum": [float(DEFAULT_RANGES[n][0]) for n in names],
            "maximum": [float(DEFAULT_RANGES[n][1]) for n in names],
        },
        "wavelength": [float(w) for w in wavelength],
        "medium": "vacuum",
        "resolution": 1800.0,
        "model": "mlp",
        "mlp_hidden": 32,
        "mlp_layers": 2,
    }
    network = network_from_hparams(hparams)
    state = {f"network.{key}": value for key, value in network.state_dict().items()}
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)
