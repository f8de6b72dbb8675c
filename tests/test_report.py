"""The accuracy report: exact emulator gives zero errors, a wrong one is caught, files are written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_toy_grid
from torch import nn

from phdl.labels import DEFAULT_RANGES, LabelScaling
from phdl.models.base import SpectrumEmulator
from phdl.report import evaluate, gradient_error_table, summarise, write_report


class ToyNetwork(nn.Module):
    """The toy grid's analytic flux as a network of scaled labels (exact derivatives)."""

    def __init__(
        self, profile: np.ndarray, owner: np.ndarray, n_labels: int, depth_slope: float = 0.3
    ):
        super().__init__()
        self.register_buffer("profile", torch.tensor(profile, dtype=torch.float32))
        onehot = np.zeros((n_labels, len(owner)), dtype=np.float32)
        onehot[owner, np.arange(len(owner))] = 1.0
        self.register_buffer("onehot", torch.tensor(onehot))
        self.depth_slope = depth_slope

    def forward(self, scaled):
        depth = 0.2 + self.depth_slope * ((scaled + 0.5) @ self.onehot)
        return 1.0 - depth @ self.profile


def toy_emulator(depth_slope=0.3):
    wavelength, names, *_ = make_toy_grid()
    centres = np.linspace(5005.0, 5095.0, 2 * len(names))
    profile = np.exp(-0.5 * ((wavelength[None, :] - centres[:, None]) / 0.6) ** 2)
    owner = np.repeat(np.arange(len(names)), 2)
    scaling = LabelScaling(
        tuple(names),
        tuple(DEFAULT_RANGES[n][0] for n in names),
        tuple(DEFAULT_RANGES[n][1] for n in names),
    )
    return SpectrumEmulator(
        ToyNetwork(profile, owner, len(names), depth_slope), scaling, wavelength
    )


def test_exact_emulator_has_no_error(toy_grid):
    summary = summarise(evaluate(toy_emulator(), toy_grid, batch_size=16))
    assert summary["flux_mae"] < 1e-6
    for name, entry in summary["gradient_relative_error"].items():
        assert entry["median_relative_error"] < 1e-5, name


def test_wrong_gradients_are_measured(toy_grid):
    summary = summarise(evaluate(toy_emulator(depth_slope=0.33), toy_grid))
    for entry in summary["gradient_relative_error"].values():
        assert entry["median_relative_error"] == pytest.approx(0.1, rel=1e-3)
    assert summary["flux_mae"] > 1e-3


def test_report_files_and_table(toy_grid, tmp_path):
    summary = write_report(
        toy_emulator(0.31),
        toy_grid,
        tmp_path / "report",
        indices=range(10, 30),
        labels=["teff", "mg_fe"],
        window=(5000, 5050),
    )
    for name in ("residuals.png", "gradient_spectra.png", "gradient_errors.png", "summary.json"):
        assert (tmp_path / "report" / name).stat().st_size > 1000 or name == "summary.json"
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["n_spectra"] == 20
    table = gradient_error_table({"a": summary, "b": summary})
    assert "| [Mg/Fe] | 0.033 | 0.033 |" in table
    with pytest.raises(ValueError, match="no gradient spectra for"):
        write_report(toy_emulator(), toy_grid, tmp_path / "r2", labels=["eu_fe"])


def test_report_command_uses_the_checkpoints_test_split(toy_grid, tmp_path, monkeypatch):
    from pathlib import Path

    from phdl.cli import main
    from phdl.report import split_of_checkpoint

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "fit_demo.yaml"
    main([
        "fit", "--config", str(config), "--data.init_args.path", str(toy_grid),
        "--trainer.logger", str(config.parent / "logger/csv.yaml"), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    checkpoint = tmp_path / "runs/demo/checkpoints/best.ckpt"
    grid, test = split_of_checkpoint(checkpoint, "test")
    _, train = split_of_checkpoint(checkpoint, "train")
    assert grid == str(toy_grid) and len(test) == 7 and not set(test) & set(train)
    summary = main([
        "report", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "report"),
        "--labels", "teff", "ca_fe", "--window", "5000", "5060",
    ])  # fmt: skip
    assert summary["n_spectra"] == 7
    assert set(summary["gradient_relative_error"]) == {"teff", "logg", "fe_h", "mg_fe", "ca_fe"}
    assert (tmp_path / "report/gradient_spectra.png").exists()
    with pytest.raises(SystemExit):
        main(["report", "--checkpoint", str(checkpoint), "--output", "x", "--split", "nope"])
