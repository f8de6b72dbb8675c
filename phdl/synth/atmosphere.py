"""Castelli-Kurucz ATLAS9 (ODFNEW) model atmospheres, interpolated differentiably in torch.

The grid (phdl/synth/data/kurucz_odfnew.npz, built by scripts/build_synth_data.py) holds, for each
node (Teff, logg, [M/H], [alpha/M]) and each of 72 depths on the common Rosseland scale
log10 tau_R = -6.875 ... +2.0 (step 0.125), the log10 of temperature, gas pressure, electron number
density and column mass. `KuruczGrid.interpolate` is multilinear in (Teff, logg, [M/H], [alpha/M])
of those logarithms at fixed log tau_R, so autograd gives d(atmosphere)/d(label); derivatives are
piecewise constant between nodes; method="cubic" (Catmull-Rom) makes them continuous.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATA_DIR = Path(__file__).resolve().parent / "data"
GRID_FILE = DATA_DIR / "kurucz_odfnew.npz"
LABELS = ("teff", "logg", "m_h", "alpha_m")
UNITS = {"teff": "K", "logg": "dex cgs", "m_h": "dex", "alpha_m": "dex"}


@dataclass
class Atmosphere:
    """One or a batch of model atmospheres; tensors of shape (..., D), cgs units."""

    log_tau_ross: Tensor  #: log10 Rosseland optical depth (the common depth scale)
    temperature: Tensor  #: K
    gas_pressure: Tensor  #: dyn cm^-2
    electron_density: Tensor  #: cm^-3
    column_mass: Tensor  #: g cm^-2
    kappa_ross: Tensor  #: Rosseland mean opacity dtau_R/dm [cm^2 g^-1], from the two above

    @property
    def n_depth(self) -> int:
        """Number of depth points D."""
        return self.log_tau_ross.shape[-1]

    def as_dict(self) -> dict[str, Tensor]:
        """The fields as a plain dict (a torch.func pytree), keyed by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def depth_slice(self, start: int, stop: int) -> Atmosphere:
        """The depth points start:stop of every field (e.g. to drop the outermost layers)."""
        return Atmosphere(**{f.name: getattr(self, f.name)[..., start:stop] for f in fields(self)})


def _dlog_dlog(y: Tensor, x: Tensor) -> Tensor:
    """dy/dx along the last axis by central differences (one-sided at the ends)."""
    dy = torch.cat(
        [y[..., 1:2] - y[..., 0:1], y[..., 2:] - y[..., :-2], y[..., -1:] - y[..., -2:-1]], -1
    )
    dx = torch.cat(
        [x[..., 1:2] - x[..., 0:1], x[..., 2:] - x[..., :-2], x[..., -1:] - x[..., -2:-1]], -1
    )
    return dy / dx


class KuruczGrid:
    """The shipped ODFNEW grid: nodes, models (log T, log P, log Ne, log m) and a present mask."""

    def __init__(
        self,
        nodes: dict[str, np.ndarray],
        log_tau_ross: np.ndarray,
        models: np.ndarray,
        present: np.ndarray,
        filled: np.ndarray | None = None,
        tau_deviation: np.ndarray | None = None,
    ) -> None:
        """Wrap arrays: models (n_alpha, n_mh, n_teff, n_logg, 4, D), present (n_alpha, ..., n_logg)."""
        self.nodes = {k: torch.as_tensor(np.asarray(nodes[k], dtype=np.float64)) for k in LABELS}
        self.log_tau_ross = torch.as_tensor(np.asarray(log_tau_ross, dtype=np.float64))
        # Reorder to label order (teff, logg, m_h, alpha_m) for indexing.
        models = np.asarray(models, dtype=np.float64).transpose(2, 3, 1, 0, 4, 5)
        present = np.asarray(present, dtype=bool).transpose(2, 3, 1, 0)
        self.models = torch.as_tensor(np.where(present[..., None, None], models, 0.0))
        self.present = torch.as_tensor(present)
        self.filled = torch.as_tensor(
            np.zeros_like(present) if filled is None else np.asarray(filled).transpose(2, 3, 1, 0)
        )
        #: max |log10 tau_R(integrated ABROSS dRHOX) - standard scale| per node [dex]; > 0.05
        #: marks a poorly converged ATLAS9 model (a few at 3500-3750 K), NaN where absent
        self.tau_deviation = torch.as_tensor(
            np.full(present.shape, np.nan)
            if tau_deviation is None
            else np.asarray(tau_deviation, dtype=np.float64).transpose(2, 3, 1, 0)
        )

    @classmethod
    def load(cls, path: str | Path = GRID_FILE) -> KuruczGrid:
        """Read the shipped npz (or another file written by scripts/build_synth_data.py)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: Kurucz grid missing; run scripts/build_synth_data.py")
        with np.load(path) as d:
            nodes = {"teff": d["teff"], "logg": d["logg"], "m_h": d["m_h"], "alpha_m": d["alpha_m"]}
            return cls(
                nodes,
                d["log_tau_ross"],
                d["models"],
                d["present"],
                d.get("filled"),
                d.get("tau_deviation"),
            )

    def to(self, device: torch.device | str) -> KuruczGrid:
        """This grid with its tensors on `device`."""
        new = object.__new__(KuruczGrid)
        new.nodes = {k: v.to(device) for k, v in self.nodes.items()}
        for name in ("log_tau_ross", "models", "present", "filled", "tau_deviation"):
            setattr(new, name, getattr(self, name).to(device))
        return new

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Covered (min, max) per label; note low logg is missing at high Teff (see `present`)."""
        return {k: (float(v[0]), float(v[-1])) for k, v in self.nodes.items()}

    def node(self, teff: float, logg: float, m_h: float, alpha_m: float) -> Atmosphere:
        """The stored model at an exact grid node (ValueError if it is not a present node)."""
        idx = []
        for name, x in zip(LABELS, (teff, logg, m_h, alpha_m)):
            hit = torch.nonzero(
                torch.isclose(
                    self.nodes[name],
                    torch.tensor(float(x), dtype=torch.float64, device=self.nodes[name].device),
                )
            )
            if hit.numel() == 0:
                raise ValueError(
                    f"{name}={x} {UNITS[name]} is not a grid node; nodes: "
                    f"{self.nodes[name].tolist()}"
                )
            idx.append(int(hit[0, 0]))
        if not bool(self.present[tuple(idx)]):
            raise ValueError(
                f"no Kurucz model at teff={teff}, logg={logg}, m_h={m_h}, alpha_m={alpha_m}"
            )
        return self._assemble(self.models[tuple(idx)])

    def interpolate(
        self,
        teff: Tensor | float,
        logg: Tensor | float,
        m_h: Tensor | float,
        alpha_m: Tensor | float = 0.0,
        method: str = "linear",
    ) -> Atmosphere:
        """Interpolate in (Teff [K], logg, [M/H], [alpha/M]) at fixed log tau_R.

        Inputs are scalars or tensors that broadcast to a batch shape B; outputs are (*B, D).
        Gradients flow to every tensor input. method="linear": multilinear (16 models, piecewise
        constant derivatives). method="cubic": Catmull-Rom in Teff, logg, [M/H] and linear in
        [alpha/M] (128 models, continuous derivatives, exact at nodes); at the grid edges the
        missing outer node is extrapolated linearly, and where the stencil meets a missing model
        the linear result is used. Raises ValueError outside the grid or where a needed
        neighbouring model is missing (hot, low-gravity corner).
        """
        if method not in ("linear", "cubic"):
            raise ValueError(f"method must be 'linear' or 'cubic', got {method!r}")
        device = self.models.device
        raw = [
            x.to(device)
            if isinstance(x, Tensor)
            else torch.tensor(float(x), dtype=torch.float64, device=device)
            for x in (teff, logg, m_h, alpha_m)
        ]
        # float32 out only when every label is a float32 tensor; python numbers count as float64
        out_dtype = torch.float32 if all(r.dtype == torch.float32 for r in raw) else torch.float64
        xs = torch.broadcast_tensors(*[r.to(torch.float64) for r in raw])
        batch_shape = xs[0].shape
        xs = [x.reshape(-1) for x in xs]
        lower, fractions = self._locate(xs)
        total = self._multilinear(xs, lower, fractions)
        if method == "cubic":
            cubic, usable = self._catmull_rom(lower, fractions)
            total = torch.where(usable[:, None, None], cubic, total)
        total = total.reshape(*batch_shape, *total.shape[-2:]).to(out_dtype)
        return self._assemble(total)

    def _locate(self, xs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per label: the lower node index of each sample's cell and its fraction in [0, 1]."""
        lower, fractions = [], []
        for name, x in zip(LABELS, xs):
            nodes = self.nodes[name]
            lo, hi = float(nodes[0]), float(nodes[-1])
            bad = (x < lo - 1e-9) | (x > hi + 1e-9) | ~torch.isfinite(x)
            if bool(bad.any()):
                value = float(x[bad][0])
                raise ValueError(
                    f"{name}={value:g} {UNITS[name]} is outside the Kurucz grid "
                    f"range [{lo:g}, {hi:g}]"
                )
            i = torch.clamp(
                torch.searchsorted(nodes, x.detach().contiguous(), right=True) - 1,
                0,
                len(nodes) - 2,
            )
            lower.append(i)
            fractions.append((x - nodes[i]) / (nodes[i + 1] - nodes[i]))
        return lower, fractions

    def _multilinear(
        self, xs: list[Tensor], lower: list[Tensor], fractions: list[Tensor]
    ) -> Tensor:
        """Sum over the 16 cell corners of weight x log-model, shape (N, 4, D)."""
        total = 0.0
        for corner in range(16):
            bits = [(corner >> k) & 1 for k in range(4)]
            idx = tuple(i + b for i, b in zip(lower, bits))
            w = torch.ones_like(xs[0])
            for wk, b in zip(fractions, bits):
                w = w * (wk if b else 1.0 - wk)
            missing = ~self.present[idx] & (w.detach() > 0)
            if bool(missing.any()):
                k = int(torch.nonzero(missing)[0, 0])
                values = ", ".join(f"{n}={float(x[k]):g}" for n, x in zip(LABELS, xs))
                need = ", ".join(f"{n}={float(self.nodes[n][j[k]]):g}" for n, j in zip(LABELS, idx))
                raise ValueError(
                    f"cannot interpolate the Kurucz grid at {values}: the neighbouring "
                    f"model {need} does not exist (ODFNEW has no low-logg models at "
                    f"high Teff)"
                )
            total = total + w[:, None, None] * self.models[idx]
        return total

    def _catmull_rom(self, lower: list[Tensor], fractions: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Tensor-product Catmull-Rom (linear in alpha): (N, 4, D) result and a usable mask (N,)."""
        taps, tap_weights = [], []
        for name, i, t in zip(LABELS[:3], lower[:3], fractions[:3]):
            n = len(self.nodes[name])
            w = [
                0.5 * (-(t**3) + 2 * t**2 - t),
                0.5 * (3 * t**3 - 5 * t**2 + 2),
                0.5 * (-3 * t**3 + 4 * t**2 + t),
                0.5 * (t**3 - t**2),
            ]
            # Outside the grid, f(i-1) = 2 f(i) - f(i+1) and f(i+2) = 2 f(i+1) - f(i).
            left, right = i == 0, i + 2 >= n
            w[1] = torch.where(left, w[1] + 2 * w[0], w[1])
            w[2] = torch.where(left, w[2] - w[0], w[2])
            w[0] = torch.where(left, torch.zeros_like(w[0]), w[0])
            w[2] = torch.where(right, w[2] + 2 * w[3], w[2])
            w[1] = torch.where(right, w[1] - w[3], w[1])
            w[3] = torch.where(right, torch.zeros_like(w[3]), w[3])
            taps.append([torch.clamp(i + k - 1, 0, n - 1) for k in range(4)])
            tap_weights.append(w)
        alpha_idx, alpha_t = lower[3], fractions[3]
        total = 0.0
        usable = torch.ones_like(alpha_t, dtype=torch.bool)
        for a in range(4):
            for b in range(4):
                for c in range(4):
                    w3 = tap_weights[0][a] * tap_weights[1][b] * tap_weights[2][c]
                    for d, wd in ((0, 1.0 - alpha_t), (1, alpha_t)):
                        idx = (taps[0][a], taps[1][b], taps[2][c], alpha_idx + d)
                        w = w3 * wd
                        usable = usable & (self.present[idx] | (w.detach() == 0))
                        total = total + w[:, None, None] * self.models[idx]
        return total, usable

    def _assemble(self, logs: Tensor) -> Atmosphere:
        """Atmosphere from stacked log10 (T, P, Ne, m) of shape (..., 4, D)."""
        log_tau = self.log_tau_ross.to(logs.dtype).expand(*logs.shape[:-2], -1)
        log_m = logs[..., 3, :]
        kappa = 10.0 ** (log_tau - log_m) / _dlog_dlog(log_m, log_tau)
        return Atmosphere(
            log_tau_ross=log_tau,
            temperature=10.0 ** logs[..., 0, :],
            gas_pressure=10.0 ** logs[..., 1, :],
            electron_density=10.0 ** logs[..., 2, :],
            column_mass=10.0**log_m,
            kappa_ross=kappa,
        )
