"""LAMOST reading + preprocessing throughput on the real reference files (files/s per core).

    python bench/lamost_io.py [--data DIR] [--repeat 3] [--workers 0 2]

Measures, on every FITS file under DIR (default: ../shared/reference/lamost, 430 files):
- read: `read_lamost` only (open, identify the layout, arrays, header meta, bad-pixel mask);
- read+preprocess: plus bad regions and resampling onto a 3800-pixel emulator-like grid;
- the same through `SpectrumFileDataset` and a DataLoader with N workers (files/s in total).
Single-process numbers are files per second on one core. Prints a table and the rejects.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np

from phdl.data.files import SpectrumFileDataset, iter_spectra, resolve_paths
from phdl.data.lamost import read_lamost
from phdl.data.preprocess import Preprocessor

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/reference/lamost"


def _best_rate(function, paths: list[str], repeat: int) -> float:
    """Best of `repeat` passes, in files per second."""
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for path in paths:
            function(path)
        best = min(best, time.perf_counter() - start)
    return len(paths) / best


def main(args: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="directory of LAMOST files")
    parser.add_argument("--repeat", type=int, default=3, help="passes; the best is reported")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    options = parser.parse_args(args)

    paths = resolve_paths(options.data)
    if not paths:
        raise SystemExit(f"{options.data}: no FITS files")
    n_gzip = sum(p.endswith(".gz") for p in paths)
    size_mb = sum(os.path.getsize(p) for p in paths) / 1e6
    grid = np.exp(np.linspace(np.log(3900.0), np.log(8800.0), 3800))  # emulator-like grid
    preprocess = Preprocessor(wavelength=grid)
    print(f"{len(paths)} files ({n_gzip} gzip, {size_mb:.1f} MB) in {options.data}")
    print(f"cpu: {os.cpu_count()} visible cores; load average {os.getloadavg()[0]:.2f}")

    # warm the page cache and imports once
    for path in paths:
        read_lamost(path)
    results = {
        "read": _best_rate(read_lamost, paths, options.repeat),
        "read+preprocess": _best_rate(lambda p: preprocess(read_lamost(p)), paths, options.repeat),
    }
    gz = [p for p in paths if p.endswith(".gz")]
    plain = [p for p in paths if not p.endswith(".gz")]
    if gz and plain:
        results["read (gzip files)"] = _best_rate(read_lamost, gz, options.repeat)
        results["read (plain files)"] = _best_rate(read_lamost, plain, options.repeat)
        # how much of a gzip read is decompression alone
        results["gunzip only"] = _best_rate(lambda p: gzip.open(p).read(), gz, options.repeat)

    dataset = SpectrumFileDataset(paths, preprocess)
    n_rejects = 0
    for workers in options.workers:
        best = np.inf
        for _ in range(options.repeat):
            start = time.perf_counter()
            n, rejects = 0, []
            for spectra, batch_rejects in iter_spectra(dataset, num_workers=workers, batch_size=32):
                n += len(spectra)
                rejects.extend(batch_rejects)
            best = min(best, time.perf_counter() - start)
        n_rejects = len(rejects)
        results[f"dataset, {workers} workers (total)"] = len(paths) / best
        for reject in rejects:
            print(f"  reject: {reject.path}: {reject.reason}")

    print(f"{'step':<36} {'files/s':>9} {'ms/file':>8}")
    for name, rate in results.items():
        print(f"{name:<36} {rate:9.0f} {1e3 / rate:8.2f}")
    print(f"rejects: {n_rejects} of {len(paths)}")
    return results


if __name__ == "__main__":
    main()
