"""Peak memory of `phdl fit` on a grid larger than it should ever hold: lazy reads or bust.

Writes a ~2 GB schema-v1 toy grid (streamed, block by block), then trains the demo emulator on
it for a few hundred steps in a subprocess (`python -m phdl fit`, DataLoader workers included)
while sampling the memory of that process tree from /proc (Linux: PSS, which splits the pages
forked workers share with their parent, and RSS). Passes if the peak PSS sum is below 1.5 GiB:

    python bench/lazy_memory.py                 # ~2 GB grid in a temporary folder, 300 steps
    python bench/lazy_memory.py --grid-gb 5 --steps 500 --workers 4 --keep runs/bench

Measured here (torch 2.13 CPU, 2 cores, demo transformer, batch 32, gradient term on): the peak
does not grow with the grid (0.05 GB and 2 GB grids give the same ~1.1-1.2 GiB); it is torch,
Lightning and the activations of the forward-mode gradient term. Each forked DataLoader worker
adds 0.1-0.2 GiB: glibc keeps freed tensor memory in the trainer's heap and reuses it, and every
page the trainer rewrites after the fork stays behind as the worker's private copy. Running with
`MALLOC_MMAP_THRESHOLD_=131072` (large tensors always mapped fresh) halved the whole tree's
footprint with 2 workers (1.6 -> 0.8 GiB) but slowed CPU steps.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py

from phdl.data.toy import write_toy_grid
from phdl.labels import DEFAULT_LABELS

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
LIMIT_BYTES = 1.5 * GIB


def _family(root: int) -> set[int]:
    """Process `root` and all its descendants (from /proc/*/stat)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    family, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in family]
        family.update(children)
        frontier.extend(children)
    return family


def _field_kib(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_bytes(root: int) -> tuple[int, int, dict[int, int]]:
    """(PSS sum, RSS sum, PSS per process) [bytes] of process `root` and its descendants.

    PSS (proportional set size) splits pages shared between the forked DataLoader workers and
    their parent, so its sum is the memory the run really occupies; summed RSS counts the
    shared torch pages once per process.
    """
    per_process = {}
    rss = 0
    for pid in _family(root):
        per_process[pid] = _field_kib(f"/proc/{pid}/smaps_rollup", "Pss:") * 1024
        rss += _field_kib(f"/proc/{pid}/status", "VmRSS:") * 1024
    return sum(per_process.values()), rss, per_process


class PeakSampler(threading.Thread):
    """Samples tree_memory_bytes(pid) every `interval` seconds; keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.start_time = pid, interval, time.perf_counter()
        self.peak_pss = self.peak_rss = self.peak_main = 0
        self.at_peak: dict[int, int] = {}
        self.peak_time = 0.0
        self.running = True

    def run(self) -> None:
        while self.running:
            pss, rss, per_process = tree_memory_bytes(self.pid)
            if pss > self.peak_pss:
                self.peak_pss, self.at_peak = pss, per_process
                self.peak_time = time.perf_counter() - self.start_time
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_main = max(self.peak_main, per_process.get(self.pid, 0))
            time.sleep(self.interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid-gb", type=float, default=2.0, help="grid file size [GB]")
    parser.add_argument("--n-pixels", type=int, default=3800)
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps to train")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader worker processes (each adds 0.1-0.2 GiB: see the module docstring)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep grid and run in")
    options = parser.parse_args()

    work = options.keep or Path(tempfile.mkdtemp(prefix="phdl-lazy-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    grid = work / "grid.h5"
    n_labels = len(DEFAULT_LABELS)
    bytes_per_spectrum = 4 * options.n_pixels * (1 + n_labels)  # flux + one gradient per label
    n_spectra = int(options.grid_gb * 1e9 / bytes_per_spectrum)
    if not grid.exists():
        start = time.perf_counter()
        write_toy_grid(grid, n_spectra=n_spectra, n_pixels=options.n_pixels, block=32)
        print(f"wrote {grid}: {n_spectra} spectra x {n_labels} gradients x {options.n_pixels} px, "
              f"{grid.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s")  # fmt: skip
    with h5py.File(grid) as f:
        n_spectra = f["flux"].shape[0]
    writer_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"grid writer peak RSS: {writer_peak / GIB:.2f} GiB (this process)")

    command = [
        sys.executable, "-m", "phdl", "fit",
        "--config", str(REPO / "configs/fit_demo.yaml"),
        "--data.init_args.path", str(grid),
        "--data.init_args.batch_size", str(options.batch_size),
        "--data.init_args.num_workers", str(options.workers),
        "--trainer.max_steps", str(options.steps),
        "--trainer.max_epochs", "-1",
        "--trainer.val_check_interval", str(min(100, options.steps)),
        "--trainer.check_val_every_n_epoch", "null",
        "--trainer.limit_val_batches", "4",
        "--trainer.logger", str(REPO / "configs/logger/csv.yaml"),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=work, env=env)
    sampler = PeakSampler(process.pid)
    sampler.start()
    returncode = process.wait()
    sampler.running = False
    sampler.join()
    seconds = time.perf_counter() - start
    largest_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if returncode:
        raise SystemExit(f"phdl fit failed with exit code {returncode}")

    print(f"grid: {n_spectra} spectra, {grid.stat().st_size / 1e9:.2f} GB on disk")
    print(f"trained {options.steps} steps, batch {options.batch_size}, "
          f"{options.workers} workers in {seconds:.0f} s")  # fmt: skip
    print(f"peak PSS of the training process tree (sum, sampled): {sampler.peak_pss / GIB:.2f} GiB")
    print(f"peak RSS of the training process tree (sum, sampled): {sampler.peak_rss / GIB:.2f} GiB")
    print(f"peak PSS of the main training process (sampled): {sampler.peak_main / GIB:.2f} GiB")
    breakdown = ", ".join(
        f"{'main' if pid == process.pid else pid}: {value / GIB:.2f}"
        for pid, value in sorted(sampler.at_peak.items(), key=lambda item: -item[1])
    )
    print(f"at the peak ({sampler.peak_time:.0f} s in), PSS per process [GiB]: {breakdown}")
    print(f"largest single process ru_maxrss: {largest_child / GIB:.2f} GiB")
    verdict = "PASS" if sampler.peak_pss < LIMIT_BYTES else "FAIL"
    print(f"{verdict}: limit {LIMIT_BYTES / GIB:.2f} GiB on the peak PSS sum")
    if verdict == "FAIL":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
