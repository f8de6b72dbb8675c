"""Keep freed memory in the process (glibc malloc), so big tensors are not page-faulted anew.

glibc serves an allocation above its mmap threshold (which adapts, up to 32 MiB) with fresh
pages from the kernel and hands them back when it is freed. One full-range spectrum with its
gradient spectra allocates ~1 GB of such tensors, and the first touch of every new page is a
page fault: 300k faults, ~0.8 s of a ~3 s spectrum on the 2-core VM of the speed bench
(bench/synth_speed.py times both ways, with and without --malloc-default). A batch of label
fits allocates Jacobians of (spectra x pixels x labels) at every iteration: on 2 CPU cores the
kernel's page faults took more system time than the fit's own arithmetic, and a batch ran 2.2x
slower (bench/fit_recovery.py --malloc-default). Raising the mmap and trim thresholds makes
glibc keep freed memory and reuse it; resident memory then stays near the peak.

The setting is process-wide, so phdl makes it only in processes that it runs for one job:
`phdl synth`'s workers (or itself with one worker) and the processes of `phdl predict`
(LabelFitter.setup, `keep_freed_memory: false` to leave it). Library users who synthesise or fit
many spectra in a process of their own can call `keep_freed_memory()` themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

#: mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: the largest value mallopt takes (an int): allocations above 2 GiB are still mmap'd
_LIMIT = 2**31 - 1


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory for reuse; False where this is not glibc (a no-op)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))
