"""How fast is phdl.synth? One spectrum (with and without its 30 gradient spectra), the fixed
per-spectrum overhead, and the wall time of a 1000-spectrum `phdl synth` grid on this machine.

    python bench/synth_speed.py                    # everything, 2 threads, best of 3
    python bench/synth_speed.py --skip-full        # the demo window only (quicker)
    python bench/synth_speed.py --grid-spectra 8   # also run `phdl synth` on 8 spectra for real
    python bench/synth_speed.py --malloc-default   # glibc's own malloc settings (see below)
    python bench/synth_speed.py --star 4800 4.6 0  # another star (cool dwarfs have more lines)

Times are best-of-N wall seconds (and the process CPU seconds of that run); on a shared host
the load average is printed with them, since other jobs slow every number here. Each range is
timed eager and with the torch.compile'd kernels (SynthConfig.compile); "first call" includes
the compilation (long with a cold cache: TORCHINDUCTOR_CACHE_DIR, ~/.cache by default).
The process keeps freed memory for reuse as `phdl synth`'s workers do
(phdl.malloc.keep_freed_memory); `--malloc-default` times a process with glibc's
defaults instead, as a library user's own process has them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from phdl.data.lamost import lamost_wavelength
from phdl.labels import DEFAULT_LABELS
from phdl.malloc import keep_freed_memory
from phdl.synth.inputs import default_inputs
from phdl.synth.sample import sample_labels
from phdl.synth.spectrum import SynthConfig, Synthesizer

FULL_RANGE = (3700.0, 9100.0)
DEMO_RANGE = (3900.0, 5800.0)  # phdl.demo's full-size grid
SMALL_RANGE = (5100.0, 5150.0)  # 50 A: what is left is per-spectrum overhead
STAR = {"teff": 5000.0, "logg": 3.0, "fe_h": -0.5}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def best_of(fn, repeats: int) -> tuple[float, float, float]:
    """(best wall seconds, CPU seconds of that run, median wall seconds) over `repeats` calls."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    best = min(runs)
    return best[0], best[1], float(np.median([wall for wall, _ in runs]))


def time_spectra(
    lo: float, hi: float, labels, repeats: int, config: SynthConfig, device: str
) -> dict[str, tuple[float, float]]:
    inputs = default_inputs(0.2)
    # a device context intercepts every torch call (a TorchFunctionMode): on the CPU, where
    # nobody needs one, it cost ~0.3 s of a 2 s spectrum
    with torch.device(device) if device != "cpu" else contextlib.nullcontext():
        synth = Synthesizer(inputs, wavelength=lamost_wavelength(lo, hi), config=config)
        start = time.perf_counter()
        synth.synthesize(labels, gradients=True)  # warm-up: imports, caches, compilation
        first = time.perf_counter() - start
        out = {"first call": (first, float("nan"), first)}
        for gradients in (False, True):
            out["with gradients" if gradients else "flux only"] = best_of(
                lambda g=gradients: synth.synthesize(labels, gradients=g), repeats
            )
    return out


def projected_grid(lo: float, hi: float, n_labels: int, workers: int, seed: int) -> float:
    """Seconds per spectrum (with gradients) at one thread, averaged over prior-sampled stars."""
    torch.set_num_threads(1)
    labels = sample_labels(n_labels, DEFAULT_LABELS, {}, "lhs", "stellar", seed)
    synth = Synthesizer(default_inputs(0.2), wavelength=lamost_wavelength(lo, hi))
    synth.synthesize(labels[0], gradients=True)
    times = []
    for row in labels:
        start = time.perf_counter()
        synth.synthesize(torch.as_tensor(row), gradients=True)
        times.append(time.perf_counter() - start)
    return float(np.mean(times))


def measured_grid(lo: float, hi: float, n_spectra: int, workers: int, seed: int) -> float:
    """Wall seconds of a real `phdl synth` run (worker start-up included)."""
    from phdl.synth import run

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.h5"
        start = time.perf_counter()
        run.main(
            [
                str(path), "-n", str(n_spectra), "--workers", str(workers), "--seed", str(seed),
                "--prior", "stellar", "--wavelength-range", str(lo), str(hi), "--quiet",
            ]
        )  # fmt: skip
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads for one spectrum")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (one spectrum timings only)")
    p.add_argument("--skip-full", action="store_true", help="skip the 3700-9100 A spectrum")
    p.add_argument("--depth-stride", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="phdl synth workers for the grid")
    p.add_argument("--grid-stars", type=int, default=4, help="stars averaged for the projection")
    p.add_argument("--grid-spectra", type=int, default=0, help="also run phdl synth on this many")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--star", type=float, nargs=3, metavar=("TEFF", "LOGG", "FE_H"), help="another star"
    )
    p.add_argument(
        "--malloc-default", action="store_true", help="glibc's malloc settings, not phdl synth's"
    )
    args = p.parse_args()
    kept = False if args.malloc_default else keep_freed_memory()

    torch.set_num_threads(args.threads)
    configs = {
        mode: SynthConfig(depth_stride=args.depth_stride, compile=mode == "compiled")
        for mode in ("eager", "compiled")
    }
    print(f"phdl.synth speed: {args.threads} threads, device {args.device}, {load()}")
    print(
        "malloc: freed memory kept for reuse (as in phdl synth's workers)"
        if kept
        else "malloc: glibc defaults (freed big tensors go back to the kernel)"
    )
    star = dict(zip(("teff", "logg", "fe_h"), args.star)) if args.star else STAR
    print(f"star {star}, best of {args.repeats} (wall s; median wall s; CPU s of the best)")
    ranges = [("demo window", DEMO_RANGE), ("50 A window", SMALL_RANGE)]
    if not args.skip_full:
        ranges.insert(0, ("full range", FULL_RANGE))
    for name, (lo, hi) in ranges:
        times = {}
        for mode, config in configs.items():
            times[mode] = time_spectra(lo, hi, star, args.repeats, config, args.device)
            for kind, (wall, cpu, median) in times[mode].items():
                print(
                    f"  {name:12s} {lo:.0f}-{hi:.0f} A  {mode:8s} {kind:15s} {wall:7.2f} s"
                    f"  (median {median:5.2f} s, CPU {cpu:6.2f} s; {args.threads} threads,"
                    f" {load()})"
                )
        for kind in ("flux only", "with gradients"):
            ratio = times["eager"][kind][0] / times["compiled"][kind][0]
            print(f"  {name:12s} compiled is {ratio:.2f}x faster than eager ({kind}, same run)")
    if args.device != "cpu" or args.grid_stars < 1 or args.workers < 1:
        return  # --grid-stars 0 / --workers 0: one-spectrum timings only
    per = projected_grid(*DEMO_RANGE, args.grid_stars, args.workers, args.seed)
    hours = 1000 * per / args.workers / 3600
    print(
        f"1000-spectrum grid, demo window {DEMO_RANGE[0]:.0f}-{DEMO_RANGE[1]:.0f} A, with gradients:"
        f" {per:.2f} s per spectrum on one thread ({args.grid_stars} prior-sampled stars) ->"
        f" {hours * 60:.0f} min on {args.workers} workers (projected; {load()})"
    )
    if args.grid_spectra:
        seconds = measured_grid(*DEMO_RANGE, args.grid_spectra, args.workers, args.seed)
        print(
            f"phdl synth, {args.grid_spectra} spectra, {args.workers} workers: {seconds:.1f} s"
            f" -> {1000 * seconds / args.grid_spectra / 60:.0f} min per 1000 (measured; {load()})"
        )


if __name__ == "__main__":
    main()
