"""Leave-one-out accuracy of the Kurucz grid interpolation (numbers quoted in docs/synth_data.md).

Each interior node is predicted from its two neighbours along one label (Teff, logg or [M/H]),
i.e. interpolated across twice the grid step, and compared with the stored model over
log tau_R in [-5, 1]. For smooth models the error at the real step is about a quarter of this.

Run: python scripts/measure_atmosphere_interpolation.py
"""

from __future__ import annotations

import numpy as np

from phdl.synth.atmosphere import KuruczGrid

AXES = {"teff": 0, "logg": 1, "m_h": 2}


def leave_one_out(grid: KuruczGrid, axis: str, tau_range=(-5.0, 1.0)) -> dict[str, np.ndarray]:
    """|dT| [K], |dlog P|, |dlog Ne| [dex] per interior node whose two neighbours exist."""
    models = grid.models.numpy()  # (teff, logg, m_h, alpha, 4, D) in log10
    present = grid.present.numpy() & ~grid.filled.numpy()
    depth = (grid.log_tau_ross.numpy() >= tau_range[0]) & (
        grid.log_tau_ross.numpy() <= tau_range[1]
    )
    ax = AXES[axis]
    m = np.moveaxis(models, ax, 0)
    p = np.moveaxis(present, ax, 0)
    ok = p[1:-1] & p[:-2] & p[2:]
    pred = 0.5 * (m[:-2] + m[2:])
    true = m[1:-1]
    d_t = np.abs(10 ** pred[..., 0, :] - 10 ** true[..., 0, :])[..., depth].max(-1)
    d_p = np.abs(pred[..., 1, :] - true[..., 1, :])[..., depth].max(-1)
    d_ne = np.abs(pred[..., 2, :] - true[..., 2, :])[..., depth].max(-1)
    return {"dT": d_t[ok], "dlogP": d_p[ok], "dlogNe": d_ne[ok], "n": np.array(ok.sum())}


def solar_neighbourhood(grid: KuruczGrid) -> dict[str, float]:
    """Errors for the 5750/4.5/0.0 node predicted from its neighbours in each label in turn."""
    true = grid.node(5750.0, 4.5, 0.0, 0.0)
    depth = (true.log_tau_ross >= -5.0) & (true.log_tau_ross <= 1.0)
    out = {}
    for axis, (lo, hi) in {
        "teff": (5500.0, 6000.0),
        "logg": (4.0, 5.0),
        "m_h": (-0.5, 0.5),
    }.items():
        labels = {"teff": 5750.0, "logg": 4.5, "m_h": 0.0, "alpha_m": 0.0}
        a = grid.node(**{**labels, axis: lo})
        b = grid.node(**{**labels, axis: hi})
        t = 0.5 * (a.temperature.log10() + b.temperature.log10())
        p = 0.5 * (a.gas_pressure.log10() + b.gas_pressure.log10())
        ne = 0.5 * (a.electron_density.log10() + b.electron_density.log10())
        out[axis] = (
            float((10**t - true.temperature)[depth].abs().max()),
            float((p - true.gas_pressure.log10())[depth].abs().max()),
            float((ne - true.electron_density.log10())[depth].abs().max()),
        )
    return out


def main() -> None:
    """Print the leave-one-out table."""
    grid = KuruczGrid.load()
    print("axis   n     max|dT| K  p95|dT| K  max|dlogP|  p95|dlogP|  max|dlogNe|  p95|dlogNe|")
    for axis in AXES:
        r = leave_one_out(grid, axis)
        print(
            f"{axis:5s} {int(r['n']):5d} {r['dT'].max():10.1f} {np.percentile(r['dT'], 95):10.1f}"
            f" {r['dlogP'].max():11.3f} {np.percentile(r['dlogP'], 95):11.3f}"
            f" {r['dlogNe'].max():12.3f} {np.percentile(r['dlogNe'], 95):12.3f}"
        )
    for axis, (dt, dp, dne) in solar_neighbourhood(grid).items():
        print(
            f"5750/4.5/0.0 from {axis} neighbours: |dT| {dt:.1f} K, |dlogP| {dp:.4f}, "
            f"|dlogNe| {dne:.4f}"
        )


if __name__ == "__main__":
    main()
