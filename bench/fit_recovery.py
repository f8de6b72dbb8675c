"""Label recovery, Cramer-Rao bounds and throughput of the fitter (measured, never assumed).

    python bench/fit_recovery.py --checkpoint CKPT [--grid HELD_OUT.h5] [--n-spectra 64]
        [--snr 30 50 100] [--batch-size 32] [--threads 2] [--out runs/bench/fit_recovery]

Truth spectra come from `--grid` (a schema-v1 grid with gradient spectra, e.g. written by
phdl.synth or phdl.data.toy; its test split by default) or, without it, from the emulator itself
at random labels (then the "gradient spectra" are the emulator's exact Jacobian). Each truth
spectrum gets a random continuum (Chebyshev, order 2), a random RV (+-150 km/s) and Gaussian noise
at each S/N, and is fitted from scratch (no initial guess). Reported per label and S/N: bias,
dispersion, the median Cramer-Rao bound (inverse Fisher matrix from the gradient spectra and the
noise, continuum and RV marginalised), their ratio, and the median fitted error. Throughput: s per
spectrum (batched) vs number of fitted labels, LM vs CMA-ES+LM, with freed memory kept for reuse
as in `phdl predict` (`--malloc-default`: glibc's settings, 2.2x slower on 2 cores). Writes JSON
and a one-to-one PNG coloured by [Fe/H] to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

import numpy as np
import torch

from phdl.data.grid import split_indices
from phdl.emulator import load_emulator
from phdl.fit.doppler import DopplerShift
from phdl.fit.fitter import LabelFitter
from phdl.fit.model import SpectrumModel
from phdl.grid import GridReader, read_grid_info
from phdl.labels import pretty_label
from phdl.malloc import keep_freed_memory


def truth_from_emulator(emulator, n: int, seed: int):
    """Labels (n, L), flux (n, P) and Jacobian d flux / d label (n, L, P) at random labels."""
    rng = np.random.default_rng(seed)
    scaled = torch.tensor(
        rng.uniform(-0.4, 0.4, (n, len(emulator.label_names))), dtype=torch.float64
    )
    model = SpectrumModel(emulator, fit_rv=False)
    flux, jacobian = model.emulate_with_jacobian(scaled)  # per scaled label
    span = torch.as_tensor(emulator.label_scaling.span(), dtype=torch.float64)
    gradients = (jacobian / span).permute(0, 2, 1)
    labels = emulator.unscale(scaled.float()).double()
    return labels.numpy(), flux.numpy(), gradients.numpy()


def truth_from_grid(path: str, emulator, n: int, split: str, seed: int):
    """Labels, flux and gradient spectra (NaN where absent) of n grid spectra of one split."""
    info = read_grid_info(path)
    if info.n_pixels != emulator.n_pixels or not np.allclose(info.wavelength, emulator.wavelength):
        raise ValueError(f"{path}: wavelength grid differs from the emulator's")
    names = list(emulator.label_names)
    missing = [name for name in names if name not in info.label_names]
    if missing:
        raise ValueError(f"{path}: grid lacks labels {missing} of the emulator")
    train, val, test = split_indices(info.n_spectra, 0.1, 0.1, seed)
    rows = {"train": train, "val": val, "test": test, "all": np.arange(info.n_spectra)}[split][:n]
    reader = GridReader(path)
    columns = [info.label_names.index(name) for name in names]
    labels = info.labels[rows][:, columns].astype(np.float64)
    flux = np.stack([reader.flux(int(i)) for i in rows]).astype(np.float64)
    gradients = np.full((rows.size, len(names), info.n_pixels), np.nan)
    for k, name in enumerate(names):
        if name in info.gradient_names:
            g = info.gradient_names.index(name)
            gradients[:, k] = np.stack([reader.gradients(int(i))[g] for i in rows])
    return labels, flux, gradients


def observe(flux: np.ndarray, snr: float, rng: np.random.Generator, wavelength: np.ndarray):
    """Continuum x shifted flux + noise; returns observed flux, ivar, RV [km/s], continuum."""
    n, p = flux.shape
    rv = rng.uniform(-150.0, 150.0, n)
    shifted = DopplerShift(wavelength)(torch.tensor(flux), torch.tensor(rv)).numpy()
    x = np.linspace(-1.0, 1.0, p)
    coefficients = np.stack([rng.uniform(50, 150, n), rng.uniform(-20, 20, n),
                             rng.uniform(-10, 10, n)], axis=1)  # fmt: skip
    continuum = np.polynomial.chebyshev.chebvander(x, 2) @ coefficients.T  # (P, n)
    clean = shifted * continuum.T
    sigma = np.median(clean, axis=1, keepdims=True) / snr
    noisy = clean + sigma * rng.standard_normal(clean.shape)
    return noisy, np.broadcast_to(1.0 / sigma**2, clean.shape).copy(), rv, continuum.T


def cramer_rao(model: SpectrumModel, flux, gradients, ivar, continuum) -> np.ndarray:
    """sqrt(diag F^-1) per label (n, L) [label units], continuum and RV marginalised.

    Labels without gradient spectra are left out of F (taken as known; their bound is NaN).
    """
    have = ~np.isnan(gradients).any(axis=(0, 2))
    flux_t = torch.tensor(flux)
    zero = torch.zeros(flux.shape[0], dtype=torch.float64)
    _, d_flux_dv = model.doppler(flux_t, zero, derivative=True)
    columns = torch.cat(
        [torch.tensor(gradients[:, have]).permute(0, 2, 1), d_flux_dv[..., None]], 2
    )
    weights = torch.tensor(ivar * continuum**2) * model.usable  # normalised-flux units
    sqrt_w = weights.sqrt()
    jacobian = sqrt_w[..., None] * columns
    design = sqrt_w[..., None] * flux_t[..., None] * model.basis[None]
    q, _ = torch.linalg.qr(design)
    projected = jacobian - q @ (q.transpose(1, 2) @ jacobian)
    fisher = projected.transpose(1, 2) @ projected
    # Equilibrate before inverting: a label whose gradient spectra are ~1e-10 (no lines in the
    # window) has a Fisher diagonal ~1e-14 beside ~1e8 for Teff. A plain pseudo-inverse drops
    # that direction as numerical noise and reports a bound near 0; in unit-diagonal form the
    # inverse is well conditioned and such a label gets the huge bound it really has.
    scale = fisher.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300).rsqrt()
    unit = scale[:, :, None] * fisher * scale[:, None, :]
    covariance = (
        scale[:, :, None] * torch.linalg.pinv(unit, hermitian=True, rtol=1e-12) * scale[:, None, :]
    )
    bound = np.full((flux.shape[0], have.size), np.nan)
    bound[:, have] = covariance.diagonal(dim1=-2, dim2=-1)[:, :-1].clamp_min(0).sqrt().numpy()
    return bound


def fit(fitter: LabelFitter, flux, ivar, batch_size: int) -> tuple[dict, float]:
    """Catalogue columns of all spectra and the wall time [s], in batches."""
    parts, start = [], time.perf_counter()
    for i in range(0, flux.shape[0], batch_size):
        stop = min(i + batch_size, flux.shape[0])
        ids = [str(k) for k in range(i, stop)]
        parts.append(fitter.fit(torch.tensor(flux[i:stop]), torch.tensor(ivar[i:stop]), ids))
    elapsed = time.perf_counter() - start
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}, elapsed


def recovery(args, emulator, labels, flux, gradients) -> dict:
    """Bias, dispersion, CRB and fitted errors per label and S/N."""
    names = list(emulator.label_names)
    fitter = LabelFitter.from_emulator(emulator, max_iter=args.max_iter,
                                       jacobian_method=args.jacobian,
                                       label_prior=args.label_prior)  # fmt: skip
    model = fitter.spectrum_model
    results, figure_data = {}, {}
    for snr in args.snr:
        rng = np.random.default_rng(args.seed + int(snr))
        observed, ivar, rv, continuum = observe(flux, snr, rng, emulator.wavelength)
        columns, elapsed = fit(fitter, observed, ivar, args.batch_size)
        bound = cramer_rao(model, flux, gradients, ivar, continuum)
        rows = {}
        for k, name in enumerate(names):
            delta = columns[name] - labels[:, k]
            good = np.isfinite(delta)
            crb = float(np.nanmedian(bound[:, k])) if np.isfinite(bound[:, k]).any() else None
            dispersion = float(np.std(delta[good]))
            rows[name] = {
                "bias": float(np.mean(delta[good])),
                "dispersion": dispersion,
                "median_abs": float(np.median(np.abs(delta[good]))),
                "crb": crb,
                "dispersion_over_crb": dispersion / crb if crb else None,
                "median_fit_error": float(np.nanmedian(columns[f"{name}_err"])),
            }
        rows["rv"] = {"bias": float(np.mean(columns["rv"] - rv)),
                      "dispersion": float(np.std(columns["rv"] - rv)),
                      "median_fit_error": float(np.nanmedian(columns["rv_err"]))}  # fmt: skip
        results[str(snr)] = {
            "labels": rows,
            "converged_fraction": float(np.mean(columns["converged"])),
            "flagged_fraction": float(np.mean(columns["flag"] != 0)),
            "median_chi2_red": float(np.nanmedian(columns["chi2_red"])),
            "seconds_per_spectrum": elapsed / flux.shape[0],
        }
        figure_data[snr] = columns
        print_table(f"S/N {snr}", rows, names)
    if args.out:
        one_to_one(args, names, labels, figure_data)
    return results


def print_table(title: str, rows: dict, names: Sequence[str]) -> None:
    print(f"\n{title}: label, bias, dispersion, CRB, dispersion/CRB, median fitted error")
    for name in [*names, "rv"]:
        r = rows[name]
        crb = "-" if r.get("crb") is None else f"{r['crb']:.4g}"
        ratio = "-" if r.get("dispersion_over_crb") is None else f"{r['dispersion_over_crb']:.2f}"
        print(f"  {name:8s} {r['bias']:+.4g} {r['dispersion']:.4g} {crb} {ratio} "
              f"{r['median_fit_error']:.4g}")  # fmt: skip


def one_to_one(args, names, labels, figure_data) -> None:
    """Fitted vs true label per label, at the middle S/N, coloured by true [Fe/H]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snr = sorted(figure_data)[len(figure_data) // 2]
    columns = figure_data[snr]
    colour = labels[:, names.index("fe_h")] if "fe_h" in names else None
    n_cols = 6
    n_rows = int(np.ceil(len(names) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3 * n_cols, 3 * n_rows), squeeze=False)
    for ax, (k, name) in zip(axes.flat, enumerate(names)):
        points = ax.scatter(labels[:, k], columns[name], c=colour, s=6, cmap="viridis")
        low, high = labels[:, k].min(), labels[:, k].max()
        ax.plot([low, high], [low, high], "k-", lw=0.6)
        ax.set_title(pretty_label(name), fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if colour is not None:
        fig.colorbar(points, ax=axes, label="[Fe/H] (true)", shrink=0.6)
    fig.suptitle(f"fitted vs true, S/N {snr}")
    path = os.path.join(args.out, "one_to_one.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"\nfigure: {path}")


def throughput(args, emulator, flux) -> dict:
    """s/spectrum vs number of fitted labels (LM) and LM vs CMA-ES+LM, at S/N 50."""
    names = list(emulator.label_names)
    n = min(args.throughput_spectra, flux.shape[0])
    rng = np.random.default_rng(args.seed)
    observed, ivar, _, _ = observe(flux[:n], 50.0, rng, emulator.wavelength)
    counts = sorted({c for c in (4, 10, 20, len(names)) if c <= len(names)})
    report: dict[str, dict] = {"lm": {}, "lm_finite_difference": {}, "cmaes+lm": {}}
    runs = [(count, "forward") for count in counts] + [(len(names), "finite_difference")]
    for count, method in runs:
        fitter = LabelFitter.from_emulator(
            emulator, fit_labels=names[:count], max_iter=args.max_iter, jacobian_method=method
        )
        fit(fitter, observed[:2], ivar[:2], 2)  # warm-up
        columns, elapsed = fit(fitter, observed, ivar, args.batch_size)
        key = "lm" if method == "forward" else "lm_finite_difference"
        report[key][str(count)] = {
            "seconds_per_spectrum": elapsed / n,
            "spectra_per_second": n / elapsed,
            "median_iterations": float(np.median(columns["n_iter"])),
            "load_average": os.getloadavg()[0],
        }
        print(f"LM ({method} Jacobian), {count:2d} labels: {elapsed / n:.3f} s/spectrum ({n} "
              f"spectra, batch {args.batch_size}, {torch.get_num_threads()} threads, "
              f"load {os.getloadavg()[0]:.1f})")  # fmt: skip
    m = min(n, args.cmaes_spectra)
    fitter = LabelFitter.from_emulator(emulator, global_search="cmaes", max_iter=args.max_iter,
                                       cmaes_iterations=args.cmaes_iterations)  # fmt: skip
    _, elapsed = fit(fitter, observed[:m], ivar[:m], args.batch_size)
    report["cmaes+lm"][str(len(names))] = {"seconds_per_spectrum": elapsed / m,
                                           "spectra_per_second": m / elapsed,
                                           "cmaes_iterations": args.cmaes_iterations}  # fmt: skip
    print(f"CMA-ES ({args.cmaes_iterations} generations) + LM, {len(names)} labels: "
          f"{elapsed / m:.3f} s/spectrum ({m} spectra)")  # fmt: skip
    return report


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="emulator checkpoint (phdl fit)")
    parser.add_argument("--grid", help="held-out schema-v1 grid with gradient spectra")
    parser.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    parser.add_argument("--n-spectra", type=int, default=64)
    parser.add_argument("--snr", type=float, nargs="+", default=[30.0, 50.0, 100.0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--jacobian", default="forward", choices=["forward", "finite_difference"],
                        help="Jacobian of the recovery fits")  # fmt: skip
    parser.add_argument("--throughput-spectra", type=int, default=64)
    parser.add_argument("--cmaes-spectra", type=int, default=16)
    parser.add_argument("--cmaes-iterations", type=int, default=30)
    parser.add_argument("--skip-recovery", action="store_true", help="throughput only")
    parser.add_argument("--skip-throughput", action="store_true", help="recovery only")
    parser.add_argument("--label-prior", type=json.loads, default=None,
                        help='Gaussian label prior as JSON, e.g. \'{"*_fe": [0.0, 0.25]}\' '
                        "(default: maximum likelihood)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/fit_recovery")
    parser.add_argument("--malloc-default", action="store_true",
                        help="glibc's malloc settings, not those of phdl predict (phdl.malloc)")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # as phdl predict's processes do (LabelFitter.setup): freed memory kept for reuse
    kept = False if args.malloc_default else keep_freed_memory()
    print("malloc: " + ("freed memory kept for reuse (as in phdl predict)" if kept
                        else "glibc defaults (freed big tensors go back to the kernel)"))  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    emulator = load_emulator(args.checkpoint)
    if args.grid:
        labels, flux, gradients = truth_from_grid(args.grid, emulator, args.n_spectra, args.split,
                                                  args.seed)  # fmt: skip
        source = f"grid {args.grid} ({args.split} split)"
    else:
        labels, flux, gradients = truth_from_emulator(emulator, args.n_spectra, args.seed)
        source = "emulator at random labels (gradients = its Jacobian)"
    print(f"truth: {source}; {flux.shape[0]} spectra x {flux.shape[1]} pixels, "
          f"{len(emulator.label_names)} labels")  # fmt: skip
    report = {"checkpoint": args.checkpoint, "truth": source, "n_spectra": int(flux.shape[0]),
              "threads": args.threads, "batch_size": args.batch_size,
              "load_average": os.getloadavg(), "jacobian": args.jacobian,
              "label_prior": args.label_prior,
              "emulator_error": emulator.flux_error is not None,
              "freed_memory_kept": kept}  # fmt: skip
    if not args.skip_throughput:
        report["throughput"] = throughput(args, emulator, flux)
    if not args.skip_recovery:
        report["recovery"] = recovery(args, emulator, labels, flux, gradients)
    path = os.path.join(args.out, "fit_recovery.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"report: {path}")
    return report


if __name__ == "__main__":
    main()
