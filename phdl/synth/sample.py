"""Label sampling for synthetic grids: uniform, Latin hypercube, a user table, a Teff-logg prior."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from phdl.labels import DEFAULT_RANGES

SAMPLINGS = ("uniform", "lhs")
PRIORS = ("none", "stellar")


def on_stellar_sequence(teff: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """True where (Teff, logg) lies near the main sequence, subgiant or red giant branch.

    A coarse band, not an isochrone: dwarfs logg >= 3.9 (Teff <= 7000 K); subgiants 3.3-4.3
    for 5000-6800 K; giants within 0.6 dex of logg = 1 + 2.2 (Teff - 3900)/1300 for Teff < 5400.
    """
    teff = np.asarray(teff, dtype=np.float64)
    logg = np.asarray(logg, dtype=np.float64)
    dwarf = (logg >= 3.9) & (logg <= 5.0) & (teff <= 7000)
    subgiant = (logg >= 3.3) & (logg <= 4.3) & (teff >= 5000) & (teff <= 6800)
    giant_line = 1.0 + 2.2 * (teff - 3900.0) / 1300.0
    giant = (np.abs(logg - giant_line) <= 0.6) & (teff <= 5400)
    return dwarf | subgiant | giant


def _unit_samples(n: int, dim: int, sampling: str, rng: np.random.Generator) -> np.ndarray:
    if sampling == "uniform":
        return rng.random((n, dim))
    if sampling == "lhs":
        strata = np.stack([rng.permutation(n) for _ in range(dim)], axis=1)
        return (strata + rng.random((n, dim))) / n
    raise ValueError(f"phdl synth: unknown sampling '{sampling}'; choose from {SAMPLINGS}")


def sample_labels(
    n: int,
    label_names: Sequence[str],
    ranges: Mapping[str, tuple[float, float]] | None = None,
    sampling: str = "lhs",
    prior: str = "none",
    seed: int = 0,
) -> np.ndarray:
    """(n, L) labels within ranges (default DEFAULT_RANGES); prior 'stellar' rejects off-sequence."""
    ranges = {**DEFAULT_RANGES, **(ranges or {})}
    missing = [name for name in label_names if name not in ranges]
    if missing:
        raise KeyError(f"phdl synth: no sampling range for labels {missing}")
    if prior not in PRIORS:
        raise ValueError(f"phdl synth: unknown prior '{prior}'; choose from {PRIORS}")
    lo = np.array([ranges[name][0] for name in label_names], dtype=np.float64)
    hi = np.array([ranges[name][1] for name in label_names], dtype=np.float64)
    rng = np.random.default_rng(seed)
    if prior == "none":
        return lo + (hi - lo) * _unit_samples(n, len(label_names), sampling, rng)
    if "teff" not in label_names or "logg" not in label_names:
        raise ValueError("phdl synth: the stellar prior needs both 'teff' and 'logg' labels")
    it, ig = list(label_names).index("teff"), list(label_names).index("logg")
    kept: list[np.ndarray] = []
    total = 0
    for _ in range(200):
        batch = lo + (hi - lo) * _unit_samples(max(4 * n, 64), len(label_names), sampling, rng)
        batch = batch[on_stellar_sequence(batch[:, it], batch[:, ig])]
        kept.append(batch)
        total += len(batch)
        if total >= n:
            return np.concatenate(kept)[:n]
    raise ValueError("phdl synth: the Teff/logg ranges hardly overlap the stellar prior")


def read_label_table(path: str | Path, label_names: Sequence[str]) -> np.ndarray:
    """Labels from a CSV with a header naming labels; absent [X/Fe] columns are 0, vmic 1 km/s."""
    path = Path(path)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path}: the label table is empty")
    columns = set(rows[0])
    unknown = sorted(columns - set(label_names))
    if unknown:
        raise ValueError(f"{path}: unknown label columns {unknown}; known: {list(label_names)}")
    required = [name for name in ("teff", "logg", "fe_h") if name in label_names]
    absent = [name for name in required if name not in columns]
    if absent:
        raise ValueError(f"{path}: the label table needs columns {absent}")
    defaults = {"vmic": 1.0}
    out = np.empty((len(rows), len(label_names)))
    for i, row in enumerate(rows):
        for j, name in enumerate(label_names):
            value = row.get(name, "")
            try:
                out[i, j] = float(value) if value not in ("", None) else defaults.get(name, 0.0)
            except ValueError:
                raise ValueError(
                    f"{path}: row {i + 2}, column '{name}': not a number: {value!r}"
                ) from None
    return out
