"""Two-process DDP training (gloo on CPU) through the real `python -m phdl fit`.

DDP relaunches sys.argv for each extra rank, so it runs in a subprocess, never in pytest's own
process (DESIGN section 7). A callback records the spectra each rank trained on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from phdl.data.grid import GridDataModule
from phdl.emulator import load_emulator

REPO = Path(__file__).resolve().parents[1]

RECORDER = textwrap.dedent(
    '''
    """Test callback: which grid spectra each DDP rank trained on."""
    import json
    from pathlib import Path

    from lightning.pytorch import Callback


    class RecordIndices(Callback):
        def __init__(self, directory: str) -> None:
            self.directory = Path(directory)
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen += batch["index"].tolist()

        def on_train_end(self, trainer, pl_module):
            self.directory.mkdir(parents=True, exist_ok=True)
            out = self.directory / f"rank{trainer.global_rank}.json"
            out.write_text(json.dumps({"world_size": trainer.world_size, "indices": self.seen}))
    '''
)


@pytest.mark.ddp
def test_ddp_ranks_see_disjoint_spectra_and_checkpoint_loads(toy_grid, tmp_path):
    (tmp_path / "record_indices.py").write_text(RECORDER)
    seen_dir = tmp_path / "seen"
    args = [
        sys.executable, "-m", "phdl", "fit",
        "--config", str(REPO / "configs/fit_demo.yaml"),
        "--data.init_args.path", str(toy_grid),
        "--data.init_args.batch_size", "8",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "2",
        "--trainer.strategy", "ddp",
        "--trainer.max_epochs", "1",
        "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", str(REPO / "configs/logger/csv.yaml"),
        "--trainer.callbacks+=record_indices.RecordIndices",
        "--trainer.callbacks.directory", str(seen_dir),
        "--model.init_args.gradient_warmup_steps", "0",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-4000:]

    ranks = [json.loads((seen_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(rank["world_size"] == 2 for rank in ranks)
    first, second = (set(rank["indices"]) for rank in ranks)
    assert first and second
    assert not first & second, f"ranks shared spectra {sorted(first & second)}"
    train = set(GridDataModule(str(toy_grid)).train_indices.tolist())
    assert first | second == train  # one epoch: every training spectrum seen once

    emulator = load_emulator(tmp_path / "runs/demo/checkpoints/best.ckpt")
    flux = emulator.flux(torch.tensor([[5500.0, 4.0, 0.0, 0.1, 0.0]]))
    assert flux.shape == (1, 96) and torch.isfinite(flux).all()
