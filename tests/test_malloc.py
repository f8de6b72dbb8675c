"""phdl.malloc: glibc keeps freed memory for reuse where phdl asks (phdl synth's workers, the
processes of phdl predict)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_RSS_AFTER_FREE = """
import os, sys, torch
from phdl.malloc import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
x = torch.ones(64 << 20, dtype=torch.float32)  # 256 MiB, every page touched
del x
pages = int(open("/proc/self/statm").read().split()[1])
print(kept, pages * os.sysconf("SC_PAGE_SIZE") >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_keep_freed_memory_keeps_a_freed_tensor_for_reuse():
    """With glibc's default a freed 256 MiB tensor goes back to the kernel (the next one is
    page-faulted anew); after keep_freed_memory() it stays resident for reuse."""
    rss = {}
    for mode in ("default", "keep"):
        out = subprocess.run(
            [sys.executable, "-c", _RSS_AFTER_FREE, mode], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        kept, rss[mode] = out.stdout.split()
        rss[mode] = int(rss[mode])
    assert kept == "True"
    assert rss["keep"] - rss["default"] > 200, rss  # MiB
