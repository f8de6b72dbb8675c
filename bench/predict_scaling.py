"""Does `phdl predict` scale with the number of devices under DDP? One run per device count.

Noisy spectra (S/N 100) are made with the emulator itself at random labels, written as an
HDF5 observed file, and fitted by `phdl predict --config configs/predict_demo.yaml` in a fresh
process with `--trainer.devices N` (CPU processes with gloo here; GPUs the same way). Each
process gets one thread, so N devices use N cores. Printed: wall time and spectra per second
per device count, the speed-up over one device, and the largest difference between the
merged catalogues (they must agree row by row).

    python bench/predict_scaling.py --devices 1 2 --n-spectra 192

Wall times include process start, DDP set-up and the catalogue merge: the fixed cost that a
run of millions of spectra amortises.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from phdl.data.observed import write_observed_hdf5
from phdl.data.spectrum import ObservedSpectrum
from phdl.emulator import load_emulator
from phdl.fit.writer import read_table

ROOT = Path(__file__).resolve().parents[1]


def make_observed(emulator, path: Path, n: int, snr: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scaled = torch.tensor(
        rng.uniform(-0.4, 0.4, (n, len(emulator.label_names))), dtype=torch.float32
    )
    with torch.no_grad():
        flux = emulator.network(scaled).double().numpy()
    sigma = flux.mean(axis=1, keepdims=True) / snr
    noisy = flux + sigma * rng.standard_normal(flux.shape)
    ivar = np.broadcast_to(1.0 / sigma**2, flux.shape)
    wavelength = np.asarray(emulator.wavelength, dtype=float)
    write_observed_hdf5(
        path, [ObservedSpectrum(f"s{k:05d}", wavelength, noisy[k], ivar[k]) for k in range(n)]
    )


def run(
    checkpoint: str, observed: Path, output: Path, devices: int, batch: int, prior: str | None
) -> float:
    args = [sys.executable, "-m", "phdl", "predict",
            "--config", str(ROOT / "configs/predict_demo.yaml"),
            "--model.init_args.checkpoint", checkpoint,
            "--data.init_args.source.init_args.path", str(observed),
            "--data.init_args.batch_size", str(batch),
            "--data.init_args.num_workers", "0",
            "--trainer.callbacks.output", str(output),
            "--trainer.default_root_dir", str(output.parent),
            "--trainer.enable_progress_bar", "false",
            "--trainer.accelerator", "cpu",
            "--trainer.devices", str(devices)]  # fmt: skip
    if prior:
        args += ["--model.init_args.label_prior", prior]
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    start = time.perf_counter()
    result = subprocess.run(args, env=env, capture_output=True, text=True, cwd=output.parent)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"phdl predict with {devices} devices failed:\n{result.stderr[-3000:]}")
    return wall


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints/phdl-demo.ckpt"))
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--n-spectra", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--snr", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--label-prior", help="JSON, e.g. '{\"*_fe\": [0.0, 0.25]}' (default: none)"
    )
    args = parser.parse_args(argv)
    args.checkpoint = str(Path(args.checkpoint).resolve())  # phdl predict runs elsewhere
    emulator = load_emulator(args.checkpoint)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        observed = tmp / "observed.h5"
        make_observed(emulator, observed, args.n_spectra, args.snr, args.seed)
        tables = {}
        for devices in args.devices:
            output = tmp / f"devices{devices}" / "catalogue.fits"
            output.parent.mkdir()
            wall = run(args.checkpoint, observed, output, devices, args.batch_size,
                       args.label_prior)  # fmt: skip
            tables[devices] = read_table(str(output))
            load = os.getloadavg()[0]
            result[devices] = {"wall_seconds": wall, "spectra_per_second": args.n_spectra / wall}
            print(f"{devices} device(s), 1 thread each: {wall:6.1f} s for {args.n_spectra} spectra "
                  f"= {args.n_spectra / wall:5.2f} spectra/s (load {load:.2f})", flush=True)  # fmt: skip
        base = min(args.devices)
        reference = tables[base]
        order = np.argsort(np.asarray(reference["id"]).astype(str))
        for devices in args.devices:
            table = tables[devices]
            assert len(table) == args.n_spectra, f"{devices} devices: {len(table)} rows"
            other = np.argsort(np.asarray(table["id"]).astype(str))
            diff = max(
                float(np.nanmax(np.abs(np.asarray(table[c])[other] - np.asarray(reference[c])[order])
                                / np.asarray(reference[f"{c}_err"])[order]))
                for c in emulator.label_names
            )  # largest difference in units of the fitted error  # fmt: skip
            speedup = result[base]["wall_seconds"] / result[devices]["wall_seconds"]
            result[devices].update(speedup=speedup, max_difference_in_errors=diff)
            print(f"{devices} device(s): speed-up {speedup:.2f}x over {base}; largest label "
                  f"difference from the {base}-device catalogue {diff:.2e} x its fitted error")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
