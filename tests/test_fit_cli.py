"""`phdl fit` through the real CLI in-process, on the demo config users see (tiny toy grid)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

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


def test_fit_writes_wandb_offline_checkpoints_and_resumes_from_the_latest_step(toy_grid, run_dir):
    """best.ckpt holds the best validation, last.ckpt the latest state, and `--ckpt_path last`
    continues from the latest state, not from the best epoch (steps after it are not redone)."""
    config = yaml.safe_load((CONFIGS / "fit_demo.yaml").read_text())
    latest = config["trainer"]["callbacks"][1]["init_args"]
    assert latest["save_last"] and latest.get("monitor") is None
    latest["every_n_train_steps"] = 2  # the config's 100, scaled to this 6-step run
    (run_dir / "fit.yaml").write_text(yaml.safe_dump(config))
    short = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
             "--trainer.check_val_every_n_epoch", "2"]  # fmt: skip

    def run(*extra):
        config_args = [
            "--config",
            str(run_dir / "fit.yaml"),
            "--data.init_args.path",
            str(toy_grid),
        ]
        return main(["fit", *config_args, *FAST, *short, *extra])

    run("--trainer.max_epochs", "3")  # validation after epoch 2 only
    assert list((run_dir / "runs/demo/wandb").glob("offline-run-*"))  # wandb is the default logger
    best = run_dir / "runs/demo/checkpoints/best.ckpt"
    last = run_dir / "runs/demo/checkpoints/last.ckpt"
    assert torch.load(best, weights_only=True)["global_step"] == 4
    assert torch.load(last, weights_only=True)["global_step"] == 6

    cli = run("--trainer.max_epochs", "4", "--ckpt_path", "last")
    assert Path(cli.trainer.ckpt_path).name == "last.ckpt"  # resumed from step 6, not 4
    assert cli.trainer.global_step == 8
    assert torch.load(last, weights_only=True)["global_step"] == 8
    emulator = load_emulator(best)
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


def test_ctrl_c_ends_with_one_line_and_status_130(monkeypatch, capsys):
    import phdl.cli

    def interrupted(args=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(phdl.cli, "main", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        phdl.cli.console()
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
