"""Atomic and molecular line opacity: Voigt profiles from the Faddeeva function, in windows.

The Faddeeva function w(z), z = v + i a, a >= 0, is evaluated in two regions (DESIGN section 8:
no series that fails for large damping):
  * |z| >= 6.5: the asymptotic (Laplace) series w = i/(sqrt(pi) z) sum_n (2n-1)!!/(2 z^2)^n,
    7 terms (relative error < 3e-7, any damping: the series is valid in the whole upper half
    plane away from the origin);
  * |z| < 6.5: a Taylor expansion of order 5 about the nearest node of a table of w and its
    derivatives (node spacing 0.05, |dz| <= 0.036: error < 1e-9 absolute), the table computed
    once from scipy's Faddeeva implementation (Johnson's Faddeeva package) and the exact
    recurrence w^(n+1) = -2 z w^(n) - 2 n w^(n-1).
Both are plain real arithmetic on tensors (no complex dtype), several times cheaper than a
32-term rational form. The derivative is exact: dw/dz = -2 z w + 2i / sqrt(pi), so
dH/dv = Re w', dH/da = -Im w' come from the same evaluation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

SQRT_PI = math.sqrt(math.pi)
#: Speed of light [cm/s], Boltzmann [erg/K], atomic mass unit [g], Planck [erg s].
C_CGS = 2.99792458e10
K_B = 1.380649e-16
AMU = 1.66053907e-24
H_PLANCK = 6.62607015e-27
#: pi e^2 / (m_e c) [cm^2 Hz]: integrated cross-section per unit oscillator strength.
SIGMA_CLASSICAL = 0.026540081
#: hc/k [Angstrom K], and hc/k in eV units [eV/K]: 1/k_B [K/eV].
HC_OVER_K_ANGSTROM = 1.4387769e8
K_B_EV = 8.617333262e-5

#: |z| beyond which the asymptotic series is used; table node spacing and Taylor order.
ASYMPTOTIC_RADIUS = 6.5
_TABLE_STEP = 0.05
_TAYLOR_ORDER = 5
_TABLE_NODES = int(math.ceil(ASYMPTOTIC_RADIUS / _TABLE_STEP)) + 2
#: (2n-1)!! / 2^n, n = 0..6: coefficients of the asymptotic series in 1/z^2.
_ASYMPTOTIC = tuple(math.prod(range(1, 2 * n, 2)) / 2.0**n for n in range(7))


@functools.lru_cache(maxsize=8)
def taylor_table(dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Taylor coefficients w^(n)(z0)/n! at nodes z0 = i h + 1j * j h: real, imag (n, nodes)."""
    from scipy.special import wofz

    h = _TABLE_STEP
    grid = np.arange(_TABLE_NODES) * h
    z0 = grid[:, None] + 1j * grid[None, :]
    derivs = [wofz(z0)]
    derivs.append(-2.0 * z0 * derivs[0] + 2j / SQRT_PI)
    for n in range(1, _TAYLOR_ORDER):
        derivs.append(-2.0 * z0 * derivs[n] - 2.0 * n * derivs[n - 1])
    coef = np.stack([d / math.factorial(n) for n, d in enumerate(derivs)]).reshape(len(derivs), -1)
    as_tensor = functools.partial(torch.as_tensor, dtype=dtype, device=device)
    return as_tensor(coef.real.copy()), as_tensor(coef.imag.copy())


def _faddeeva_taylor(
    x: torch.Tensor, a: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """w(x + i a) for 0 <= x, a < table edge: Taylor series about the nearest table node."""
    table_re, table_im = table
    h = _TABLE_STEP
    i = torch.round(x * (1.0 / h))
    j = torch.round(a * (1.0 / h))
    dr = x - i * h
    di = a - j * h
    node = (i * _TABLE_NODES + j).long()
    re = table_re[-1][node]
    im = table_im[-1][node]
    for n in range(_TAYLOR_ORDER - 1, -1, -1):  # Horner in complex arithmetic
        re, im = table_re[n][node] + re * dr - im * di, table_im[n][node] + re * di + im * dr
    return re, im


def _faddeeva_asymptotic(
    x: torch.Tensor, a: torch.Tensor, derivative: bool = False
) -> tuple[torch.Tensor, ...]:
    """w(x + i a) for |z| >= 6.5 from the asymptotic series (upper half plane); with
    `derivative` also w'(z) = -2 z w + 2i/sqrt(pi) = -(2i/sqrt(pi)) (S - 1), from the series
    itself: the textbook form cancels to ~1/(2|z|^2) of its terms, which in float32 far out
    in strong lines' wings (|z| ~ 10^2-10^3) left dH/da and dH/dv wrong by 1-10%."""
    r2 = x * x + a * a
    inv_r2 = 1.0 / r2
    # 1/z = (x - i a) / r2; u = 1/z^2 = (x^2 - a^2 - 2 i x a) / r2^2
    zr, zi = x * inv_r2, -a * inv_r2
    ur, ui = zr * zr - zi * zi, 2.0 * zr * zi
    # S - 1 = sum_{n>=1} c_n u^n: Horner over c_1.. times u (the constant c_0 = 1 added after)
    tr = torch.full_like(x, _ASYMPTOTIC[-1])
    ti = torch.zeros_like(x)
    for c in _ASYMPTOTIC[-2:0:-1]:
        tr, ti = tr * ur - ti * ui + c, tr * ui + ti * ur
    sr1, si1 = tr * ur - ti * ui, tr * ui + ti * ur  # S - 1
    sr, si = sr1 + 1.0, si1
    # w = i/sqrt(pi) * (1/z) * S
    pr, pi_ = zr * sr - zi * si, zr * si + zi * sr
    w = (-pi_ * (1.0 / SQRT_PI), pr * (1.0 / SQRT_PI))
    if not derivative:
        return w
    return (*w, si1 * (2.0 / SQRT_PI), -sr1 * (2.0 / SQRT_PI))


def _derivative_from_w(x, a, re, im) -> tuple[torch.Tensor, torch.Tensor]:
    """w'(z) = -2 z w + 2i/sqrt(pi) at z = x + i a (accurate for |z| below ~10 in float32)."""
    return -2.0 * (x * re - a * im), -2.0 * (x * im + a * re) + 2.0 / SQRT_PI


def faddeeva(
    v: torch.Tensor,
    a: torch.Tensor,
    far: bool = False,
    table: tuple[torch.Tensor, torch.Tensor] | None = None,
    derivative: bool = False,
) -> tuple[torch.Tensor, ...]:
    """w(v + i a) for a >= 0 as (real, imag) tensors: table Taylor inside |z| < 6.5, series outside.
    With `derivative`, also w'(v + i a) as (real, imag): from -2 z w + 2i/sqrt(pi) inside, from
    the series outside (_faddeeva_asymptotic).

    Under torch.compile both branches are evaluated everywhere and blended elementwise (no
    gathers and scatters by region), so that the whole function fuses into one loop
    (phdl.synth.kernels); eagerly each branch runs only on its own points.
    `far`: every |v + i a| >= 6.5 is known (line wings), the series alone. `table`:
    taylor_table(v.dtype, device), passed in by compiled callers (it is built with scipy).
    """
    x = v.abs()
    a = a.expand_as(x)

    def taylor(x_, a_):
        w = _faddeeva_taylor(x_, a_, table)
        return (*w, *_derivative_from_w(x_, a_, *w)) if derivative else w

    def series(x_, a_):
        return _faddeeva_asymptotic(x_, a_, derivative)

    if far:
        out = series(x, a)
    elif not torch.compiler.is_compiling():
        # eager: each branch only where it applies (gathers and scatters are cheaper here than
        # evaluating both branches everywhere; compiled, the blend below is one fused loop)
        table = table if table is not None else taylor_table(x.dtype, str(x.device))
        flat_x, flat_a = x.reshape(-1), a.reshape(-1)
        inside = flat_x * flat_x + flat_a * flat_a < ASYMPTOTIC_RADIUS**2
        out = tuple(torch.empty_like(flat_x) for _ in range(4 if derivative else 2))
        for idx, fn in (
            (torch.nonzero(inside)[:, 0], taylor),
            (torch.nonzero(~inside)[:, 0], series),
        ):
            if idx.numel():
                part = fn(flat_x.index_select(0, idx), flat_a.index_select(0, idx))
                for whole, values in zip(out, part):
                    whole.index_copy_(0, idx, values)
        out = tuple(whole.reshape(x.shape) for whole in out)
    else:
        table = table if table is not None else taylor_table(x.dtype, str(x.device))
        inside = x * x + a * a < ASYMPTOTIC_RADIUS**2
        zero = torch.zeros_like(x)
        in_taylor = taylor(torch.where(inside, x, zero), torch.where(inside, a, zero))
        # outside points only (inside ones get a harmless |z| = 6.5 stand-in)
        in_series = series(torch.where(inside, zero + ASYMPTOTIC_RADIUS, x), a)
        out = tuple(torch.where(inside, t, s) for t, s in zip(in_taylor, in_series))
    # w(-x + i a) = conj(w(x + i a)); w'(-x + i a) = -conj(w'(x + i a))
    negative = v < 0
    re, im = out[0], torch.where(negative, -out[1], out[1])
    if not derivative:
        return re, im
    return re, im, torch.where(negative, -out[2], out[2]), out[3]


def voigt_and_derivatives(
    v: torch.Tensor,
    a: torch.Tensor,
    far: bool = False,
    table: tuple[torch.Tensor, torch.Tensor] | None = None,
    w: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voigt H(a, v) (normalised to sqrt(pi) over v) and its exact partials dH/dv, dH/da.

    `far`, `table`: as for `faddeeva`; `w`: faddeeva(v, a) where already computed (then w' is
    -2 z w + 2i/sqrt(pi), accurate near the line centre only: pass w for |z| below ~10).
    dH/dv = Re w', dH/da = Re(i w') = -Im w'.
    """
    if w is None:
        re, _, d_re, d_im = faddeeva(v, a, far, table, derivative=True)
    else:
        re, im = w
        d_re, d_im = _derivative_from_w(v, a, re, im)
    return re, d_re, -d_im


@dataclass
class LineData:
    """Line list arrays as torch tensors, sorted by wavelength (vacuum Angstrom)."""

    wavelength: torch.Tensor  # (L,) Angstrom, vacuum
    species_index: torch.Tensor  # (L,) int64, row in the species table of the state
    chi_lower: torch.Tensor  # (L,) eV
    log_gf: torch.Tensor  # (L,)
    mass: torch.Tensor  # (L,) g, mass of the absorber
    gamma_rad: torch.Tensor  # (L,) s^-1 (FWHM, angular)
    log_gamma_stark: torch.Tensor  # (L,) log10 of gamma_4 / n_e [rad s^-1 cm^3] at 10^4 K
    vdw_sigma: torch.Tensor  # (L,) ABO cross-section [cm^2] (0 when Unsold is used)
    vdw_alpha: torch.Tensor  # (L,) ABO velocity exponent
    log_gamma_vdw: torch.Tensor  # (L,) Unsold-style log10(gamma_6 / n_H) at 10^4 K (ABO absent)

    def __len__(self) -> int:
        return int(self.wavelength.shape[0])

    def subset(self, index: torch.Tensor) -> LineData:
        """The lines at `index` (a boolean mask or integer index)."""
        return LineData(**{k: getattr(self, k)[index] for k in self.__dataclass_fields__})


def line_parameters(
    state: dict[str, torch.Tensor], lines: LineData
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per line and depth: ln amplitude (cm^-1 Angstrom), Doppler width (Angstrom), damping a.

    Amplitude A is the wavelength-integrated opacity per unit volume: the line opacity is
    A * H(a, v) / (sqrt(pi) * doppler_width) [cm^-1] with v = (lambda - lambda_0) / width.
    """
    temperature = state["temperature"]  # (D,)
    ln_pop = state["ln_population"][lines.species_index]  # (L, D): ln(N_species / U_species)
    lam = lines.wavelength[:, None]  # Angstrom
    lam_cm = lam * 1e-8
    stim = -torch.expm1(-HC_OVER_K_ANGSTROM / (lam * temperature[None, :]))
    ln_amplitude = (
        math.log(SIGMA_CLASSICAL)
        + lines.log_gf[:, None] * math.log(10.0)
        + ln_pop
        - lines.chi_lower[:, None] / (K_B_EV * temperature[None, :])
        + torch.log(stim)
        + torch.log(lam_cm * lam_cm / C_CGS)
        + math.log(1e8)  # per cm of wavelength -> per Angstrom
    )
    vmic = state["vmic"]  # cm/s, scalar tensor
    velocity = torch.sqrt(2.0 * K_B * temperature[None, :] / lines.mass[:, None] + vmic * vmic)
    width = lam * velocity / C_CGS  # (L, D) Angstrom
    t4 = temperature[None, :] / 1e4
    gamma_stark = (
        torch.pow(10.0, lines.log_gamma_stark)[:, None]
        * state["electron_density"][None, :]
        * torch.pow(t4, 1.0 / 6.0)
    )
    n_h = state["n_hi"][None, :]
    # ABO (Anstee, Barklem & O'Mara): gamma = 2 (4/pi)^(alpha/2) Gamma((4-alpha)/2) v0 sigma
    # (vbar/v0)^(1-alpha) n_H, vbar the mean relative speed of the absorber and H.
    alpha = lines.vdw_alpha[:, None]
    reduced = 1.0 / (1.0 / (1.008 * AMU) + 1.0 / lines.mass[:, None])
    vbar = torch.sqrt(8.0 * K_B * temperature[None, :] / (math.pi * reduced))
    abo_factor = (
        2.0
        * torch.pow(torch.tensor(4.0 / math.pi, dtype=alpha.dtype), alpha / 2.0)
        * torch.exp(torch.lgamma((4.0 - alpha) / 2.0))
        * 1e6
        * lines.vdw_sigma[:, None]
    )
    gamma_abo = abo_factor * torch.pow(vbar / 1e6, 1.0 - alpha) * n_h
    gamma_unsold = torch.pow(10.0, lines.log_gamma_vdw)[:, None] * n_h * torch.pow(t4, 0.3)
    use_abo = (lines.vdw_sigma > 0)[:, None]
    gamma_vdw = torch.where(use_abo, gamma_abo, gamma_unsold)
    gamma = lines.gamma_rad[:, None] + gamma_stark + gamma_vdw  # FWHM angular frequency
    # a = gamma / (4 pi delta_nu_D), delta_nu_D = c * width / lambda^2
    doppler_nu = C_CGS * (width * 1e-8) / (lam_cm * lam_cm)
    damping = gamma / (4.0 * math.pi * doppler_nu)
    return ln_amplitude, width, damping


def line_parameter_tangents(
    state: dict[str, torch.Tensor],
    jacobian: dict[str, torch.Tensor],
    lines: LineData,
    params: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d(ln amplitude, width, damping)/d label, each (L, D, K), from the state Jacobian.

    The analytic derivative of `line_parameters` (no AD over the ~10^4 lines): `jacobian[key]`
    is d state[key] / d label with the label axis last, `params` its output at `state`.
    """
    c = line_tangent_coefficients(state, lines, params)
    d_temp = jacobian["temperature"][None]  # (1, D, K)
    d_vmic = jacobian["vmic"]  # (K,)
    d_ln_amp = jacobian["ln_population"][lines.species_index] + c["amp_t"][..., None] * d_temp
    d_width = c["width_t"][..., None] * d_temp + c["width_vmic"][..., None] * d_vmic
    d_damping = (
        c["damping_t"][..., None] * d_temp
        + c["damping_ne"][..., None] * jacobian["electron_density"][None]
        + c["damping_nh"][..., None] * jacobian["n_hi"][None]
        + c["damping_vmic"][..., None] * d_vmic
    )
    return d_ln_amp, d_width, d_damping


def line_tangent_coefficients(
    state: dict[str, torch.Tensor],
    lines: LineData,
    params: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Partials of the line parameters by the state, (L, D) each: the tangents' building blocks.

    d ln A = d ln_population[species] + amp_t dT; d width = width_t dT + width_vmic d vmic;
    d damping = damping_t dT + damping_ne d n_e + damping_nh d n_HI + damping_vmic d vmic.
    """
    _, width, damping = params
    temperature = state["temperature"]  # (D,)
    lam = lines.wavelength[:, None]
    x = HC_OVER_K_ANGSTROM / (lam * temperature[None, :])
    # d ln A / d T: excitation and stimulated emission
    dln_amp_dt = lines.chi_lower[:, None] / (
        K_B_EV * temperature**2
    ) - x / temperature / torch.expm1(x)
    vmic = state["vmic"]
    velocity2 = 2.0 * K_B * temperature[None, :] / lines.mass[:, None] + vmic * vmic
    # width = lam v / c, v^2 = 2kT/m + vmic^2
    dlnw_dt = (K_B / lines.mass[:, None]) / velocity2  # (L, D)
    dlnw_dvmic = vmic / velocity2
    # damping = (gamma_rad + gamma_stark + gamma_vdw) / (4 pi c width / lambda^2)
    t4 = temperature[None, :] / 1e4
    ne = state["electron_density"][None, :]
    n_h = state["n_hi"][None, :]
    gamma_stark = torch.pow(10.0, lines.log_gamma_stark)[:, None] * ne * torch.pow(t4, 1.0 / 6.0)
    alpha = lines.vdw_alpha[:, None]
    reduced = 1.0 / (1.0 / (1.008 * AMU) + 1.0 / lines.mass[:, None])
    vbar = torch.sqrt(8.0 * K_B * temperature[None, :] / (math.pi * reduced))
    abo_factor = (
        2.0
        * torch.pow(torch.tensor(4.0 / math.pi, dtype=alpha.dtype), alpha / 2.0)
        * torch.exp(torch.lgamma((4.0 - alpha) / 2.0))
        * 1e6
        * lines.vdw_sigma[:, None]
    )
    use_abo = (lines.vdw_sigma > 0)[:, None]
    gamma_vdw = torch.where(
        use_abo,
        abo_factor * torch.pow(vbar / 1e6, 1.0 - alpha) * n_h,
        torch.pow(10.0, lines.log_gamma_vdw)[:, None] * n_h * torch.pow(t4, 0.3),
    )
    vdw_t_exponent = torch.where(use_abo, (1.0 - alpha) / 2.0, torch.full_like(alpha, 0.3))
    gamma = lines.gamma_rad[:, None] + gamma_stark + gamma_vdw
    inv_t = 1.0 / temperature[None, :]
    dgamma_dt = (gamma_stark / 6.0 + gamma_vdw * vdw_t_exponent) * inv_t  # (L, D)
    # damping = gamma / (4 pi c width / lambda^2): d ln damping = d ln gamma - d ln width
    damping_over_gamma = damping / gamma
    return {
        "amp_t": dln_amp_dt,
        "width_t": width * dlnw_dt,
        "width_vmic": width * dlnw_dvmic,
        "damping_t": damping_over_gamma * dgamma_dt - damping * dlnw_dt,
        "damping_ne": damping_over_gamma * gamma_stark / ne,
        "damping_nh": damping_over_gamma * gamma_vdw / n_h,
        "damping_vmic": -damping * dlnw_dvmic,
    }
