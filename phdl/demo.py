"""`phdl demo`: the whole method end to end on the embedded ab initio source, in one folder.

1. synthesise a small grid with gradient spectra (`phdl synth`),
2. train the emulator with the gradient prior and, in the same run, the lambda = 0 transformer
   (`phdl fit`, the same YAML users start from),
3. report emulation accuracy of both on held-out spectra (`phdl report`),
4. write mock LAMOST FITS files of held-out stars (noise, RV, instrumental continuum, masks),
5. fit them with both emulators (`phdl predict`),
6. compare recovered with true labels (bias, dispersion, one-to-one figure) and write an index.

Every step is one of phdl's own commands, run in-process; a step whose outputs already exist is
skipped, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phdl.labels import DEFAULT_LABELS, is_abundance, label_unit, pretty_label

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

#: The two emulators compared: name -> gradient weight lambda.
EMULATORS = {"prior": 0.5, "plain": 0.0}

#: The fitter's Gaussian label prior for the mock stars, in dex. The demo grid draws every
#: [X/Fe] uniformly in +-0.4 dex (sigma 0.23), so N(0, 0.25) is the population's own spread: an
#: [X/Fe] the 400 A window cannot measure stays there (and is marked prior-dominated) instead
#: of wandering to the grid edge to absorb emulator errors.
LABEL_PRIOR = {"*_fe": [0.0, 0.25]}


@dataclass(frozen=True)
class DemoSize:
    """How much work each step does (the full demo and the --quick one)."""

    n_spectra: int
    wavelength_range: tuple[float, float]
    train_steps: int  # optimiser steps per emulator: the same results on any machine
    val_every_steps: int  # validation (with per-label gradient errors) every n steps; divides
    # train_steps, so that the last steps are validated too and best.ckpt can be the end
    n_mock: int
    snr: float
    d_model: int
    n_layers: int
    patch_size: int


FULL = DemoSize(
    # 320 spectra (224 training, 32 validation, 64 mock stars; synthesis ~4.5 min): with 160
    # (32 mock stars) the prior - plain dispersion differences were ~0.01 dex of noise and
    # [Ca/Fe] came out 3 sigma worse (2026-12-03)
    n_spectra=320,
    wavelength_range=(5000.0, 5400.0),
    # 1500 steps left the prior emulator at flux MAE 1.1e-2 and its weak-element fits no better
    # than the plain one's; at 4000 it reaches 6.8e-3 while the plain one overfits (1.2e-2)
    train_steps=4000,
    val_every_steps=200,
    n_mock=64,  # the whole test split (20% of 320)
    snr=100.0,
    d_model=64,
    n_layers=2,
    patch_size=32,
)
QUICK = DemoSize(
    n_spectra=32,
    wavelength_range=(5150.0, 5250.0),
    train_steps=120,
    val_every_steps=20,
    n_mock=6,
    snr=100.0,
    d_model=32,
    n_layers=1,
    patch_size=16,
)


def _config(name: str) -> str:
    path = CONFIGS / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: phdl demo runs from a clone of the repository (configs/ beside phdl/); "
            "install it with `pip install -e .`"
        )
    return str(path)


class Step:
    """Prints a numbered step with its wall time."""

    def __init__(self, number: int, total: int, title: str) -> None:
        self.label = f"[{number}/{total}] {title}"

    def __enter__(self):
        print(f"{self.label} ...", flush=True)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            print(f"{self.label}: done in {time.perf_counter() - self.start:.0f} s", flush=True)


def synthesise(out: Path, size: DemoSize, workers: int, seed: int) -> Path:
    """Grid of `size.n_spectra` ab initio spectra with all 30 gradient spectra (resumable)."""
    from phdl.cli import main

    grid = out / "grid.h5"
    lo, hi = size.wavelength_range
    main(
        [
            "synth",
            str(grid),
            "--n-spectra", str(size.n_spectra),
            "--wavelength-range", str(lo), str(hi),
            "--workers", str(workers),
            "--seed", str(seed),
            "--sampling", "lhs",
            "--prior", "stellar",
        ]
    )  # fmt: skip
    return grid


def _overlay(path: Path, settings: dict) -> str:
    """Write a YAML config that overrides parts of a shipped one (given after it on the CLI)."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return str(path)


def train(out: Path, grid: Path, name: str, weight: float, size: DemoSize) -> Path:
    """`phdl fit` with configs/fit_demo.yaml for `size.train_steps`; returns best.ckpt.

    best.ckpt (the best validation) exists long before training ends, so a run is complete only
    with its `done.json`; a run interrupted before that is trained again from step 0 (resuming
    from last.ckpt would draw other random derivative directions than an uninterrupted run, so
    the demo's numbers would depend on when it was interrupted).
    """
    import shutil

    from phdl.cli import main

    run = (out / "emulators" / name).resolve()
    checkpoint = run / "checkpoints" / "best.ckpt"
    done = run / "done.json"
    if done.exists() and checkpoint.exists():
        return checkpoint
    if run.exists():
        print(f"  the {name} emulator's training was interrupted: training it again from step 0")
        shutil.rmtree(run)
    overlay = {
        "trainer": {
            "max_epochs": -1,
            "max_steps": size.train_steps,
            "check_val_every_n_epoch": None,  # count validation steps across epochs
            "val_check_interval": size.val_every_steps,
            "default_root_dir": str(run),
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"project": "phdl", "name": f"demo-{name}", "save_dir": str(run),
                              "offline": True, "log_model": False},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(run / "checkpoints"), "filename": "best",
                                  "monitor": "val/flux_rmse", "mode": "min", "save_top_k": 1,
                                  "enable_version_counter": False},
                },
            ],
        },
        "model": {
            "init_args": {
                "gradient_weight": weight,
                # fluxes first, then lambda ramps up (configs/fit_demo.yaml: 100 and 200 steps)
                "gradient_start_step": size.train_steps // 15,
                "gradient_warmup_steps": 2 * (size.train_steps // 15),
                "d_model": size.d_model,
                "d_ff": 4 * size.d_model,
                "label_hidden": 2 * size.d_model,
                "n_layers": size.n_layers,
                "patch_size": size.patch_size,
            }
        },
        "data": {"init_args": {"path": str(grid.resolve()), "val_fraction": 0.1, "test_fraction": 0.2}},
    }  # fmt: skip
    main(
        [
            "fit",
            "--config",
            _config("fit_demo.yaml"),
            "--config",
            _overlay(run / "demo.yaml", overlay),
        ]
    )
    import wandb

    wandb.finish()
    if not checkpoint.exists():
        raise RuntimeError(f"{run}: phdl fit ended without writing {checkpoint}")
    done.write_text(json.dumps({"train_steps": size.train_steps, "checkpoint": str(checkpoint)}))
    return checkpoint


def report(out: Path, checkpoint: Path, name: str) -> dict:
    """`phdl report` on the checkpoint's own test split."""
    from phdl.cli import main

    return main(
        ["report", "--checkpoint", str(checkpoint), "--output", str(out / f"report_{name}"),
         "--labels", "teff", "mg_fe", "ca_fe", "mn_fe"]
    )  # fmt: skip


def write_mocks(out: Path, grid: Path, checkpoint: Path, size: DemoSize, seed: int) -> Path:
    """Mock LAMOST FITS files of held-out (test-split) stars and a CSV of their true labels."""
    from phdl.data.mock import write_mock_lamost
    from phdl.grid import GridReader, read_grid_info
    from phdl.report import split_of_checkpoint

    folder = out / "mock_lamost"
    truth_path = out / "mock_lamost_truth.csv"
    if truth_path.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    _, test = split_of_checkpoint(checkpoint, "test")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(test, size=min(size.n_mock, len(test)), replace=False))
    info = read_grid_info(grid, check_values=False)
    reader = GridReader(grid)
    rows = ["id,grid_index,rv_kms," + ",".join(info.label_names)]
    for k, index in enumerate(chosen):
        rv = float(rng.uniform(-150, 150))
        star = f"mock{k:04d}"
        write_mock_lamost(
            folder / f"{star}.fits.gz",
            info.wavelength,
            reader.flux(int(index)).astype(np.float64),
            snr=size.snr,
            rv_kms=rv,
            layout="dr2-8-image" if k % 2 == 0 else "dr9-table",
            seed=seed + k,
            obsid=100000 + k,
            overwrite=True,
        )
        rows.append(f"{star},{index},{rv:.3f}," + ",".join(f"{v:.6g}" for v in info.labels[index]))
    reader.close()
    truth_path.write_text("\n".join(rows) + "\n")
    return folder


#: LAMOST's dichroic: the blue and red arms join here, each with its own continuum shape [A].
DICHROIC = 5800.0


def predict(out: Path, checkpoint: Path, mocks: Path, name: str, size: DemoSize) -> Path:
    """`phdl predict` of the mock LAMOST files with one emulator; returns the catalogue."""
    from phdl.cli import main

    lo, hi = size.wavelength_range
    segments = [DICHROIC] if lo < DICHROIC < hi else None

    catalogue = (out / f"catalogue_{name}.fits").resolve()
    overlay = {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "phdl.fit.writer.CatalogueWriter",
                    "init_args": {"output": str(catalogue), "resume": True},
                }
            ]
        },
        "model": {
            "init_args": {
                "checkpoint": str(checkpoint.resolve()),
                "continuum_segments": segments,
                "label_prior": LABEL_PRIOR,
            }
        },
        "data": {
            "init_args": {
                "source": {
                    "class_path": "phdl.data.files.LamostSpectra",
                    "init_args": {"paths": str(mocks.resolve())},
                }
            }
        },
    }
    main(["predict", "--config", _config("predict_demo.yaml"),
          "--config", _overlay(out / f"predict_{name}.yaml", overlay)])  # fmt: skip
    return catalogue


def recovery(out: Path, catalogues: dict[str, Path]) -> dict:
    """Bias and dispersion of recovered - true labels per emulator, and the one-to-one figure."""
    from astropy.table import Table

    from phdl.fit.fitter import FLAG_BITS
    from phdl.fit.writer import read_table

    truth = Table.read(out / "mock_lamost_truth.csv", format="ascii.csv")
    result: dict[str, dict] = {}
    fitted: dict[str, Table] = {}
    for name, path in catalogues.items():
        catalogue = read_table(str(path))
        by_id = {str(i): k for k, i in enumerate(catalogue["id"])}
        rows = [by_id[str(i)] for i in truth["id"] if str(i) in by_id]
        missing = [str(i) for i in truth["id"] if str(i) not in by_id]
        if missing:
            raise RuntimeError(f"{path}: no catalogue row for mock spectra {missing}")
        fitted[name] = catalogue[rows]
        stats = {}
        for label in DEFAULT_LABELS:
            if label not in catalogue.colnames:
                continue
            delta = np.asarray(fitted[name][label], dtype=float) - np.asarray(
                truth[label], dtype=float
            )
            stats[label] = {
                "unit": label_unit(label),
                "bias": float(np.median(delta)),
                "dispersion": float(np.std(delta)),
                "robust_dispersion": float(1.4826 * np.median(np.abs(delta - np.median(delta)))),
            }
        # fraction of the stars in which each label owes more to the prior than to the spectrum
        for label in stats:
            if f"{label}_flag" in catalogue.colnames:
                label_flag = np.asarray(fitted[name][f"{label}_flag"], dtype=np.int64)
                held = (label_flag & FLAG_BITS["PRIOR_DOMINATED"]) != 0
                stats[label]["prior_dominated"] = float(np.mean(held))
        flags = (
            np.asarray(fitted[name]["flag"])
            if "flag" in catalogue.colnames
            else np.zeros(len(rows))
        )
        result[name] = {
            "labels": stats,
            "n_spectra": len(rows),
            "n_flagged": int(np.sum(flags != 0)),
        }
    if {"prior", "plain"} <= set(result):
        _paired_difference(result, truth, fitted)
    _plot_one_to_one(out / "label_recovery.png", truth, fitted)
    return result


def _paired_difference(result: dict, truth, fitted: dict, n_boot: int = 2000) -> None:
    """Add prior - plain dispersion and its paired-bootstrap sigma to the prior's label stats.

    The same stars are resampled for both emulators, so the sigma is that of the difference
    itself (much smaller than either dispersion's own): |difference| < 2 sigma is a tie that
    another draw of mock stars could turn either way.
    """
    n = len(truth)
    draws = np.random.default_rng(0).integers(0, n, (n_boot, n))
    for label, stats in result["prior"]["labels"].items():
        true = np.asarray(truth[label], dtype=float)
        prior = np.asarray(fitted["prior"][label], dtype=float) - true
        plain = np.asarray(fitted["plain"][label], dtype=float) - true
        boot = prior[draws].std(axis=1) - plain[draws].std(axis=1)
        stats["minus_plain"] = float(prior.std() - plain.std())
        stats["minus_plain_sigma"] = float(boot.std())


def _plot_one_to_one(path: Path, truth, fitted: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [n for n in DEFAULT_LABELS if all(n in t.colnames for t in fitted.values())]
    ncol = 6
    nrow = int(np.ceil(len(labels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.5 * nrow), squeeze=False)
    colours = {"prior": "C3", "plain": "C0"}
    for ax, label in zip(axes.ravel(), labels):
        true = np.asarray(truth[label], dtype=float)
        lo, hi = true.min(), true.max()
        pad = 0.1 * (hi - lo or 1.0)
        for name, table in fitted.items():
            got = np.asarray(table[label], dtype=float)
            sd = np.std(got - true)
            ax.scatter(
                true, got, s=7, color=colours.get(name), alpha=0.7, label=f"{name}: {sd:.3g}"
            )
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=0.7)
        ax.set_title(pretty_label(label), fontsize=9)
        ax.legend(fontsize=6, loc="upper left", handletextpad=0.1, frameon=False)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(labels) :]:
        ax.axis("off")
    fig.suptitle(
        "recovered vs true labels of mock LAMOST spectra (legend: dispersion)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recovery_table(result: dict) -> str:
    """Markdown table of dispersion per label for both emulators, abundances marked."""
    names = list(result)
    lines = [
        "| label | unit | "
        + " | ".join(f"{n} bias | {n} dispersion | {n} prior-held" for n in names)
        + " | prior <= plain | prior - plain (paired bootstrap sigma) |",
        "|---|---|" + "---|---|---|" * len(names) + "---|---|",
    ]
    for label in result[names[0]]["labels"]:
        cells = []
        for n in names:
            s = result[n]["labels"][label]
            held = s.get("prior_dominated")
            held_cell = "" if held is None else f"{100 * held:.0f}%"
            cells.append(f"{s['bias']:+.3g} | {s['dispersion']:.3g} | {held_cell}")
        better = difference = ""
        if {"prior", "plain"} <= set(names):
            p, q = (result[m]["labels"][label]["dispersion"] for m in ("prior", "plain"))
            better = "yes" if p <= q else "no"
            s = result["prior"]["labels"][label]
            if "minus_plain" in s:
                difference = f"{s['minus_plain']:+.3g} ({s['minus_plain_sigma']:.2g})"
        lines.append(
            f"| {pretty_label(label)} | {label_unit(label)} | "
            + " | ".join(cells)
            + f" | {better} | {difference} |"
        )
    return "\n".join(lines)


def write_index(out: Path, reports: dict, result: dict, timings: dict) -> Path:
    """index.md linking every figure and table of the run."""
    lines = ["# phdl demo", "", "Every number below was measured in this run.", ""]
    lines += ["## Emulation accuracy on held-out grid spectra", ""]
    lines += ["| emulator | flux MAE | flux RMSE | robust sigma |", "|---|---|---|---|"]
    for name, s in reports.items():
        lines.append(
            f"| {name} | {s['flux_mae']:.2e} | {s['flux_rmse']:.2e} | {s['flux_sigma_robust']:.2e} |"
        )
    lines += [""]
    for name in reports:
        lines += [
            f"- {name}: [residuals](report_{name}/residuals.png), "
            f"[gradient spectra](report_{name}/gradient_spectra.png), "
            f"[gradient errors](report_{name}/gradient_errors.png), [summary](report_{name}/summary.json)"
        ]
    from phdl.report import gradient_error_table

    lines += [
        "",
        "Median relative gradient error per label:",
        "",
        gradient_error_table(reports),
        "",
    ]
    lines += ["## Label recovery from mock LAMOST files", ""]
    lines += [
        "![label recovery](label_recovery.png)",
        "",
        "Dispersion: standard deviation of recovered - true over the mock stars. Prior-held: the "
        f"share of stars in which the label owes more to the fitter's label prior {LABEL_PRIOR} "
        "than to the spectrum (posterior error > prior sigma / sqrt(2)); a label held in most "
        "stars is not measured by this window, and its dispersion is about the prior's 0.23 dex "
        "spread of the truth. Prior - plain: the difference of the two dispersions with the "
        "sigma of a paired bootstrap over the stars (a difference under 2 sigma is a tie).",
        "",
        recovery_table(result),
        "",
    ]
    for name, r in result.items():
        lines.append(
            f"- {name}: {r['n_spectra']} spectra, {r['n_flagged']} flagged; catalogue `catalogue_{name}.fits`"
        )
    lines += ["", "## Wall time per step", ""] + [f"- {k}: {v:.0f} s" for k, v in timings.items()]
    path = out / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    """The `phdl demo` argument parser."""
    parser = argparse.ArgumentParser(prog="phdl demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--output", default="runs/phdl-demo", help="folder for everything")
    parser.add_argument("--quick", action="store_true", help="a small version (minutes, for tests)")
    parser.add_argument("--workers", type=int, default=2, help="synthesis processes")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the demo; returns the recovery result (also written to summary.json)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    total = 5 + len(EMULATORS)
    start = time.perf_counter()

    def timed(key, number, title, function, *a):
        with Step(number, total, title) as step:
            value = function(*a)
        timings[key] = time.perf_counter() - step.start
        return value

    grid = timed("synthesis", 1, f"synthesise {size.n_spectra} spectra + 30 gradient spectra each",
                 synthesise, out, size, args.workers, args.seed)  # fmt: skip
    checkpoints, reports = {}, {}
    for k, (name, weight) in enumerate(EMULATORS.items()):
        checkpoints[name] = timed(f"training {name}", 2 + k,
                                  f"train the {name} emulator (lambda = {weight}, {size.train_steps} steps)",
                                  train, out, grid, name, weight, size)  # fmt: skip
    n = 2 + len(EMULATORS)
    reports = timed("reports", n, "emulation accuracy on held-out spectra",
                    lambda: {name: report(out, c, name) for name, c in checkpoints.items()})  # fmt: skip
    mocks = timed("mock files", n + 1, f"write {size.n_mock} mock LAMOST files of held-out stars",
                  write_mocks, out, grid, checkpoints["prior"], size, args.seed)  # fmt: skip
    catalogues = timed("fitting", n + 2, "fit the mock files with phdl predict (both emulators)",
                       lambda: {name: predict(out, c, mocks, name, size) for name, c in checkpoints.items()})  # fmt: skip
    result = recovery(out, catalogues)
    timings["total"] = time.perf_counter() - start
    index = write_index(out, reports, result, timings)
    summary = {
        "reports": reports,
        "recovery": result,
        "timings_seconds": timings,
        "quick": args.quick,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    abundances = [label for label in result["prior"]["labels"] if is_abundance(label)]
    not_better = [
        pretty_label(label)
        for label in abundances
        if result["prior"]["labels"][label]["dispersion"]
        > result["plain"]["labels"][label]["dispersion"]
    ]
    worse = [
        pretty_label(label)
        for label in abundances
        if result["prior"]["labels"][label].get("minus_plain", 0.0)
        > 2 * result["prior"]["labels"][label].get("minus_plain_sigma", np.inf)
    ]
    measured = [
        pretty_label(label)
        for label in abundances
        if result["prior"]["labels"][label].get("prior_dominated", 0.0) < 0.5
    ]
    print("\n" + recovery_table(result))
    print(
        f"\nphdl demo finished in {timings['total']:.0f} s. Open {index}.\n"
        f"Flux MAE on held-out spectra: prior {reports['prior']['flux_mae']:.2e}, "
        f"plain {reports['plain']['flux_mae']:.2e}.\n"
        f"Abundance labels where the prior emulator's dispersion is larger than the plain one's: "
        f"{', '.join(not_better) if not_better else 'none'} "
        f"({len(abundances) - len(not_better)}/{len(abundances)} at least as good); larger by "
        f"more than 2 paired-bootstrap sigma: {', '.join(worse) if worse else 'none'}.\n"
        f"Abundances measured by the window in most stars (not held by the label prior): "
        f"{', '.join(measured) if measured else 'none'}."
    )
    return summary
