"""How good an emulator is, measured on held-out grid spectra: numbers, figures and a summary.

Three things an astronomer looks at before trusting an emulator (issue 2, item 7):
the distribution of flux residuals (and its sigma), emulator versus reference gradient spectra
for chosen labels in a wavelength window, and per-label gradient errors. Everything here works
on a `SpectrumEmulator` and a schema-v1 grid; the figures are PNG and the numbers go to JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from phdl.grid import GridReader, read_grid_info
from phdl.labels import GRADIENT_FLOOR, label_unit, pretty_label
from phdl.models.base import SpectrumEmulator


def emulator_gradient_spectra(
    emulator: SpectrumEmulator, physical_labels: torch.Tensor, label_indices: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux (B, P) and d flux / d label in physical units (B, K, P), by forward-mode AD along
    each label (one pass gives both)."""
    scaled = emulator.scale(physical_labels)
    index = torch.as_tensor(list(label_indices), dtype=torch.long, device=scaled.device)
    tangents = scaled.new_zeros(scaled.shape[0], len(index), scaled.shape[1])
    tangents[:, torch.arange(len(index), device=scaled.device), index] = 1.0
    flux, derivative = emulator.jvp(scaled, tangents)  # per scaled unit
    return flux, derivative / emulator.label_span[index][None, :, None]


@dataclass
class Evaluation:
    """Emulator against a grid on a set of spectra (all arrays in the grid's units)."""

    indices: np.ndarray  # (N,) spectrum positions in the grid
    labels: np.ndarray  # (N, L) physical
    label_names: tuple[str, ...]
    wavelength: np.ndarray  # (P,) Angstrom
    residuals: np.ndarray  # (N, P) emulator - grid flux
    gradient_names: tuple[str, ...]
    gradient_errors: np.ndarray  # (N, K) ||emulated - reference|| / ||reference||, NaN if absent
    example_emulated: np.ndarray  # (K, P) emulator gradients of the first spectrum
    example_reference: np.ndarray  # (K, P) grid gradients of the first spectrum


def evaluate(
    emulator: SpectrumEmulator,
    grid_path: str | Path,
    indices: Sequence[int] | None = None,
    batch_size: int = 64,
    gradient_floor: float = GRADIENT_FLOOR,
) -> Evaluation:
    """Residuals and relative gradient errors of `emulator` on grid spectra `indices` (default all).

    A gradient error is |emulated - reference| / |reference| over pixels, the denominator at
    least `gradient_floor` flux per pixel over the label's training range: a label without lines
    in the window (reference ~ 0) is then measured against what would matter, not against 0.
    """
    info = read_grid_info(grid_path, check_values=False)
    if tuple(emulator.label_names) != info.label_names:
        raise ValueError(
            f"{grid_path}: grid labels {list(info.label_names)} differ from the emulator's "
            f"{list(emulator.label_names)}"
        )
    if info.n_pixels != emulator.n_pixels or not np.allclose(info.wavelength, emulator.wavelength):
        raise ValueError(f"{grid_path}: the grid's wavelength grid is not the emulator's")
    indices = np.arange(info.n_spectra) if indices is None else np.asarray(indices, dtype=np.int64)
    reader = GridReader(grid_path)
    grad_label_idx = info.gradient_index
    # (K,) floor of |reference| over all pixels [flux per label unit]
    floor = emulator.label_scaling.gradient_floor(info.gradient_names, gradient_floor)
    floor = floor * np.sqrt(info.n_pixels)
    residuals, errors = [], []
    example_emulated = example_reference = None
    emulator = emulator.eval()
    device = emulator._label_min.device
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        flux = np.stack([reader.flux(i) for i in batch])
        reference = np.stack([reader.gradients(i) for i in batch])  # (B, K, P)
        labels = torch.as_tensor(info.labels[batch], dtype=torch.float32, device=device)
        with torch.no_grad():
            model_flux, emulated = emulator_gradient_spectra(emulator, labels, grad_label_idx)
        model_flux, emulated = model_flux.cpu().numpy(), emulated.cpu().numpy()
        residuals.append(model_flux - flux)
        norm = np.linalg.norm(np.nan_to_num(reference), axis=-1)
        norm = np.maximum(norm, floor[None, :])
        diff = np.linalg.norm(np.nan_to_num(emulated - reference), axis=-1)
        err = np.where(
            np.isfinite(reference).all(axis=-1) & (norm > 0),
            diff / np.where(norm > 0, norm, 1),
            np.nan,
        )
        errors.append(err)
        if example_emulated is None:
            example_emulated, example_reference = emulated[0], reference[0]
    reader.close()
    return Evaluation(
        indices=indices,
        labels=info.labels[indices],
        label_names=info.label_names,
        wavelength=info.wavelength,
        residuals=np.concatenate(residuals),
        gradient_names=info.gradient_names,
        gradient_errors=np.concatenate(errors),
        example_emulated=example_emulated,
        example_reference=example_reference,
    )


def summarise(evaluation: Evaluation) -> dict:
    """Machine-readable accuracy summary: flux MAE/RMSE/sigma and per-label gradient errors."""
    r = evaluation.residuals
    mad = np.median(np.abs(r - np.median(r)))
    per_label = {}
    for k, name in enumerate(evaluation.gradient_names):
        e = evaluation.gradient_errors[:, k]
        e = e[np.isfinite(e)]
        per_label[name] = {
            "unit": label_unit(name),
            "median_relative_error": float(np.median(e)) if e.size else None,
            "p16_relative_error": float(np.percentile(e, 16)) if e.size else None,
            "p84_relative_error": float(np.percentile(e, 84)) if e.size else None,
            "n_spectra": int(e.size),
        }
    return {
        "n_spectra": int(r.shape[0]),
        "n_pixels": int(r.shape[1]),
        "flux_mae": float(np.mean(np.abs(r))),
        "flux_rmse": float(np.sqrt(np.mean(r**2))),
        "flux_sigma_robust": float(1.4826 * mad),
        "flux_std": float(np.std(r)),
        "flux_residual_p99_abs": float(np.percentile(np.abs(r), 99)),
        "gradient_relative_error": per_label,
    }


def plot_residual_histogram(evaluation: Evaluation, path: str | Path, title: str = "") -> None:
    """Histogram of emulator - grid flux over all test pixels, with its sigma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = evaluation.residuals.ravel()
    sigma = 1.4826 * np.median(np.abs(r - np.median(r)))
    lim = max(5 * sigma, np.percentile(np.abs(r), 99.5))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(np.clip(r, -lim, lim), bins=120, range=(-lim, lim), color="0.3", histtype="stepfilled")
    ax.set_yscale("log")
    ax.set_xlabel("emulated - reference normalised flux")
    ax.set_ylabel("pixels")
    ax.set_title(
        f"{title} residuals: robust sigma = {sigma:.2e}, std = {np.std(r):.2e}, "
        f"MAE = {np.mean(np.abs(r)):.2e}\n"
        f"{evaluation.residuals.shape[0]} held-out spectra x {evaluation.residuals.shape[1]} pixels",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gradient_spectra(
    evaluation: Evaluation,
    path: str | Path,
    labels: Sequence[str] | None = None,
    window: tuple[float, float] | None = None,
) -> None:
    """Emulator versus reference gradient spectra of one held-out star, per label, in a window [A]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(labels) if labels else list(evaluation.gradient_names[:4])
    unknown = [n for n in names if n not in evaluation.gradient_names]
    if unknown:
        raise ValueError(
            f"no gradient spectra for {unknown}; the grid has {list(evaluation.gradient_names)}"
        )
    w = evaluation.wavelength
    lo, hi = window if window else (w[0], w[-1])
    sel = (w >= lo) & (w <= hi)
    if not sel.any():
        raise ValueError(f"window {lo}-{hi} A lies outside the grid ({w[0]:.1f}-{w[-1]:.1f} A)")
    star = dict(zip(evaluation.label_names, evaluation.labels[0]))
    fig, axes = plt.subplots(
        len(names), 1, figsize=(9, 1.9 * len(names) + 0.6), sharex=True, squeeze=False
    )
    for ax, name in zip(axes[:, 0], names):
        k = evaluation.gradient_names.index(name)
        ax.plot(
            w[sel],
            evaluation.example_reference[k, sel],
            color="k",
            lw=1.0,
            label="reference (ab initio)",
        )
        ax.plot(w[sel], evaluation.example_emulated[k, sel], color="C3", lw=0.9, label="emulator")
        unit = label_unit(name)
        ax.set_ylabel(
            f"d flux / d {pretty_label(name)}\n[1/{unit}]" if unit else f"d flux / d {name}",
            fontsize=8,
        )
    axes[0, 0].legend(fontsize=8, loc="lower right")
    axes[-1, 0].set_xlabel("wavelength [A]")
    desc = ", ".join(f"{pretty_label(n)}={star[n]:.4g}" for n in list(star)[:4])
    axes[0, 0].set_title(f"gradient spectra of held-out star: {desc}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gradient_errors(summaries: dict[str, dict], path: str | Path) -> None:
    """Median relative gradient error per label for one or several emulators (name -> summary)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(summaries.values()))["gradient_relative_error"])
    x = np.arange(len(names))
    width = 0.8 / len(summaries)
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(names) + 2), 3.6))
    for i, (model, summary) in enumerate(summaries.items()):
        values = [
            summary["gradient_relative_error"][n]["median_relative_error"] or np.nan for n in names
        ]
        ax.bar(x + (i - (len(summaries) - 1) / 2) * width, values, width, label=model)
    ax.set_xticks(x, [pretty_label(n) for n in names], rotation=70, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median |emulated - reference| / |reference|")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    emulator: SpectrumEmulator,
    grid_path: str | Path,
    output_dir: str | Path,
    indices: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    window: tuple[float, float] | None = None,
    name: str = "emulator",
) -> dict:
    """Evaluate, then write residuals.png, gradient_spectra.png, gradient_errors.png, summary.json."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    evaluation = evaluate(emulator, grid_path, indices)
    summary = summarise(evaluation)
    summary["grid"] = str(grid_path)
    plot_residual_histogram(evaluation, output_dir / "residuals.png", title=name)
    plot_gradient_spectra(evaluation, output_dir / "gradient_spectra.png", labels, window)
    plot_gradient_errors({name: summary}, output_dir / "gradient_errors.png")
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def gradient_error_table(summaries: dict[str, dict]) -> str:
    """Markdown table of median relative gradient errors per label, one column per emulator."""
    models = list(summaries)
    names = list(summaries[models[0]]["gradient_relative_error"])
    lines = ["| label | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for n in names:
        cells = []
        for m in models:
            v = summaries[m]["gradient_relative_error"][n]["median_relative_error"]
            cells.append("-" if v is None else f"{v:.3f}")
        lines.append(f"| {pretty_label(n)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_of_checkpoint(checkpoint_path: str | Path, split: str) -> tuple[str, np.ndarray | None]:
    """The grid path and spectrum indices of a training run's 'train', 'val' or 'test' split.

    Rebuilt from the datamodule hyper-parameters stored in the checkpoint (path, fractions,
    seed), so the report sees exactly the spectra the emulator was not trained on.
    """
    from phdl.data.grid import split_indices

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if "path" not in data:
        raise ValueError(
            f"{checkpoint_path}: the checkpoint does not record its training grid; pass --grid"
        )
    if split == "all":
        return str(data["path"]), None
    n_spectra = read_grid_info(data["path"], check_values=False).n_spectra
    parts = dict(
        zip(
            ("train", "val", "test"),
            split_indices(n_spectra, data["val_fraction"], data["test_fraction"], data["seed"]),
        )
    )
    if split not in parts:
        raise ValueError(f"unknown split {split!r}; expected train, val, test or all")
    return str(data["path"]), parts[split]


def build_parser():
    """The `phdl report` argument parser."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="phdl report",
        description="Emulator accuracy on held-out grid spectra: residual histogram, gradient "
        "spectra emulator vs reference, per-label gradient errors (PNG + summary.json).",
    )
    parser.add_argument("--checkpoint", required=True, help="EmulatorModule checkpoint (.ckpt)")
    parser.add_argument("--grid", help="schema-v1 grid (default: the checkpoint's training grid)")
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "train", "all"),
        help="which spectra of the checkpoint's split to evaluate (default: test)",
    )
    parser.add_argument("--output", required=True, help="folder for the figures and summary.json")
    parser.add_argument("--labels", nargs="+", help="labels whose gradient spectra are plotted")
    parser.add_argument(
        "--window", nargs=2, type=float, metavar=("MIN", "MAX"), help="wavelength window [A]"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """`phdl report`: accuracy report of a trained emulator on its held-out grid spectra."""
    from phdl.emulator import load_emulator

    parser = build_parser()
    args = parser.parse_args(argv)
    grid, indices = args.grid, None
    if grid is None or args.split != "all":
        training_grid, indices = split_of_checkpoint(args.checkpoint, args.split)
        grid = grid or training_grid
    emulator = load_emulator(args.checkpoint)
    summary = write_report(
        emulator,
        grid,
        args.output,
        indices=indices,
        labels=args.labels,
        window=tuple(args.window) if args.window else None,
        name=Path(args.checkpoint).stem,
    )
    print(
        f"{summary['n_spectra']} {args.split} spectra: flux MAE {summary['flux_mae']:.2e}, "
        f"RMSE {summary['flux_rmse']:.2e}, robust sigma {summary['flux_sigma_robust']:.2e}\n"
        + gradient_error_table({Path(args.checkpoint).stem: summary})
        + f"\nwritten to {args.output}"
    )
    return summary
