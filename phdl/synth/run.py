"""`phdl synth`: build a schema-v1 grid of spectra and gradient spectra with phdl.synth, resumably.

The sampled labels are written to the grid file first (all spectra NaN, `completed` False);
spectra are then computed in worker processes and written as they finish. Rerunning the same
command on an existing file computes only the spectra not yet completed.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from phdl.data.lamost import lamost_wavelength
from phdl.grid import completed_mask, create_grid, write_spectra
from phdl.labels import DEFAULT_LABELS
from phdl.malloc import keep_freed_memory
from phdl.synth.sample import PRIORS, SAMPLINGS, read_label_table, sample_labels
from phdl.synth.spectrum import SynthConfig, Synthesizer, fine_grid

SOURCE = "phdl.synth"
NORMALISATION = "divided by the computed continuum"
_WORKER: dict = {}


def _parse_range(text: str) -> tuple[str, tuple[float, float]]:
    try:
        name, bounds = text.split("=")
        lo, hi = (float(v) for v in bounds.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=LO:HI, got '{text}'") from None
    return name, (lo, hi)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phdl synth", description=__doc__.splitlines()[0])
    p.add_argument("output", help="grid file to create or resume (HDF5, schema v1)")
    p.add_argument("-n", "--n-spectra", type=int, default=1000)
    p.add_argument("--sampling", choices=SAMPLINGS, default="lhs")
    p.add_argument(
        "--prior",
        choices=PRIORS,
        default="none",
        help="'stellar': keep Teff/logg on the MS/SGB/RGB",
    )
    p.add_argument(
        "--range",
        dest="ranges",
        action="append",
        type=_parse_range,
        default=[],
        metavar="NAME=LO:HI",
        help="override a sampling range (repeatable)",
    )
    p.add_argument("--labels-csv", help="CSV of labels to synthesise instead of sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default: CPU count / workers)",
    )
    p.add_argument("--resolution", type=float, default=1800.0)
    p.add_argument(
        "--wavelength-range",
        nargs=2,
        type=float,
        default=(3700.0, 9100.0),
        metavar=("MIN", "MAX"),
        help="Angstrom, LAMOST log-linear vacuum grid",
    )
    p.add_argument("--no-gradients", action="store_true", help="flux only (gradients stay NaN)")
    p.add_argument("--fine-step", type=float, default=SynthConfig.fine_step)
    p.add_argument("--depth-stride", type=int, default=SynthConfig.depth_stride)
    p.add_argument(
        "--wing-stride",
        type=int,
        default=SynthConfig.wing_stride,
        help="fine steps between the nodes of strong lines' far wings (0: all on the fine grid)",
    )
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the synthesis kernels (same numbers, ~2x faster, but ~100 s of"
        " compilation per worker on a cold cache); auto: on when each worker makes at least"
        f" {COMPILE_PAYS:.0e} fine-pixel spectra (~48 full-range LAMOST spectra)",
    )
    p.add_argument(
        "--inputs",
        default="phdl.synth.inputs:default_inputs",
        help="module:function returning SynthInputs (atmospheres, atomic data, lines)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


#: fine pixels x spectra per worker above which compiling the kernels pays back even with a
#: cold compiler cache (bench/synth_speed.py, 2 cores, 2026-12-06: a full-range spectrum with
#: gradients 3.9 s compiled against 7.8 s eager, 167k fine pixels; compilation ~100 s cold,
#: 15-40 s warm: ~48 full-range spectra, or ~370 of the demo's 400 A window)
COMPILE_PAYS = 8e6


def compile_pays(choice: str, wavelength, resolution: float, args, per_worker: float) -> bool:
    """The --compile choice: on, off, or auto (from the fine-grid size and the spectra each
    worker makes)."""
    if choice != "auto":
        return choice == "on"
    _, _, n_fine = fine_grid(wavelength, resolution, SynthConfig(fine_step=args.fine_step))
    return n_fine * per_worker >= COMPILE_PAYS


def _load_factory(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _init_worker(inputs_spec, wavelength, resolution, config, threads) -> None:
    torch.set_num_threads(threads)
    keep_freed_memory()  # this process only synthesises (phdl.malloc)
    inputs = _load_factory(inputs_spec)()
    _WORKER["synth"] = Synthesizer(
        inputs, wavelength=wavelength, resolution=resolution, config=config
    )


def _compute(index: int, labels: np.ndarray, gradients: bool):
    synth: Synthesizer = _WORKER["synth"]
    flux, grads = synth.synthesize(
        torch.as_tensor(labels, dtype=torch.float64), gradients=gradients
    )
    flux = flux.numpy().astype(np.float32)
    if grads is None:
        grads = np.full((len(labels), flux.size), np.nan, dtype=np.float32)
    else:
        grads = grads.numpy().astype(np.float32)
    return index, flux, grads


def _init_pool_worker(*init) -> None:
    """_init_worker in a Pool process; its error is raised by the first task instead (a Pool
    replaces a worker whose initializer fails, again and again, and the run never ends).
    Ctrl-C is the main process's to handle: it terminates the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _init_worker(*init)
    except Exception as error:
        _WORKER["error"] = error


def _compute_task(task: tuple[int, np.ndarray, bool]):
    """_compute of one (index, labels, gradients) task (Pool.imap_unordered passes one)."""
    if "error" in _WORKER:
        raise _WORKER["error"]
    return _compute(*task)


def _prepare(args, path: Path) -> np.ndarray:
    """Create the grid with its labels, or check the existing one; returns the labels."""
    if path.exists():
        with h5py.File(path, "r") as f:
            names = tuple(
                v.decode() if isinstance(v, bytes) else str(v) for v in f["label_names"][...]
            )
            labels = f["labels"][...].astype(np.float64)
            if names != DEFAULT_LABELS:
                raise SystemExit(
                    f"{path}: label names {names} differ from phdl.synth's {DEFAULT_LABELS}"
                )
            if "completed" not in f:
                raise SystemExit(
                    f"{path}: a finished grid (no 'completed' dataset); not overwriting"
                )
        return labels
    if args.labels_csv:
        labels = read_label_table(args.labels_csv, DEFAULT_LABELS)
    else:
        labels = sample_labels(
            args.n_spectra, DEFAULT_LABELS, dict(args.ranges), args.sampling, args.prior, args.seed
        )
    wavelength = lamost_wavelength(*args.wavelength_range, n_pixels=None)
    create_grid(
        path,
        wavelength,
        DEFAULT_LABELS,
        labels,
        DEFAULT_LABELS,
        medium="vacuum",
        resolution=args.resolution,
        source=SOURCE,
        normalisation=NORMALISATION,
        extra_attrs={
            "synth_inputs": args.inputs,
            "synth_fine_step": args.fine_step,
            "synth_wing_stride": args.wing_stride,
            "synth_gradients": not args.no_gradients,
        },
    )
    return labels


def main(argv: Sequence[str] | None = None) -> dict:
    """Run `phdl synth`; returns {'path', 'computed', 'already_done', 'seconds'}."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    path = Path(args.output)
    labels = _prepare(args, path)
    with h5py.File(path, "r") as f:
        wavelength = f["wavelength"][...]
        resolution = float(f.attrs["resolution"])
    done = completed_mask(path)
    todo = np.nonzero(~done)[0]
    summary = {"path": str(path), "computed": 0, "already_done": int(done.sum()), "seconds": 0.0}
    if todo.size == 0:
        return summary
    workers = max(1, min(args.workers, todo.size))
    config = SynthConfig(
        fine_step=args.fine_step,
        depth_stride=args.depth_stride,
        wing_stride=args.wing_stride,
        compile=compile_pays(args.compile, wavelength, resolution, args, todo.size / workers),
    )
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    start = time.time()
    from tqdm import tqdm

    bar = tqdm(total=len(labels), initial=int(done.sum()), disable=args.quiet, desc="phdl synth")
    gradients = not args.no_gradients
    try:
        if workers == 1:
            _init_worker(args.inputs, wavelength, resolution, config, threads)
            for i in todo:
                index, flux, grads = _compute(int(i), labels[i], gradients)
                write_spectra(path, [index], flux[None], grads[None])
                summary["computed"] += 1
                bar.update(1)
        else:
            init = (args.inputs, wavelength, resolution, config, threads)
            tasks = [(int(i), labels[i], gradients) for i in todo]
            # multiprocessing.Pool, not ProcessPoolExecutor: leaving it terminates the workers,
            # so Ctrl-C (or a failure) ends the run at once; after Ctrl-C the executor kept its
            # workers computing queued spectra for minutes, and wrote none of them (measured)
            with multiprocessing.Pool(
                workers, initializer=_init_pool_worker, initargs=init
            ) as pool:
                for index, flux, grads in pool.imap_unordered(_compute_task, tasks):
                    write_spectra(path, [index], flux[None], grads[None])
                    summary["computed"] += 1
                    bar.update(1)
    finally:
        bar.close()
        summary["seconds"] = time.time() - start
    return summary
