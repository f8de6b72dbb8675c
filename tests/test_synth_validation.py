"""phdl.synth against Turbospectrum v19.1's benchmark (the cheap pieces of bench/synth_validation.py).

Needs ../shared/reference/synth-benchmarks (or PHDL_SYNTH_BENCHMARKS); skipped without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from benches import load_bench

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(
    os.environ.get("PHDL_SYNTH_BENCHMARKS", ROOT.parent / "shared/reference/synth-benchmarks")
)
TS = BENCHMARKS / "turbospectrum2019-COM-v19.1"

pytestmark = pytest.mark.skipif(not TS.is_dir(), reason=f"{TS} not present")


@pytest.fixture(scope="module")
def validation():
    return load_bench("synth_validation")


@pytest.fixture(scope="module")
def vald(validation):
    return validation.read_turbospectrum_linelist(TS / "linelists/vald-6700-6720.list")


def test_turbospectrum_line_list_is_read(validation, vald) -> None:
    table, dropped = vald
    assert dropped == {"TiO I": 309}  # TiO is not in phdl's EOS
    assert len(table.wavelength_air) == 1106
    li7 = (table.species == 3.0) & (table.mass_amu == 7.0)
    assert li7.sum() == 2
    # 7Li 6707.921: log gf -0.002 plus log10 of Turbospectrum's isotope fraction 0.925
    assert np.isclose(table.log_gf[li7].max(), -0.002 + np.log10(0.925))
    abo = table.vdw_sigma > 0
    assert np.isclose(table.vdw_sigma[abo][0] / validation.BOHR_AREA, 346.0)


@pytest.mark.parametrize("model", ["sun", "giant"])
def test_continuum_opacity_matches_turbospectrum(validation, vald, model) -> None:
    """Total continuum opacity per gram at 6700-6820 A within 2 % (median) of babsma's, where
    lines form (log tau_5000 from -5 to 0.5); measured 0.987-1.000 (docs/synth.md)."""
    name = validation.MARCS_SUN if model == "sun" else validation.MARCS_GIANT
    opac = validation.read_contopac(TS / "contopac" / f"{name}opac-benchmark")
    abundances = validation.read_turbospectrum_abundances(TS / "logflux-benchmark")
    assert abundances[26] == 7.45 and abundances[3] == 1.05
    result = validation.compare_continuum(opac, abundances, vald[0])
    rows = [r for r in result["rows"] if r["log_tau_std"] != "[+0.5, +1.5)"]
    assert len(rows) == 3
    for row in rows:
        assert abs(row["total_ratio_median"] - 1.0) < 0.02, row
        lo, hi = row["total_ratio_range"]
        assert 0.95 < lo and hi < 1.05, row
    assert abs(result["rho_ratio_median"] - 1.0) < 0.01
