"""`phdl fit` through the real CLI in-process, on the demo config users see (tiny toy grid)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from phdl.cli import main
from phdl.emulator import EmulatorModule, load_emulator

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAST = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """Run inside tmp_path (configs write to relative runs/...) with wandb's env restored after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield tmp_path
    import wandb

    wandb.finish()


def fit(grid, *extra: str):
    """`phdl fit --config configs/fit_demo.yaml` on `grid` with extra overrides."""
    args = ["fit", "--config", str(CONFIGS / "fit_demo.yaml"), "--data.init_args.path", str(grid)]
    return main(args + FAST + list(extra))


def test_fit_demo_fast_dev_run(toy_grid, run_dir):
    cli = fit(toy_grid, "--trainer.fast_dev_run", "true")
    module = cli.model
    assert isinstance(module, EmulatorModule)
    assert module.label_scaling == cli.datamodule.label_scaling  # linked from the datamodule
    assert module.hparams.wavelength == [float(w) for w in cli.datamodule.wavelength]
    assert module.hparams.gradient_names == list(cli.datamodule.gradient_names)
    assert cli.trainer.global_step == 1


def test_fit_writes_wandb_offline_checkpoints_and_resumes(toy_grid, run_dir):
    short = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    fit(toy_grid, "--trainer.max_epochs", "1", *short)
    assert list((run_dir / "runs/demo/wandb").glob("offline-run-*"))  # wandb is the default logger
    last = run_dir / "runs/demo/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2

    cli = fit(toy_grid, "--trainer.max_epochs", "2", "--ckpt_path", "last", *short)
    assert cli.trainer.global_step == 4  # continued from step 2, not restarted
    assert torch.load(last, weights_only=True)["global_step"] == 4
    emulator = load_emulator(last)
    assert emulator.label_names == ("teff", "logg", "fe_h", "mg_fe", "ca_fe")
    assert emulator.flux(torch.tensor([[5500.0, 4.0, 0.0, 0.1, 0.0]])).shape == (1, 96)


def test_fit_mlp_with_csv_logger_logs_named_parts(toy_grid, run_dir):
    fit(
        toy_grid,
        "--trainer.logger", str(CONFIGS / "logger/csv.yaml"),
        "--model.init_args.model", "mlp",
        "--model.init_args.mlp_hidden", "32",
        "--trainer.max_steps", "2",
        "--trainer.log_every_n_steps", "1",
        "--trainer.limit_val_batches", "1",
        "--model.init_args.gradient_start_step", "0",  # the demo config starts it at step 100
    )  # fmt: skip
    (metrics,) = (run_dir / "runs/csv").glob("version_*/metrics.csv")
    columns = next(csv.reader(metrics.open()))
    for name in ("train/loss", "train/loss_flux", "train/loss_gradient", "val/flux_mae",
                 "val/flux_rmse", "val/gradient_rel_error/mg_fe", "val/gradient_rel_error/teff"):  # fmt: skip
        assert name in columns
