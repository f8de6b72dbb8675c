"""The shipped emulator on real LAMOST spectra: fit quality, reference labels and repeats.

    python bench/lamost_real.py [--checkpoint checkpoints/phdl-demo.ckpt]
        [--reference ../shared/reference/lamost] [--output runs/lamost_real] [--limit N]
        [--threads 1] [--batch-size 32] [--resume]

Fits every file of the four reference sets (README in the reference folder) through the real
pipeline, `phdl predict --config configs/predict_lamost.yaml` in-process (LamostSpectra ->
ObservedDataModule -> LabelFitter -> CatalogueWriter), one catalogue per set, and reports:
- per set: files, rows fitted, converged, chi2_red quantiles and the fraction with a sensible
  chi2 (fitted, converged and chi2_red < --chi2-max), labels on a grid bound;
- dr1-lasp: phdl - LASP (the LAMOST stellar pipeline) in Teff, log g, [Fe/H]: median offset and
  scatter (1.4826 MAD, and the standard deviation), all stars and those inside the emulator grid;
- dr7-mdwarfs: the same against the literature labels (most M dwarfs are cooler than any demo
  grid: reported, with how many lie inside the grid);
- dr8-repeats: for every label and the RV, pairs of observations of one star:
  pull = (x1 - x2) / sqrt(err1^2 + err2^2); rms and 1.4826 MAD of the pulls (1 = errors honest).
Writes <output>/summary.json, <output>/tables.md, <output>/lamost_real.png and the catalogues <output>/<set>.fits.
`--limit N` fits only the first N files of each set (repeats: whole groups until >= N files).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPOSITORY / "checkpoints" / "phdl-demo.ckpt"
DEFAULT_REFERENCE = Path(
    os.environ.get("PHDL_LAMOST_REFERENCE", REPOSITORY.parent / "shared" / "reference" / "lamost")
)
CONFIG = REPOSITORY / "configs" / "predict_lamost.yaml"
SETS = ("dr1-lasp", "dr8-repeats", "dr7-mdwarfs", "dr10-table")
#: reference label columns: set -> {phdl label: (value column, error column or None)}
REFERENCE_COLUMNS = {
    "dr1-lasp": {
        "teff": ("teff", "teff_err"),
        "logg": ("logg", "logg_err"),
        "fe_h": ("feh", "feh_err"),
    },
    "dr7-mdwarfs": {"teff": ("teffin", None), "logg": ("loggin", None), "fe_h": ("fehin", None)},
}
MAIN_LABELS = ("teff", "logg", "fe_h")


def file_stem(path: str | Path) -> str:
    """File name without .gz and .fits (the catalogue id with `id_from: filename`)."""
    name = Path(path).name.removesuffix(".gz")
    for suffix in (".fits", ".fit", ".fts"):
        name = name.removesuffix(suffix)
    return name


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def select_files(reference: Path, name: str, limit: int | None) -> list[Path]:
    """The set's FITS files, sorted; with `limit`, the first ones (whole repeat groups)."""
    folder = reference / name
    files = sorted(p for p in folder.iterdir() if ".fit" in p.name)
    if limit is None:
        return files
    if name != "dr8-repeats":
        return files[:limit]
    by_stem = {file_stem(p): p for p in files}
    groups: dict[str, list[Path]] = {}
    for row in read_csv(folder / "groups.csv"):
        groups.setdefault(row["GroupID"], []).append(by_stem[file_stem(row["combined_file"])])
    chosen: list[Path] = []
    for members in groups.values():
        if len(chosen) >= limit:
            break
        chosen += members
    return sorted(chosen)


def run_predict(
    checkpoint: Path,
    files: list[Path],
    catalogue: Path,
    batch_size: int,
    min_good_pixels: int,
    fit_labels: list[str] | None = None,
) -> float:
    """`phdl predict` with configs/predict_lamost.yaml on a list of files; wall time [s]."""
    from phdl.cli import main

    listing = catalogue.with_suffix(".files.txt")
    listing.write_text("".join(f"{p}\n" for p in files))
    start = time.perf_counter()
    saved, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when given args and argv
    try:
        main([
            "predict", "--config", str(CONFIG),
            "--model.init_args.checkpoint", str(checkpoint),
            "--data.init_args.source.init_args.paths", str(listing),
            "--data.init_args.num_workers", "0",
            "--data.init_args.batch_size", str(batch_size),
            "--data.init_args.min_good_pixels", str(min_good_pixels),
            "--trainer.default_root_dir", str(catalogue.parent),
            "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks.init_args.output", str(catalogue),
            *(["--model.init_args.fit_labels", json.dumps(fit_labels)] if fit_labels else []),
        ])  # fmt: skip
    finally:
        sys.argv = saved
    return time.perf_counter() - start


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation (the standard deviation for a Gaussian)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def finite_stats(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"n": 0, "median": float("nan"), "robust_sigma": float("nan"), "std": float("nan")}
    return {
        "n": int(values.size),
        "median": float(np.median(values)),
        "robust_sigma": robust_sigma(values),
        "std": float(np.std(values, ddof=1)) if values.size > 1 else float("nan"),
    }


def fit_quality(table, labels: list[str], chi2_max: float) -> dict:
    """Counts, chi2_red quantiles, sensible fraction and labels on a bound for one catalogue."""
    fitted = (np.asarray(table["flag"]) & 1) == 0
    converged = np.asarray(table["converged"], dtype=bool)
    chi2 = np.asarray(table["chi2_red"], dtype=float)
    sensible = fitted & converged & (chi2 < chi2_max)
    from phdl.fit.fitter import FLAG_BITS

    at_boundary = FLAG_BITS["AT_BOUNDARY"]
    on_bound = {
        name: int(np.sum(fitted & ((np.asarray(table[f"{name}_flag"]) & at_boundary) != 0)))
        for name in labels
        if name in MAIN_LABELS
    }
    quantiles = np.nanpercentile(chi2[fitted], [10, 50, 90]) if fitted.any() else [np.nan] * 3
    return {
        "files": len(table),
        "fitted": int(fitted.sum()),
        "converged": int((fitted & converged).sum()),
        "sensible": int(sensible.sum()),
        "sensible_fraction": float(sensible.mean()) if len(table) else float("nan"),
        "chi2_red_p10_p50_p90": [float(q) for q in quantiles],
        "median_snr": float(np.nanmedian(np.asarray(table["snr"], dtype=float)[fitted]))
        if fitted.any() else float("nan"),
        "on_bound": on_bound,
        "rejects": {str(i): str(r) for i, r, f in zip(table["id"], table["flag_reason"], fitted) if not f},
    }  # fmt: skip


def compare_reference(table, rows: list[dict[str, str]], name: str, grid: dict, chi2_max: float):
    """phdl - reference per main label: all fitted, sensible chi2, and inside the emulator grid."""
    columns = REFERENCE_COLUMNS[name]
    key = "filename" if name == "dr1-lasp" else "file_name"
    reference = {file_stem(row[key]): row for row in rows}
    ids = [str(i) for i in table["id"]]
    matched = np.array([i in reference for i in ids])
    fitted = ((np.asarray(table["flag"]) & 1) == 0) & matched
    sensible = (
        fitted & np.asarray(table["converged"], bool) & (np.asarray(table["chi2_red"]) < chi2_max)
    )

    def ref(column: str | None) -> np.ndarray:
        if column is None:
            return np.full(len(ids), np.nan)
        values = np.array([float(reference[i][column]) if i in reference else np.nan for i in ids])
        return np.where(values <= -9990, np.nan, values)  # LAMOST's -9999 = not measured

    inside = np.ones(len(ids), bool)
    for label, (column, _) in columns.items():
        low, high = grid[label]
        inside &= (ref(column) >= low) & (ref(column) <= high)
    result: dict = {
        "matched": int(matched.sum()),
        "fitted": int(fitted.sum()),
        "sensible": int(sensible.sum()),
        "reference_inside_grid": int((matched & inside).sum()),
        "labels": {},
        "points": {},
    }
    for label, (column, error_column) in columns.items():
        phdl = np.asarray(table[label], dtype=float)
        difference = phdl - ref(column)
        result["labels"][label] = {
            "all_fitted": finite_stats(difference[fitted]),
            "sensible_chi2": finite_stats(difference[sensible]),
            "sensible_inside_grid": finite_stats(difference[sensible & inside]),
            "median_phdl_err": float(np.nanmedian(np.asarray(table[f"{label}_err"])[fitted]))
            if fitted.any() else float("nan"),
            "median_reference_err": float(np.nanmedian(ref(error_column)[fitted]))
            if error_column and fitted.any() else None,
        }  # fmt: skip
        result["points"][label] = {
            "reference": ref(column)[fitted].tolist(),
            "phdl": phdl[fitted].tolist(),
            "sensible": sensible[fitted].tolist(),
        }
    return result


def repeat_pulls(table, rows: list[dict[str, str]], labels: list[str], chi2_max: float) -> dict:
    """Pairwise differences between repeat observations of a star, in units of their errors."""
    from phdl.fit.fitter import FLAG_BITS

    group_of = {file_stem(row["combined_file"]): row["GroupID"] for row in rows}
    fitted = ((np.asarray(table["flag"]) & 1) == 0) & np.asarray(table["converged"], bool)
    sensible = fitted & (np.asarray(table["chi2_red"]) < chi2_max)
    members: dict[str, list[int]] = {}
    for k, identifier in enumerate(table["id"]):
        if fitted[k] and str(identifier) in group_of:
            members.setdefault(group_of[str(identifier)], []).append(k)
    pairs = np.array(
        [p for group in members.values() for p in itertools.combinations(group, 2)], dtype=int
    ).reshape(-1, 2)
    both_sensible = (
        sensible[pairs[:, 0]] & sensible[pairs[:, 1]] if pairs.size else np.zeros(0, bool)
    )
    result = {"stars": len(members), "pairs": int(len(pairs)),
              "pairs_sensible": int(both_sensible.sum()), "labels": {}}  # fmt: skip
    for label in [*labels, "rv"]:
        value = np.asarray(table[label], dtype=float)
        error = np.asarray(table[f"{label}_err"], dtype=float)
        if not pairs.size:
            continue
        difference = value[pairs[:, 0]] - value[pairs[:, 1]]
        combined = np.hypot(error[pairs[:, 0]], error[pairs[:, 1]])
        pull = difference / combined
        bound = (np.asarray(table[f"{label}_flag"]) & FLAG_BITS["AT_BOUNDARY"]) != 0
        off_bound = ~(bound[pairs[:, 0]] | bound[pairs[:, 1]])
        use = both_sensible & off_bound & np.isfinite(pull)
        result["labels"][label] = {
            "n_pairs": int(use.sum()),
            "rms_difference": float(np.sqrt(np.mean(difference[use] ** 2))) if use.any() else float("nan"),
            "median_combined_err": float(np.median(combined[use])) if use.any() else float("nan"),
            "rms_pull": float(np.sqrt(np.mean(pull[use] ** 2))) if use.any() else float("nan"),
            "robust_pull": robust_sigma(pull[use]),
            "n_pairs_all": int(np.isfinite(pull).sum()),
            "rms_pull_all": float(np.sqrt(np.nanmean(pull**2))),
        }  # fmt: skip
    return result


def markdown_tables(summary: dict) -> str:
    """The main numbers as markdown tables (for docs/lamost.md)."""
    lines = [
        "| set | files | fitted | converged | chi2_red < {:g} | chi2_red p10 / p50 / p90 | median S/N "
        "| Teff / log g / [Fe/H] on a grid bound |".format(summary["chi2_max"]),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, q in summary["quality"].items():
        p, b = q["chi2_red_p10_p50_p90"], q["on_bound"]
        lines.append(
            f"| {name} | {q['files']} | {q['fitted']} | {q['converged']} | {q['sensible']} "
            f"({q['sensible_fraction']:.0%}) | {p[0]:.2f} / {p[1]:.2f} / {p[2]:.2f} | "
            f"{q['median_snr']:.0f} | {b.get('teff', 0)} / {b.get('logg', 0)} / {b.get('fe_h', 0)} |"
        )
    units = {"teff": ("K", 0), "logg": ("dex", 2), "fe_h": ("dex", 2)}
    for name, comparison in summary["reference"].items():
        lines += ["", f"{name}: phdl - reference, median offset / 1.4826 MAD / std (n); "
                  f"{comparison['matched']} stars, {comparison['reference_inside_grid']} with all "
                  "three reference labels inside the emulator grid", "",
                  "| label | all fitted | chi2_red < {:g} | chi2_red < {:g}, reference inside the grid "
                  "| median error phdl / reference |".format(summary["chi2_max"], summary["chi2_max"]),
                  "|---|---|---|---|---|"]  # fmt: skip
        for label, stats in comparison["labels"].items():
            unit, digits = units[label]
            cells = [
                f"{s['median']:+.{digits}f} / {s['robust_sigma']:.{digits}f} / {s['std']:.{digits}f} "
                f"({s['n']})"
                for s in (stats[k] for k in ("all_fitted", "sensible_chi2", "sensible_inside_grid"))
            ]
            reference_error = stats["median_reference_err"]
            errors = f"{stats['median_phdl_err']:.{digits}f}" + (
                f" / {reference_error:.{digits}f}" if reference_error is not None else " / -"
            )
            lines.append(f"| {label} [{unit}] | " + " | ".join(cells) + f" | {errors} |")
    repeats = summary.get("repeats")
    if repeats:
        lines += ["", f"dr8-repeats: {repeats['stars']} stars, {repeats['pairs']} pairs, "
                  f"{repeats['pairs_sensible']} with both chi2_red < {summary['chi2_max']:g}", "",
                  "| label | pairs | rms difference | median sqrt(e1^2 + e2^2) | rms pull | 1.4826 MAD pull "
                  "| rms pull, all fitted pairs (n) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for label, s in repeats["labels"].items():
            lines.append(
                f"| {label} | {s['n_pairs']} | {s['rms_difference']:.3g} | "
                f"{s['median_combined_err']:.3g} | {s['rms_pull']:.2f} | {s['robust_pull']:.2f} | "
                f"{s['rms_pull_all']:.2f} ({s['n_pairs_all']}) |"
            )
    return "\n".join(lines) + "\n"


def print_tables(summary: dict) -> None:
    print(f"\ncheckpoint {summary['checkpoint']}  window {summary['window']}  "
          f"load average {summary['load_average']}")  # fmt: skip
    print(f"\n{'set':12s} {'files':>5s} {'fitted':>6s} {'conv':>5s} {'sensible':>8s} "
          f"{'chi2_red p10/p50/p90':>22s} {'S/N':>6s} {'s/spec':>7s}  on bound (teff/logg/fe_h)")  # fmt: skip
    for name, quality in summary["quality"].items():
        q = quality["chi2_red_p10_p50_p90"]
        b = quality["on_bound"]
        print(f"{name:12s} {quality['files']:5d} {quality['fitted']:6d} {quality['converged']:5d} "
              f"{quality['sensible']:4d} ({quality['sensible_fraction']:4.0%}) "
              f"{q[0]:7.2f}{q[1]:7.2f}{q[2]:8.2f} {quality['median_snr']:6.1f} "
              f"{summary['seconds_per_spectrum'][name]:7.2f}  "
              f"{b.get('teff', 0)}/{b.get('logg', 0)}/{b.get('fe_h', 0)}")  # fmt: skip
    for name, comparison in summary["reference"].items():
        print(f"\n{name}: phdl - reference ({comparison['matched']} matched, "
              f"{comparison['fitted']} fitted, {comparison['sensible']} sensible chi2, "
              f"{comparison['reference_inside_grid']} with reference labels inside the grid)")  # fmt: skip
        print(f"{'label':6s} {'subset':22s} {'n':>4s} {'median':>9s} {'1.48 MAD':>9s} {'std':>9s}")
        for label, stats in comparison["labels"].items():
            for subset in ("all_fitted", "sensible_chi2", "sensible_inside_grid"):
                s = stats[subset]
                print(f"{label:6s} {subset:22s} {s['n']:4d} {s['median']:9.3f} "
                      f"{s['robust_sigma']:9.3f} {s['std']:9.3f}")  # fmt: skip
            reference_error = stats["median_reference_err"]
            print(f"{'':6s} median error: phdl {stats['median_phdl_err']:.3f}" +
                  (f", reference {reference_error:.3f}" if reference_error is not None else ""))  # fmt: skip
    repeats = summary.get("repeats")
    if repeats:
        print(f"\ndr8-repeats: {repeats['stars']} stars, {repeats['pairs']} pairs "
              f"({repeats['pairs_sensible']} with both chi2 sensible); pull = diff / sqrt(e1^2+e2^2), "
              "pairs with both sensible and the label off its bounds")  # fmt: skip
        print(f"{'label':7s} {'pairs':>5s} {'rms diff':>9s} {'med err':>9s} {'rms pull':>9s} "
              f"{'1.48MAD':>8s} {'rms pull (all pairs)':>21s}")  # fmt: skip
        for label, s in repeats["labels"].items():
            print(f"{label:7s} {s['n_pairs']:5d} {s['rms_difference']:9.3f} "
                  f"{s['median_combined_err']:9.3f} {s['rms_pull']:9.2f} {s['robust_pull']:8.2f} "
                  f"{s['rms_pull_all']:12.2f} ({s['n_pairs_all']})")  # fmt: skip


def plot(summary: dict, grid: dict, path: Path) -> None:
    """phdl vs LASP / literature in Teff, log g, [Fe/H]; rms pull of repeat pairs per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from phdl.labels import pretty_label

    figure, axes = plt.subplots(1, 4, figsize=(19, 4.6), gridspec_kw={"width_ratios": [1, 1, 1, 2]})
    styles = {
        "dr1-lasp": ("C0", "o", "DR1 vs LASP"),
        "dr7-mdwarfs": ("C3", "x", "M dwarfs vs literature"),
    }
    for axis, label in zip(axes[:3], MAIN_LABELS):
        for name, comparison in summary["reference"].items():
            points = comparison["points"][label]
            colour, marker, text = styles[name]
            x, y = np.asarray(points["reference"]), np.asarray(points["phdl"])
            good = np.asarray(points["sensible"], bool)
            axis.scatter(x[good], y[good], s=12, c=colour, marker=marker, label=f"{text} (chi2 ok)")
            axis.scatter(x[~good], y[~good], s=12, facecolors="none", edgecolors=colour,
                         marker="o", alpha=0.5, label=f"{text} (chi2 high)")  # fmt: skip
        low, high = grid[label]
        axis.axvspan(low, high, color="0.9", zorder=-2)
        axis.axhspan(low, high, color="0.9", zorder=-2, alpha=0.5)
        limits = axis.get_xlim()
        axis.plot(limits, limits, "k--", lw=0.8)
        axis.set_xlabel(f"reference {pretty_label(label)}")
        axis.set_ylabel(f"phdl {pretty_label(label)}")
    axes[0].legend(fontsize=7, loc="upper left")
    repeats = summary.get("repeats")
    axis = axes[3]
    if repeats and repeats["labels"]:
        names = list(repeats["labels"])

        def values(key: str) -> list[float]:
            return [repeats["labels"][n][key] for n in names]

        x = np.arange(len(names))
        axis.bar(x - 0.2, values("rms_pull"), 0.4, label="rms pull, both chi2 ok, off bounds")
        axis.bar(x + 0.2, values("rms_pull_all"), 0.4, label="rms pull, all fitted pairs")
        axis.plot(x - 0.2, values("robust_pull"), "k_", ms=8, label="1.4826 MAD (chi2 ok)")
        axis.axhline(1.0, color="k", lw=0.8)
        axis.set_yscale("log")
        axis.set_xticks(
            x, [pretty_label(n) if n != "rv" else "RV" for n in names], rotation=90, fontsize=7
        )
        axis.set_ylabel("repeat pairs: (x1 - x2) / sqrt(e1^2 + e2^2)")
        axis.legend(fontsize=8)
    figure.suptitle(f"{summary['checkpoint_name']} ({summary['window']}) on real LAMOST spectra; "
                    "grey: emulator grid", fontsize=10)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(args: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument(
        "--reference", default=str(DEFAULT_REFERENCE), help="reference/lamost folder"
    )
    parser.add_argument("--output", default=str(REPOSITORY / "runs" / "lamost_real"))
    parser.add_argument("--limit", type=int, help="fit only the first N files of each set")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=SETS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one process)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chi2-max", type=float, default=3.0, help="'sensible' chi2_red limit")
    parser.add_argument("--fit-labels", nargs="*", help="fit only these labels (others fixed)")
    parser.add_argument("--resume", action="store_true", help="keep rows of earlier catalogues")
    options = parser.parse_args(args)

    import torch
    from astropy.table import Table
    from astropy.units import UnitsWarning

    from phdl.emulator import load_emulator

    reference = Path(options.reference)
    if not reference.is_dir():
        raise SystemExit(f"{reference}: no LAMOST reference folder (set --reference)")
    checkpoint = Path(options.checkpoint).resolve()
    torch.set_num_threads(options.threads)
    emulator = load_emulator(str(checkpoint))
    labels = list(options.fit_labels or emulator.label_names)  # catalogue order
    scaling = emulator.label_scaling
    grid = {
        name: (float(scaling.minimum[k]), float(scaling.maximum[k]))
        for k, name in enumerate(emulator.label_names)
    }
    wavelength = np.asarray(emulator.wavelength)
    window = (
        f"{wavelength[0]:.0f}-{wavelength[-1]:.0f} A, {wavelength.size} px, {len(labels)} labels"
    )
    # the config asks for 100 usable pixels; a small demo window may have fewer in all
    min_good = min(100, wavelength.size // 2)
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)

    load_start = os.getloadavg()[0]
    summary: dict = {
        "checkpoint": str(checkpoint),
        "checkpoint_name": checkpoint.name,
        "checkpoint_mtime": time.strftime(
            "%Y-%m-%d %H:%M", time.gmtime(checkpoint.stat().st_mtime)
        ),
        "window": window,
        "grid": {k: grid[k] for k in MAIN_LABELS},
        "limit": options.limit,
        "fit_labels": labels,
        "chi2_max": options.chi2_max,
        "threads": options.threads,
        "quality": {},
        "seconds_per_spectrum": {},
        "reference": {},
    }
    tables = {}
    for name in options.sets:
        files = select_files(reference, name, options.limit)
        catalogue = output / f"{name}.fits"
        if not options.resume:
            for stale in (catalogue, output / f"{name}_rejects.csv"):
                stale.unlink(missing_ok=True)
        with warnings.catch_warnings():  # 'dex' is not a FITS unit; phdl writes it anyway
            warnings.simplefilter("ignore", UnitsWarning)
            seconds = run_predict(
                checkpoint, files, catalogue, options.batch_size, min_good, options.fit_labels
            )
            table = Table.read(catalogue)
        tables[name] = table
        summary["seconds_per_spectrum"][name] = seconds / max(len(files), 1)
        summary["quality"][name] = fit_quality(table, labels, options.chi2_max)
    total = [summary["quality"][n] for n in tables]
    summary["quality_all"] = {
        "files": sum(q["files"] for q in total),
        "fitted": sum(q["fitted"] for q in total),
        "sensible": sum(q["sensible"] for q in total),
    }
    for name, catalogue_name in (
        ("dr1-lasp", "lasp_labels.csv"),
        ("dr7-mdwarfs", "literature_labels.csv"),
    ):
        if name in tables:
            rows = read_csv(reference / name / catalogue_name)
            summary["reference"][name] = compare_reference(
                tables[name], rows, name, grid, options.chi2_max
            )
    if "dr8-repeats" in tables:
        rows = read_csv(reference / "dr8-repeats" / "groups.csv")
        summary["repeats"] = repeat_pulls(tables["dr8-repeats"], rows, labels, options.chi2_max)
    summary["load_average"] = f"{load_start:.1f} -> {os.getloadavg()[0]:.1f}"
    print_tables(summary)
    (output / "tables.md").write_text(markdown_tables(summary))
    plot(summary, grid, output / "lamost_real.png")
    with open(output / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=1)
    q = summary["quality_all"]
    print(f"\n{q['sensible']}/{q['files']} spectra fitted with chi2_red < {options.chi2_max}; "
          f"wrote {output / 'summary.json'} and {output / 'lamost_real.png'}")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
