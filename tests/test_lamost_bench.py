"""Smoke runs of the LAMOST benches with the shipped emulator (a few spectra each, < 20 s).

bench/lamost_real.py needs the real files (../shared/reference/lamost or PHDL_LAMOST_REFERENCE)
and skips without them; bench/lamost_mock_vs_arrays.py needs nothing but the checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from benches import load_bench

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "phdl-demo.ckpt"
REFERENCE = Path(
    os.environ.get("PHDL_LAMOST_REFERENCE", ROOT.parent / "shared" / "reference" / "lamost")
)
needs_checkpoint = pytest.mark.skipif(not CHECKPOINT.exists(), reason=f"no {CHECKPOINT}")


@needs_checkpoint
@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"no LAMOST reference data at {REFERENCE}")
def test_lamost_real_limit_runs_every_part(tmp_path):
    summary = load_bench("lamost_real").main(
        ["--limit", "2", "--output", str(tmp_path), "--reference", str(REFERENCE),
         "--sets", "dr1-lasp", "dr8-repeats", "dr7-mdwarfs",
         "--fit-labels", "teff", "logg", "vmic", "fe_h"]  # 4 labels: a fast smoke
    )  # fmt: skip
    assert set(summary["quality"]) == {"dr1-lasp", "dr8-repeats", "dr7-mdwarfs"}
    assert all(q["files"] >= 2 for q in summary["quality"].values())
    assert summary["reference"]["dr1-lasp"]["matched"] == 2
    assert summary["repeats"]["pairs"] >= 1  # whole repeat groups are taken
    assert set(summary["repeats"]["labels"]) == {"teff", "logg", "vmic", "fe_h", "rv"}
    assert (tmp_path / "lamost_real.png").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["limit"] == 2


@needs_checkpoint
def test_mock_vs_arrays_share_the_noise_realisation(tmp_path):
    summary = load_bench("lamost_mock_vs_arrays").main(
        ["--n-spectra", "3", "--snr", "50", "--output", str(tmp_path)]
    )
    result = summary["snr"]["50"]
    assert result["same_noise"] and result["noise_check_sigma"] < 1e-3
    assert set(result["ratio"]) >= {"teff", "logg", "fe_h", "rv"}
