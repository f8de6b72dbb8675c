"""A synthetic stand-in grid with exact gradient spectra, for demos and benchmarks.

Until `phdl.synth` lands, `phdl fit --config configs/fit_demo.yaml` trains on this. Each line j of
element X has optical depth tau_j = a_j exp(c_j . s) (s: labels scaled to [0, 1]) with
c_j[[X/Fe]] = c_j[[Fe/H]] = ln 10 x range (abundance-like), a random Teff/logg/vmic response, and
a Gaussian profile at resolution R; flux = exp(-sum_j tau_j profile_j). Gradients are analytic,
so the gradient prior can be checked against truth. Weak-lined elements get few, weak lines,
like in real LAMOST spectra. Spectra are written in blocks, so grids larger than memory stream.

    python -m phdl.data.toy runs/demo/toy_grid.h5 --n-spectra 512 --n-pixels 3800
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from phdl.grid import create_grid, write_spectra
from phdl.labels import DEFAULT_LABELS, DEFAULT_RANGES

#: Lines per element in the toy line list; elements not listed get 3 (weak-lined).
LINES_PER_ELEMENT = {"fe_h": 120, "mg_fe": 15, "ca_fe": 15, "ti_fe": 20, "si_fe": 10, "c_fe": 10}


@dataclass(frozen=True)
class ToyLineList:
    """Lines of a toy grid: centres [Angstrom], strengths a_j, label responses c_j (J, L)."""

    centre: np.ndarray
    strength: np.ndarray
    response: np.ndarray


def toy_line_list(label_names: Sequence[str], wavelength: np.ndarray, seed: int = 0) -> ToyLineList:
    """A random but reproducible line list for labels `label_names` within `wavelength`."""
    rng = np.random.default_rng(seed)
    names = list(label_names)
    lo = np.array([DEFAULT_RANGES.get(n, (0.0, 1.0))[0] for n in names])
    hi = np.array([DEFAULT_RANGES.get(n, (0.0, 1.0))[1] for n in names])
    centres, strengths, responses = [], [], []
    for name in names:
        if name in ("teff", "logg", "vmic"):
            continue
        n_lines = LINES_PER_ELEMENT.get(name, 3)
        strong = name in LINES_PER_ELEMENT
        centres.append(rng.uniform(wavelength[0], wavelength[-1], n_lines))
        # log-uniform strengths: weak-lined elements stay weak
        strengths.append(10 ** rng.uniform(-2.5, -0.7 if strong else -1.2, n_lines))
        c = np.zeros((n_lines, len(names)))
        for stellar, (low, high) in (
            ("teff", (-2.5, 1.0)),
            ("logg", (-0.6, 0.6)),
            ("vmic", (0.0, 0.3)),
        ):
            if stellar in names:
                c[:, names.index(stellar)] = rng.uniform(low, high, n_lines)
        for abundance in {name, "fe_h"} & set(names):
            column = names.index(abundance)
            c[:, column] = np.log(10.0) * (hi[column] - lo[column])
        responses.append(c)
    return ToyLineList(
        np.concatenate(centres), np.concatenate(strengths), np.concatenate(responses)
    )


def toy_spectra(
    labels: np.ndarray,
    label_names: Sequence[str],
    wavelength: np.ndarray,
    lines: ToyLineList,
    resolution: float = 1800.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Flux (N, P) and exact gradients d flux / d label (N, L, P) [per label unit] of toy stars."""
    names = list(label_names)
    lo = np.array([DEFAULT_RANGES.get(n, (0.0, 1.0))[0] for n in names])
    hi = np.array([DEFAULT_RANGES.get(n, (0.0, 1.0))[1] for n in names])
    s = (np.asarray(labels, dtype=np.float64) - lo) / (hi - lo)  # (N, L) in [0, 1]
    sigma = lines.centre / (2.3548 * resolution)
    profile = np.exp(-0.5 * ((wavelength[None, :] - lines.centre[:, None]) / sigma[:, None]) ** 2)
    tau = lines.strength[None, :] * np.exp(s @ lines.response.T)  # (N, J)
    flux = np.exp(-tau @ profile)  # (N, P)
    # d flux / d s_l = -flux * sum_j tau_j c_jl profile_j; / (hi - lo) for physical units.
    d_tau = np.einsum("nj,jl->nlj", tau, lines.response)  # (N, L, J)
    gradients = -flux[:, None, :] * (d_tau @ profile) / (hi - lo)[None, :, None]
    return flux.astype(np.float32), gradients.astype(np.float32)


def write_toy_grid(
    path: str | os.PathLike,
    n_spectra: int = 512,
    n_pixels: int = 3800,
    label_names: Sequence[str] = DEFAULT_LABELS,
    seed: int = 0,
    resolution: float = 1800.0,
    block: int = 64,
) -> None:
    """Write a schema-v1 toy grid, `block` spectra at a time (memory does not grow with N)."""
    rng = np.random.default_rng(seed)
    names = list(label_names)
    lo = np.array([DEFAULT_RANGES.get(n, (0.0, 1.0))[0] for n in names])
    hi = np.array([DEFAULT_RANGES.get(n, (0.0, 1.0))[1] for n in names])
    labels = lo + (hi - lo) * rng.random((n_spectra, len(names)))
    # LAMOST-like log-linear sampling (log10 step 1e-4) from 3900 A
    wavelength = 10 ** (np.log10(3900.0) + 1e-4 * np.arange(n_pixels))
    lines = toy_line_list(names, wavelength, seed)
    create_grid(
        path, wavelength, names, labels, names,
        medium="vacuum", resolution=resolution, source="phdl.data.toy",
        normalisation="analytic (no continuum)",
    )  # fmt: skip
    for start in range(0, n_spectra, block):
        indices = np.arange(start, min(start + block, n_spectra))
        flux, gradients = toy_spectra(labels[indices], names, wavelength, lines, resolution)
        write_spectra(path, indices, flux, gradients)


def main(args: Sequence[str] | None = None) -> None:
    """Command line: write a toy grid."""
    parser = argparse.ArgumentParser(
        prog="python -m phdl.data.toy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("path", help="grid file to write (HDF5, schema v1)")
    parser.add_argument("--n-spectra", type=int, default=512)
    parser.add_argument("--n-pixels", type=int, default=3800)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(args)
    os.makedirs(os.path.dirname(os.path.abspath(options.path)), exist_ok=True)
    write_toy_grid(options.path, options.n_spectra, options.n_pixels, seed=options.seed)


if __name__ == "__main__":
    main()
