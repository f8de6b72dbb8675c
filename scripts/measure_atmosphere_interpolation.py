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


def leave_one_out(
    grid: KuruczGrid,
    axis: str,
    tau_range: tuple[float, float] = (-5.0, 1.0),
    teff_range: tuple[float, float] = (3500.0, 8000.0),
) -> dict[str, np.ndarray]:
    """|dT| [K], |dlog P|, |dlog Ne| [dex] per interior node whose two neighbours exist.

    Filled holes and the few poorly converged models (tau_deviation > 0.05 dex) take no part.
    """
    models = grid.models.numpy()  # (teff, logg, m_h, alpha, 4, D) in log10
    teff = grid.nodes["teff"].numpy()
    in_teff = (teff >= teff_range[0]) & (teff <= teff_range[1])
    present = (
        grid.present.numpy()
        & ~grid.filled.numpy()
        & ~(grid.tau_deviation.numpy() > 0.05)
        & in_teff[:, None, None, None]
    )
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
    print(
        "| Teff range | log tau_R | axis | n | |dT| K max / p95 / median | |dlog P| max / p95 / median"
        " | |dlog Ne| max / p95 / median |"
    )
    print("|---|---|---|---|---|---|---|")
    for teff_range in ((3500.0, 8000.0), (4500.0, 7000.0)):
        for tau_range in ((-5.0, 1.0), (-3.0, 0.0)):
            for axis in AXES:
                r = leave_one_out(grid, axis, tau_range, teff_range)
                cells = [
                    " / ".join(
                        f"{v:{fmt}}" for v in (r[k].max(), np.percentile(r[k], 95), np.median(r[k]))
                    )
                    for k, fmt in (("dT", ".0f"), ("dlogP", ".3f"), ("dlogNe", ".3f"))
                ]
                print(
                    f"| {teff_range[0]:.0f}-{teff_range[1]:.0f} | {tau_range[0]:g}..{tau_range[1]:g}"
                    f" | {axis} | {int(r['n'])} | " + " | ".join(cells) + " |"
                )
    for axis, (dt, dp, dne) in solar_neighbourhood(grid).items():
        print(
            f"5750/4.5/0.0 from {axis} neighbours: |dT| {dt:.1f} K, |dlogP| {dp:.4f}, "
            f"|dlogNe| {dne:.4f}"
        )


if __name__ == "__main__":
    main()
