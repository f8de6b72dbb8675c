"""Transformer + gradient prior vs transformer (lambda = 0) vs Payne MLP, side by side, one run.

Each emulator trains on the same training split of one grid for the same budget, either the
same number of epochs (`--epochs`: robust on a shared machine) or the same wall-clock time on
this machine (`--budget` seconds), then is evaluated on the same held-out test split: flux MAE
and sigma, and the median relative error of its gradient spectra per label. The step-time
ratio (with prior / without) is measured in the same run by timing interleaved training steps
of one model.

    python bench/emulator_accuracy.py --grid grid.h5 --budget 300 --output bench/out/emulator

Everything printed is measured here; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from phdl.data.grid import GridDataModule
from phdl.emulator import EmulatorModule
from phdl.labels import is_abundance, pretty_label
from phdl.models.base import SpectrumEmulator
from phdl.report import evaluate, gradient_error_table, plot_gradient_errors, summarise


class StepTimer(Callback):
    """Wall time of every training step (forward, backward, optimiser)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)


MODELS = {
    "transformer+prior": {
        "model": "transformer",
        "gradient_weight": 0.5,
        "gradient_balance": "relative",
        "gradient_start_step": 100,  # as configs/: fluxes first, then lambda ramps up
        "gradient_warmup_steps": 200,
    },
    "transformer (lambda=0)": {"model": "transformer", "gradient_weight": 0.0},
    "Payne MLP": {"model": "mlp", "gradient_weight": 0.0},
}


def train(grid: str, settings: dict, args) -> tuple[EmulatorModule, GridDataModule, StepTimer]:
    """Train one emulator for `args.epochs` epochs (else `args.budget` seconds); returns it with
    its data and step times."""
    seed_everything(args.seed)
    data = GridDataModule(
        grid,
        batch_size=args.batch_size,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    if settings.get("gradient_weight", 0) > 0:
        settings = {
            **settings,
            "gradient_sampling": args.sampling,
            "gradient_normalise": args.normalise,
            "gradient_weight": args.gradient_weight,
        }
    module = EmulatorModule.from_datamodule(
        data,
        patch_size=args.patch_size,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=4,
        d_ff=4 * args.d_model,
        label_hidden=2 * args.d_model,
        gradient_directions=args.directions,
        gradient_spectra=args.gradient_spectra,
        lr=args.lr,
        warmup_steps=50,
        scheduler="constant" if args.constant_lr else "cosine",
        val_gradient_batches=0,
        **settings,
    )
    # The MLP's steps are ~10x cheaper; it may get more of them to reach its own best.
    epochs = args.mlp_epochs if settings["model"] == "mlp" and args.mlp_epochs else args.epochs
    timer = StepTimer()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_time=None if epochs else {"seconds": args.budget},
        max_epochs=epochs or -1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=args.progress,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    return module, data, timer


def step_time_ratio(grid: str, args, n_steps: int = 20) -> dict:
    """Mean step time with the gradient term / without, interleaved on one model and batch."""
    data = GridDataModule(grid, batch_size=args.batch_size, seed=args.seed)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    times = {True: [], False: []}
    module = EmulatorModule.from_datamodule(
        data,
        patch_size=args.patch_size,
        d_model=args.d_model,
        n_layers=args.n_layers,
        d_ff=4 * args.d_model,
        label_hidden=2 * args.d_model,
        gradient_weight=1.0,
        gradient_directions=args.directions,
        gradient_spectra=args.gradient_spectra,
    )
    optimiser = torch.optim.AdamW(module.parameters(), lr=1e-4)
    for step in range(2 * n_steps + 4):
        with_prior = step % 2 == 0
        module.hparams.gradient_weight = 1.0 if with_prior else 0.0
        start = time.perf_counter()
        loss = module.training_step(batch, step)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step >= 4:  # skip warm-up steps
            times[with_prior].append(time.perf_counter() - start)
    with_prior, without = np.median(times[True]), np.median(times[False])
    return {
        "step_seconds_with_prior": float(with_prior),
        "step_seconds_without_prior": float(without),
        "ratio": float(with_prior / without),
        "directions_per_spectrum": args.directions,
        "gradient_spectra_per_batch": args.gradient_spectra,
        "batch_size": args.batch_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--grid", required=True, help="schema-v1 grid with gradient spectra")
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per model")
    parser.add_argument(
        "--epochs", type=int, default=0,
        help="train every model for this many epochs instead of --budget seconds (a budget that "
        "does not depend on what else runs on the machine)",
    )  # fmt: skip
    parser.add_argument(
        "--mlp-epochs", type=int, default=0,
        help="epochs for the Payne MLP (default: --epochs): its steps are ~10x cheaper, and at "
        "equal training-set size the fair comparison is each model near its own best",
    )  # fmt: skip
    parser.add_argument("--output", default="bench/out/emulator_accuracy")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--directions", type=int, default=1)
    parser.add_argument(
        "--gradient-spectra", type=int, default=4, help="spectra per batch with derivatives"
    )
    parser.add_argument(
        "--sampling",
        default="dense",
        choices=["dense", "uniform", "error"],
        help="gradient directions of the prior model (EmulatorModule.gradient_sampling)",
    )
    parser.add_argument(
        "--normalise",
        default="spectrum",
        choices=["spectrum", "typical", "none"],
        help="what each label's gradient error is divided by (EmulatorModule.gradient_normalise)",
    )
    parser.add_argument(
        "--gradient-weight", type=float, default=0.5,
        help="lambda of the prior model (relative balance: lambda x the flux term)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--constant-lr", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--ratio-only", action="store_true", help="measure the step-time ratio only"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    ratio = step_time_ratio(args.grid, args)
    print(
        f"step time: {1e3 * ratio['step_seconds_with_prior']:.1f} ms with prior, "
        f"{1e3 * ratio['step_seconds_without_prior']:.1f} ms without: ratio {ratio['ratio']:.2f}"
    )
    if args.ratio_only:
        (out / "step_time.json").write_text(json.dumps(ratio, indent=2))
        return
    summaries, steps = {}, {}
    for name in args.models:
        start = time.perf_counter()
        module, data, timer = train(args.grid, MODELS[name], args)
        wall = time.perf_counter() - start
        emulator = SpectrumEmulator(
            module.network.eval(), data.label_scaling, data.wavelength, data.medium, data.resolution
        )
        summaries[name] = summarise(evaluate(emulator, args.grid, data.test_indices))
        steps[name] = {"steps": len(timer.times), "mean_step_seconds": float(np.mean(timer.times)),
                       "wall_seconds": wall}  # fmt: skip
        s = summaries[name]
        print(
            f"{name:24s} {steps[name]['steps']:6d} steps {wall:6.0f} s  test flux MAE {s['flux_mae']:.2e}  "
            f"robust sigma {s['flux_sigma_robust']:.2e}  RMSE {s['flux_rmse']:.2e}"
        )
    table = gradient_error_table(summaries)
    print("\nmedian relative gradient error on the test split\n" + table)
    plot_gradient_errors(summaries, out / "gradient_errors.png")

    verdict = {}
    if "transformer+prior" in summaries and "transformer (lambda=0)" in summaries:
        prior, plain = summaries["transformer+prior"], summaries["transformer (lambda=0)"]
        worse = [
            pretty_label(n)
            for n, e in prior["gradient_relative_error"].items()
            if is_abundance(n)
            and e["median_relative_error"] is not None
            and e["median_relative_error"]
            >= plain["gradient_relative_error"][n]["median_relative_error"]
        ]
        verdict["abundance_labels_not_improved_by_prior"] = worse
        verdict["flux_mae_ratio_prior_over_plain"] = prior["flux_mae"] / plain["flux_mae"]
    if "transformer (lambda=0)" in summaries and "Payne MLP" in summaries:
        verdict["flux_mae_ratio_transformer_over_mlp"] = (
            summaries["transformer (lambda=0)"]["flux_mae"] / summaries["Payne MLP"]["flux_mae"]
        )
    print("\n" + json.dumps(verdict, indent=2))
    result = {
        "grid": args.grid,
        "budget_seconds_per_model": args.budget,
        "settings": vars(args),
        "step_time": ratio,
        "training": steps,
        "summaries": summaries,
        "verdict": verdict,
        "torch_threads": torch.get_num_threads(),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "gradient_errors.md").write_text(table + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
