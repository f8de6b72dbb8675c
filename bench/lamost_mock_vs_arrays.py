"""Labels from mock LAMOST files vs the same spectra given as arrays (same noise realisation).

    python bench/lamost_mock_vs_arrays.py [--checkpoint checkpoints/phdl-demo.ckpt] [--grid GRID.h5]
        [--n-spectra 60] [--snr 50 100] [--threads 1] [--output runs/lamost_mock_vs_arrays]

Truth: held-out ab initio spectra, the test split of the checkpoint's training grid
(`phdl.report.split_of_checkpoint`) or of `--grid`; if that grid is absent or not on the emulator's
pixels, emulator outputs at random labels (said so in the output). Each spectrum gets a random
radial velocity (+-150 km/s) and, at each S/N, one noise realisation used both ways:
(a) arrays on the emulator grid: the Doppler-shifted normalised spectrum + noise, fitted with
    `LabelFitter.from_emulator(...).fit(flux, ivar, ids)`;
(b) a LAMOST FITS file written by `phdl.data.mock.write_mock_lamost` (instrumental continuum,
    LAMOST pixels, masks; layouts dr2-8-image .fits.gz, dr9-table, dr1-image in turn), read back
    through `phdl predict --config configs/predict_lamost.yaml` (LamostSpectra).
The writer draws its noise as `default_rng(seed).standard_normal(n_pixels)` x sigma first thing;
(a) replays that draw (checked against the file) divided by the instrumental continuum, with the
file's ivar = 0 pixels, so both see identical noise relative to the continuum. Both fits use the
config's fitter settings. Prints per label the dispersion of (recovered - true) both ways, their
ratio, and the median ratio over labels (summary.json, tables.md): the must-hold is |median ratio - 1| < 10%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPOSITORY / "checkpoints" / "phdl-demo.ckpt"
CONFIG = REPOSITORY / "configs" / "predict_lamost.yaml"
LAYOUT_CYCLE = (("dr2-8-image", ".fits.gz"), ("dr9-table", ".fits"), ("dr1-image", ".fits"))


def held_out_spectra(checkpoint: str, grid: str | None, emulator, n: int):
    """Labels (n, L), normalised flux (n, P) and a description of held-out grid spectra.

    `grid` None: the checkpoint's own training grid, its test split; else every spectrum of
    `grid`. Raises ValueError/OSError when the grid is absent or does not fit the emulator.
    """
    from phdl.grid import GridReader, read_grid_info
    from phdl.report import split_of_checkpoint

    if grid is None:
        grid, rows = split_of_checkpoint(checkpoint, "test")
        what = "held-out spectra (test split)"
    else:
        rows, what = None, "spectra"
    if not os.path.exists(grid):
        raise FileNotFoundError(f"grid file {grid} not found")
    info = read_grid_info(grid, check_values=False)
    rows = (np.arange(info.n_spectra) if rows is None else np.asarray(rows))[:n]
    if info.n_pixels != emulator.n_pixels or not np.allclose(info.wavelength, emulator.wavelength):
        raise ValueError(f"{grid}: wavelength grid differs from the emulator's")
    missing = [name for name in emulator.label_names if name not in info.label_names]
    if missing:
        raise ValueError(f"{grid}: lacks labels {missing}")
    columns = [info.label_names.index(name) for name in emulator.label_names]
    reader = GridReader(grid)
    flux = np.stack([reader.flux(int(i)) for i in rows]).astype(np.float64)
    reader.close()
    labels = info.labels[rows][:, columns].astype(np.float64)
    return labels, flux, f"{rows.size} {what} of {grid} ({info.source})"


def truth_spectra(checkpoint: str, grid: str | None, emulator, n: int, seed: int,
                  source: str = "grid"):  # fmt: skip
    """(labels (n, L) physical, normalised flux (n, P) on the emulator grid, description)."""
    if source == "grid":
        try:
            return held_out_spectra(checkpoint, grid, emulator, n)
        except (ValueError, OSError) as exc:
            reason = str(exc)
    else:
        reason = "--truth emulator"

    import torch

    print(f"NOTE: no held-out grid spectra ({reason}); using emulator outputs at random labels")
    rng = np.random.default_rng(seed)
    scaled = torch.tensor(
        rng.uniform(-0.4, 0.4, (n, len(emulator.label_names))), dtype=torch.float32
    )
    with torch.no_grad():
        flux = emulator(scaled).double().numpy()
        labels = emulator.unscale(scaled).double().numpy()
    return labels, flux, f"{n} emulator outputs at random labels ({reason})"


@contextlib.contextmanager
def own_argv():
    """Hide this script's arguments from LightningCLI (it warns when given args and argv)."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def fitter_settings() -> dict:
    """The LabelFitter init_args of configs/predict_lamost.yaml (without the checkpoint)."""
    with open(CONFIG) as handle:
        settings = dict(yaml.safe_load(handle)["model"]["init_args"])
    settings.pop("checkpoint", None)
    return settings


def write_and_replay(path: Path, wavelength, shifted, model, rv: float, snr: float, seed: int,
                     layout: str, obsid: int, usable: np.ndarray):  # fmt: skip
    """Write one mock file; return (flux, ivar) on the emulator grid with the file's noise.

    flux = shifted model + z sigma / continuum, ivar = (continuum / sigma)^2 (0 where the file's
    ivar is 0), with z the writer's own draw, checked against the file: max |error| [sigma] over
    the pixels the fitter uses (`usable`; the few edge pixels that an RV inside the fitter's
    bounds could move off the grid are never fitted, and there the two Doppler shifts differ).
    """
    from phdl.data.lamost import LAMOST_COEFF0, LAMOST_COEFF1, read_lamost
    from phdl.data.mock import BAND_RANGES, instrumental_continuum, write_mock_lamost

    write_mock_lamost(path, wavelength, model, snr=snr, rv_kms=rv, layout=layout, seed=seed,
                      obsid=obsid, overwrite=True)  # fmt: skip
    observed = read_lamost(path, mask_policy="none")
    file_wavelength = np.asarray(observed.wavelength, dtype=np.float64)
    continuum = instrumental_continuum(file_wavelength)  # the writer's default temperature
    g = (file_wavelength >= BAND_RANGES["g"][0]) & (file_wavelength < BAND_RANGES["g"][1])
    a = np.median(np.sqrt(continuum[g] if g.any() else continuum)) / snr
    sigma = a * np.sqrt(continuum)
    z = np.random.default_rng(seed).standard_normal(file_wavelength.size)
    # emulator pixel i <-> file pixel j on LAMOST's log-linear grid
    lamost_index = np.rint((np.log10(wavelength) - LAMOST_COEFF0) / LAMOST_COEFF1).astype(int)
    first = int(np.rint((np.log10(file_wavelength[0]) - LAMOST_COEFF0) / LAMOST_COEFF1))
    j = lamost_index - first
    inside = (j >= 0) & (j < file_wavelength.size)
    jj = j[inside]
    file_ivar = np.asarray(observed.ivar, dtype=np.float64)
    good = file_ivar[jj] > 0
    # the file's noise in units of sigma: its flux minus the noise-free counts should be z
    implied = (observed.flux[jj] - continuum[jj] * shifted[inside]) / sigma[jj]
    used = good & usable[inside]
    check = float(np.max(np.abs(implied - z[jj])[used])) if used.any() else np.inf
    extra = np.random.default_rng([seed, 1]).standard_normal(wavelength.size)  # off-file pixels
    noise_rel = np.where(inside, 0.0, extra / snr)
    noise_rel[inside] = z[jj] * sigma[jj] / continuum[jj]
    ivar = np.full(wavelength.size, float(snr) ** 2)
    ivar[inside] = np.where(good, (continuum[jj] / sigma[jj]) ** 2, 0.0)
    return shifted + noise_rel, ivar, check


def dispersion_table(truth: np.ndarray, fitted: dict, names: list[str]) -> dict:
    """Per label: bias, dispersion (std) of recovered - true, fraction of fits on a bound."""
    from phdl.fit.fitter import FLAG_BITS

    table = {}
    for k, name in enumerate(names):
        difference = np.asarray(fitted[name], dtype=float) - truth[:, k]
        ok = np.isfinite(difference)
        table[name] = {
            "n": int(ok.sum()),
            "bias": float(np.mean(difference[ok])) if ok.any() else float("nan"),
            "dispersion": float(np.std(difference[ok], ddof=1)) if ok.sum() > 1 else float("nan"),
            "on_bound": float(
                np.mean((np.asarray(fitted[f"{name}_flag"]) & FLAG_BITS["AT_BOUNDARY"]) != 0)
            ),
        }
    return table


def markdown_table(summary: dict, names: list[str]) -> str:
    """Dispersion arrays / files and their ratio per label and S/N (for docs/lamost.md)."""
    snrs = list(summary["snr"])
    header = "| label | " + " | ".join(f"S/N {s}: arrays / files (ratio)" for s in snrs) + " |"
    lines = [header, "|---|" + "---|" * len(snrs)]
    for name in names:
        cells = []
        for s in snrs:
            r = summary["snr"][s]
            a, b = r["arrays"][name]["dispersion"], r["files"][name]["dispersion"]
            cells.append(f"{a:.3g} / {b:.3g} ({r['ratio'][name]:.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| **median ratio over labels** | "
        + " | ".join(f"**{summary['snr'][s]['median_ratio']:.3f}**" for s in snrs)
        + " |"
    )
    return "\n".join(lines) + "\n"


def main(args: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--grid", help="schema-v1 grid (default: the checkpoint's test split)")
    parser.add_argument("--n-spectra", type=int, default=60)
    parser.add_argument("--truth", choices=["grid", "emulator"], default="grid",
                        help="held-out grid spectra (default) or emulator outputs")  # fmt: skip
    parser.add_argument("--snr", type=float, nargs="*", default=[50.0, 100.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPOSITORY / "runs" / "lamost_mock_vs_arrays"))
    options = parser.parse_args(args)

    import torch
    from astropy.table import Table
    from astropy.units import UnitsWarning

    from phdl.cli import main as phdl_main
    from phdl.emulator import load_emulator
    from phdl.fit.doppler import DopplerShift
    from phdl.fit.fitter import LabelFitter

    torch.set_num_threads(options.threads)
    checkpoint = str(Path(options.checkpoint).resolve())
    emulator = load_emulator(checkpoint)
    names = list(emulator.label_names)
    wavelength = np.asarray(emulator.wavelength, dtype=np.float64)
    labels, flux, description = truth_spectra(checkpoint, options.grid, emulator,
                                              options.n_spectra, options.seed, options.truth)  # fmt: skip
    n = labels.shape[0]
    rng = np.random.default_rng(options.seed)
    rv = rng.uniform(-150.0, 150.0, n)
    shifted = DopplerShift(wavelength)(torch.tensor(flux), torch.tensor(rv)).numpy()
    settings = fitter_settings()
    fitter = LabelFitter.from_emulator(emulator, **settings)
    usable = fitter.spectrum_model.usable.cpu().numpy()
    min_good = min(100, wavelength.size // 2)
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    print(f"checkpoint {checkpoint} ({wavelength[0]:.0f}-{wavelength[-1]:.0f} A, "
          f"{wavelength.size} px, {len(names)} labels); truth: {description}")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.1f}; {options.threads} thread(s)")

    summary: dict = {"checkpoint": checkpoint, "truth": description, "n_spectra": n,
                     "threads": options.threads, "snr": {}}  # fmt: skip
    for s, snr in enumerate(options.snr):
        folder = output / f"snr{snr:g}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        catalogue = output / f"snr{snr:g}.fits"
        for stale in (catalogue, output / f"snr{snr:g}_rejects.csv"):
            stale.unlink(missing_ok=True)
        array_flux, array_ivar, checks, ids = [], [], [], []
        for k in range(n):
            layout, suffix = LAYOUT_CYCLE[k % len(LAYOUT_CYCLE)]
            identifier = f"mock-s{snr:g}-{k:04d}"
            seed = options.seed * 1_000_003 + 10_000 * s + k
            f, v, check = write_and_replay(folder / f"{identifier}{suffix}", wavelength,
                                           shifted[k], flux[k], rv[k], snr, seed, layout, k + 1,
                                           usable)  # fmt: skip
            array_flux.append(f)
            array_ivar.append(v)
            checks.append(check)
            ids.append(identifier)
        worst = float(np.max(checks))
        shared = worst < 0.05
        print(f"\nS/N {snr:g}: {n} files written; file noise = replayed draw to "
              f"{worst:.2e} sigma (max) -> {'same' if shared else 'NOT the same'} noise realisation")  # fmt: skip

        start = time.perf_counter()
        parts = []
        for i in range(0, n, options.batch_size):
            stop = min(i + options.batch_size, n)
            parts.append(fitter.fit(torch.tensor(np.stack(array_flux[i:stop])),
                                    torch.tensor(np.stack(array_ivar[i:stop])), ids[i:stop]))  # fmt: skip
        arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        seconds_arrays = time.perf_counter() - start

        start = time.perf_counter()
        with warnings.catch_warnings(), own_argv():  # 'dex' is no FITS unit; phdl writes it
            warnings.simplefilter("ignore", UnitsWarning)
            phdl_main([
                "predict", "--config", str(CONFIG),
                "--model.init_args.checkpoint", checkpoint,
                "--data.init_args.source.init_args.paths", str(folder),
                "--data.init_args.num_workers", "0",
                "--data.init_args.batch_size", str(options.batch_size),
                "--data.init_args.min_good_pixels", str(min_good),
                "--trainer.default_root_dir", str(output),
                "--trainer.enable_progress_bar", "false",
                "--trainer.callbacks.init_args.output", str(catalogue),
            ])  # fmt: skip
            table = Table.read(catalogue)
        seconds_files = time.perf_counter() - start
        row = {str(i): r for r, i in enumerate(table["id"])}
        order = np.array([row[i] for i in ids])
        files = {name: np.asarray(table[name], dtype=float)[order] for name in [*names, "rv"]}
        files["converged"] = np.asarray(table["converged"], bool)[order]
        for name in [*names, "rv"]:
            files[f"{name}_flag"] = np.asarray(table[f"{name}_flag"])[order]

        truth = np.column_stack([labels, rv])
        label_names = [*names, "rv"]
        a = dispersion_table(truth, arrays, label_names)
        b = dispersion_table(truth, files, label_names)
        ratios = {}
        print(f"{'label':7s} {'arrays bias':>11s} {'disp':>9s} {'files bias':>11s} {'disp':>9s} "
              f"{'ratio':>6s}  {'rms(files - arrays)':>19s} {'on bound a/b':>12s}")  # fmt: skip
        for name in label_names:
            ratio = b[name]["dispersion"] / a[name]["dispersion"]
            ratios[name] = ratio
            paired = np.asarray(files[name], float) - np.asarray(arrays[name], float)
            rms_paired = float(np.sqrt(np.nanmean(paired**2)))
            b[name]["rms_files_minus_arrays"] = rms_paired
            print(f"{name:7s} {a[name]['bias']:11.4g} {a[name]['dispersion']:9.4g} "
                  f"{b[name]['bias']:11.4g} {b[name]['dispersion']:9.4g} {ratio:6.3f}  "
                  f"{rms_paired:19.4g} {a[name]['on_bound']:6.0%}/{b[name]['on_bound']:<5.0%}")  # fmt: skip
        label_ratios = np.array([ratios[name] for name in names])
        median_ratio = float(np.nanmedian(label_ratios))
        worst_label = names[int(np.nanargmax(np.abs(label_ratios - 1)))]
        passed = abs(median_ratio - 1) < 0.1
        print(f"median ratio over the {len(names)} labels {median_ratio:.3f} "
              f"(range {np.nanmin(label_ratios):.3f}-{np.nanmax(label_ratios):.3f}, worst {worst_label}); "
              f"|ratio - 1| < 10%: {'PASS' if passed else 'FAIL'}; "
              f"a dispersion from {n} spectra scatters by ~1/sqrt(2N) = {1 / np.sqrt(2 * n):.0%} "
              f"between independent noise draws")  # fmt: skip
        print(f"converged: arrays {np.mean(arrays['converged']):.0%}, files "
              f"{np.mean(files['converged']):.0%}; time arrays {seconds_arrays / n:.2f} s/spectrum, "
              f"files (write excluded, read + fit) {seconds_files / n:.2f} s/spectrum; "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        summary["snr"][f"{snr:g}"] = {
            "same_noise": shared,
            "noise_check_sigma": worst,
            "arrays": a,
            "files": b,
            "ratio": ratios,
            "median_ratio": median_ratio,
            "worst_label": worst_label,
            "pass": passed,
            "converged_arrays": float(np.mean(arrays["converged"])),
            "converged_files": float(np.mean(files["converged"])),
            "seconds_per_spectrum_arrays": seconds_arrays / n,
            "seconds_per_spectrum_files": seconds_files / n,
            "load_average": os.getloadavg()[0],
        }
    (output / "tables.md").write_text(markdown_table(summary, [*names, "rv"]))
    with open(output / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=1)
    print(f"\nwrote {output / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
