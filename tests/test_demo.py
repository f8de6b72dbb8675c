"""`phdl demo --quick`: the whole method end to end, as the README's first command runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phdl.cli import main
from phdl.labels import DEFAULT_LABELS


@pytest.fixture
def quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    import wandb

    wandb.finish()


def test_quick_demo_runs_end_to_end_and_resumes(tmp_path, quiet_wandb, capsys):
    out = tmp_path / "demo"
    summary = main(["demo", "--quick", "--output", str(out), "--workers", "2"])
    printed = capsys.readouterr().out
    assert "phdl demo finished" in printed and "index.md" in printed
    for name in ("index.md", "label_recovery.png", "summary.json", "grid.h5",
                 "catalogue_prior.fits", "catalogue_plain.fits",
                 "report_prior/residuals.png", "report_plain/gradient_spectra.png"):  # fmt: skip
        assert (out / name).exists(), name
    assert json.loads((out / "summary.json").read_text())["quick"] is True
    index = (out / "index.md").read_text()
    assert "label_recovery.png" in index and "report_prior/residuals.png" in index
    for emulator in ("prior", "plain"):
        recovery = summary["recovery"][emulator]
        assert recovery["n_spectra"] == 6
        assert set(recovery["labels"]) == set(DEFAULT_LABELS)
        assert all(np.isfinite(v["dispersion"]) for v in recovery["labels"].values())
        # the fitter ran with the demo's label prior: every label says how often it was held
        assert all(0 <= v["prior_dominated"] <= 1 for v in recovery["labels"].values())
    for stats in summary["recovery"]["prior"]["labels"].values():
        assert np.isfinite(stats["minus_plain"]) and stats["minus_plain_sigma"] >= 0
        assert summary["reports"][emulator]["flux_mae"] < 0.2
    assert "paired bootstrap" in index and "prior-held" in index
    # a second run finds every step done and only recomputes the summary
    again = main(["demo", "--quick", "--output", str(out), "--workers", "2"])
    assert again["recovery"] == summary["recovery"]


def test_interrupted_training_is_redone_not_taken_as_finished(tmp_path, monkeypatch):
    """best.ckpt exists from the first validation on; only done.json marks a finished run."""
    import phdl.cli
    import phdl.demo as demo

    calls = []

    def fake_fit(argv):
        calls.append(argv)
        checkpoint = tmp_path / "emulators" / "prior" / "checkpoints" / "best.ckpt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_bytes(b"weights")

    monkeypatch.setattr(phdl.cli, "main", fake_fit)
    stale = tmp_path / "emulators" / "prior" / "checkpoints" / "best.ckpt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"best epoch of an interrupted run")
    (stale.parent / "last.ckpt").write_bytes(b"")
    checkpoint = demo.train(tmp_path, tmp_path / "grid.h5", "prior", 0.5, demo.QUICK)
    assert len(calls) == 1 and calls[0][0] == "fit"
    assert checkpoint.read_bytes() == b"weights"
    assert not (stale.parent / "last.ckpt").exists()  # the old run was cleared
    assert (
        json.loads((tmp_path / "emulators" / "prior" / "done.json").read_text())["train_steps"]
        == demo.QUICK.train_steps
    )
    demo.train(tmp_path, tmp_path / "grid.h5", "prior", 0.5, demo.QUICK)
    assert len(calls) == 1  # finished: not trained again
