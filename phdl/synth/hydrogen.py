"""Hydrogen Balmer and Paschen lines with quasi-static (Holtsmark) Stark broadening.

Profile: Griem's (1960, ApJ 132, 883) quasi-static linear-Stark picture. The detuning is
scaled by the Holtsmark normal field F0 = 1.25e-9 n_e^(2/3) [esu] and Griem's constant K_nm
(Underhill & Waddell / Vidal-Cooper-Smith values for small m - n, Griem's asymptotic formula
5.5e-5 n^4 m^4 / (m^2 - n^2) / (1 + 0.13/(m - n)) otherwise): beta = |dlambda| / (K_nm F0).
The Holtsmark distribution H(beta) (computed once by Fourier quadrature) is convolved exactly
with the thermal + microturbulent Doppler Gaussian, tabulated in (beta, delta = Doppler width /
(K_nm F0)) and interpolated. Electron impact broadening, fine structure, self (resonance)
broadening and the Hummer-Mihalas level dissolution are not included (docs/synth.md).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from phdl.synth.lines import AMU, C_CGS, HC_OVER_K_ANGSTROM, K_B, SIGMA_CLASSICAL

RYDBERG_H = 109677.576  # cm^-1
#: Griem / VCS K_nm for lower level n (row 1..4) and m - n = 1..3 (columns).
_KNM_TABLE = {
    (1, 1): 0.0001716, (2, 1): 0.009019, (3, 1): 0.1001, (4, 1): 0.582,
    (1, 2): 0.0005235, (2, 2): 0.01772, (3, 2): 0.171, (4, 2): 0.866,
    (1, 3): 0.0008912, (2, 3): 0.02507, (3, 3): 0.223, (4, 3): 1.02,
}  # fmt: skip
_BETA_MAX = 3000.0


def griem_knm(n: int, m: int) -> float:
    """Griem's Stark constant K_nm [Angstrom per esu field unit]."""
    if (n, m - n) in _KNM_TABLE:
        return _KNM_TABLE[(n, m - n)]
    return 5.5e-5 * (n * m) ** 4 / (m * m - n * n) / (1.0 + 0.13 / (m - n))


def oscillator_strength(n: int, m: int) -> float:
    """Hydrogen absorption oscillator strength (Kramers with Johnson 1972 Gaunt factor)."""
    x = 1.0 - (n / m) ** 2
    if n == 1:
        g = (1.1330, -0.4059, 0.07014)
    elif n == 2:
        g = (1.0785, -0.2319, 0.02947)
    else:
        g = (
            0.9935 + 0.2328 / n - 0.1296 / n**2,
            -(0.6282 - 0.5598 / n + 0.5299 / n**2) / n,
            (0.3887 - 1.181 / n + 1.470 / n**2) / n**2,
        )
    gaunt = g[0] + g[1] / x + g[2] / x**2
    return (
        32.0 / (3.0 * math.sqrt(3.0) * math.pi) / n**5 / m**3 / (1 / n**2 - 1 / m**2) ** 3 * gaunt
    )


def vacuum_wavelength(n: int, m: int) -> float:
    """Vacuum wavelength of the n -> m hydrogen line [Angstrom]."""
    return 1e8 / (RYDBERG_H * (1.0 / n**2 - 1.0 / m**2))


def hydrogen_lines(lambda_min: float, lambda_max: float) -> list[tuple[int, int, float]]:
    """Balmer (n=2) and Paschen (n=3) lines (n, m, lambda_vac) with centres in the range."""
    out = []
    for n in (2, 3):
        for m in range(n + 1, 41):
            lam = vacuum_wavelength(n, m)
            if lambda_min <= lam <= lambda_max:
                out.append((n, m, lam))
    return out


@functools.lru_cache(maxsize=1)
def _holtsmark_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ln of the Doppler-convolved Holtsmark profile on (ln delta, ln(1 + beta)) nodes."""
    from scipy.integrate import quad

    beta_nodes = np.concatenate([np.linspace(0, 5, 101)[1:], np.geomspace(5.05, 2e4, 400)])

    def holtsmark(b: float) -> float:
        if b > 60.0:
            return 1.496 * b**-2.5 * (1 + 5.107 * b**-1.5 + 14.43 * b**-3)
        val, _ = quad(lambda x: x * np.exp(-(x**1.5)), 0, np.inf, weight="sin", wvar=b)
        return 2.0 / math.pi * b * val

    h = np.array([holtsmark(b) for b in beta_nodes])
    ln_beta, ln_h = np.log(beta_nodes), np.log(h)

    def density(b: np.ndarray) -> np.ndarray:
        """H(|beta|)/2 (area 1 over signed beta); H ~ 0.2 beta^2 below the first node."""
        b = np.abs(b)
        out = np.exp(np.interp(np.log(np.maximum(b, 1e-12)), ln_beta, ln_h)) / 2.0
        small = b < beta_nodes[0]
        out[small] = h[0] / 2.0 * (b[small] / beta_nodes[0]) ** 2
        return out

    from scipy.signal import fftconvolve

    log_delta = np.linspace(math.log(0.01), math.log(3000.0), 60)
    u_nodes = np.linspace(0.0, math.log1p(_BETA_MAX), 240)
    beta_out = np.expm1(u_nodes)
    table = np.empty((log_delta.size, u_nodes.size))
    for i, ld in enumerate(log_delta):
        d = math.exp(ld)
        if d < 0.2:  # Doppler narrower than the Holtsmark structure: no smoothing needed
            conv = density(beta_out)
        else:  # exact convolution on a uniform grid resolving the Gaussian (spacing d/8)
            step = d / 8.0
            x = np.arange(-(_BETA_MAX + 10 * d), _BETA_MAX + 10 * d + step, step)
            kernel_x = np.arange(-6 * d, 6 * d + step / 2, step)
            kernel = np.exp(-((kernel_x / d) ** 2)) / (math.sqrt(math.pi) * d) * step
            conv_full = fftconvolve(density(x), kernel, mode="same")
            conv = np.interp(beta_out, x, conv_full)
        table[i] = np.log(np.maximum(conv, 1e-300))
    return log_delta, u_nodes, table


def _interp2(table: torch.Tensor, x0: float, dx: float, y0: float, dy: float, x, y):
    """Bilinear interpolation of table[(x - x0)/dx, (y - y0)/dy], clamped to the table, and its
    partials by x and by y (zero where clamped)."""
    nx, ny = table.shape
    fx_raw, fy_raw = (x - x0) / dx, (y - y0) / dy
    fx = fx_raw.clamp(0, nx - 1 - 1e-9)
    fy = fy_raw.clamp(0, ny - 1 - 1e-9)
    ix = fx.floor().long()
    iy = fy.floor().long()
    tx, ty = fx - ix, fy - iy
    flat = table.reshape(-1)
    v00 = flat[ix * ny + iy]
    v01 = flat[ix * ny + iy + 1]
    v10 = flat[(ix + 1) * ny + iy]
    v11 = flat[(ix + 1) * ny + iy + 1]
    left = (1 - ty) * v00 + ty * v01
    right = (1 - ty) * v10 + ty * v11
    value = (1 - tx) * left + tx * right
    d_x = torch.where(fx == fx_raw, (right - left) / dx, 0.0)
    d_y = torch.where(fy == fy_raw, ((1 - tx) * (v01 - v00) + tx * (v11 - v10)) / dy, 0.0)
    return value, d_x, d_y


def stark_profile(
    dlam: torch.Tensor, doppler: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Doppler-convolved Holtsmark profile [1/Angstrom] at detuning dlam; scale = K_nm F0.

    Returns (profile, d ln profile / d ln doppler, d ln profile / d ln scale).
    """
    log_delta, u_nodes, table = _holtsmark_tables()
    tab = torch.as_tensor(table, dtype=dlam.dtype)
    beta = dlam.abs() / scale
    inside, d_x, d_u = _interp2(
        tab,
        log_delta[0],
        log_delta[1] - log_delta[0],
        0.0,
        u_nodes[1] - u_nodes[0],
        torch.log(doppler / scale),
        torch.log1p(beta.clamp(max=_BETA_MAX)),
    )
    # beyond the table: the Holtsmark asymptote, scaled to join the table continuously
    beyond = beta >= _BETA_MAX
    far = beta.clamp(min=_BETA_MAX)
    tail = 5.107 * far**-1.5
    at_edge = _BETA_MAX**-2.5 * (1 + 5.107 * _BETA_MAX**-1.5)
    value = torch.exp(inside) * torch.where(beyond, far**-2.5 * (1 + tail) / at_edge, 1.0)
    # d ln profile / d ln beta: through u = ln(1 + beta) inside the table, the asymptote beyond
    d_beta = torch.where(beyond, -2.5 - 1.5 * tail / (1 + tail), d_u * beta / (1 + beta))
    return value / scale, d_x, -d_x - d_beta - 1.0


def hydrogen_opacity(
    wavelength: torch.Tensor,
    state: dict[str, torch.Tensor],
    window_scale: float = 1.0,
    partials: bool = False,
):
    """Balmer + Paschen line opacity [cm^-1] on `wavelength` (Angstrom, vacuum), (W, D).

    With `partials`, also {key: d kappa / d state[key]} (W, D) for the keys temperature,
    electron_density, n_hi and vmic (the Jacobian is diagonal in wavelength and depth).
    """
    temperature = state["temperature"]
    ne = state["electron_density"]
    n_hi = state["n_hi"]
    vmic = state["vmic"]
    f0 = 1.25e-9 * ne ** (2.0 / 3.0)
    lam_min, lam_max = float(wavelength[0]), float(wavelength[-1])
    rows, values = [], []
    velocity2 = 2.0 * K_B * temperature / (1.008 * AMU) + vmic**2
    kt_ev = 8.617333262e-5 * temperature
    for n, m, lam0 in hydrogen_lines(lam_min - 200.0, lam_max + 200.0):
        half = window_scale * max(20.0, 150.0 / (m - n))
        lo = lam0 - half
        if n == 3:
            lo = max(lo, vacuum_wavelength(3, 10**6))
        sel = (wavelength >= lo) & (wavelength <= lam0 + half)
        if not bool(sel.any()):
            continue
        idx = torch.nonzero(sel)[:, 0]
        lam = wavelength[idx][:, None]
        energy_ev = 13.598434 * (1.0 - 1.0 / n**2)
        population = n_hi * (n * n) * torch.exp(-energy_ev / kt_ev)
        stim_x = HC_OVER_K_ANGSTROM / (lam0 * temperature)
        stim = -torch.expm1(-stim_x)
        strength = (
            (SIGMA_CLASSICAL * oscillator_strength(n, m) * (lam0 * 1e-8) ** 2 / C_CGS * 1e8)
            * population
            * stim
        )  # cm^-1 Angstrom
        doppler = lam0 * torch.sqrt(velocity2) / C_CGS
        profile, d_doppler, d_scale = stark_profile(
            lam - lam0, doppler[None, :], (griem_knm(n, m) * f0)[None, :]
        )
        kappa = strength[None, :] * profile
        rows.append(idx)
        if not partials:
            values.append(kappa)
            continue
        # d ln kappa / d state: strength (Boltzmann, stimulated emission), Doppler width, F0
        d_ln_strength_t = (
            energy_ev / (kt_ev * temperature) - stim_x / temperature * torch.exp(-stim_x) / stim
        )
        d_ln_doppler_t = K_B / (1.008 * AMU) / velocity2
        values.append(
            torch.stack(
                [
                    kappa,
                    kappa * (d_ln_strength_t + d_doppler * d_ln_doppler_t),
                    kappa * d_scale * (2.0 / 3.0) / ne,
                    kappa / n_hi,
                    kappa * d_doppler * (vmic / velocity2),
                ]
            )
        )
    shape = (wavelength.shape[0], temperature.shape[0])
    if not partials:
        kappa = torch.zeros(shape, dtype=temperature.dtype)
        # one scatter for all lines: an out-of-place index_add per line copied the whole array
        return kappa if not rows else kappa.index_add_(0, torch.cat(rows), torch.cat(values))
    out = torch.zeros(5, *shape, dtype=temperature.dtype)
    if rows:
        out.index_add_(1, torch.cat(rows), torch.cat(values, dim=1))
    keys = ("temperature", "electron_density", "n_hi", "vmic")
    return out[0], dict(zip(keys, out[1:]))
