"""Formal solution for the emergent flux in plane-parallel LTE: exponential integrals.

With the source function S piecewise linear in the monochromatic optical depth tau between
model depths, F/(2 pi) = int_0^inf S(t) E2(t) dt is exact:
  sum_i S_i [E3(t_i) - E3(t_i+1)] + s_i [E4(t_i) - E4(t_i+1) - dt_i E3(t_i+1)],
with s_i the slope of S on [t_i, t_i+1], S constant above the top layer and below the bottom.
The optical depth is integrated on column mass with the trapezoidal rule (tau at the top layer
= kappa/rho * m_top). S = B (scattering treated as absorption).
"""

from __future__ import annotations

import torch

# Abramowitz & Stegun 5.1.53 (x <= 1) and 5.1.56 (x >= 1)
_E1_SMALL = (-0.57721566, 0.99999193, -0.24991055, 0.05519968, -0.00976004, 0.00107857)
_E1_NUM = (8.5733287401, 18.0590169730, 8.6347608925, 0.2677737343)
_E1_DEN = (9.5733223454, 25.6329561486, 21.0996530827, 3.9584969228)


def expint_e1(x: torch.Tensor, exp_minus_x: torch.Tensor | None = None) -> torch.Tensor:
    """Exponential integral E1(x) for x > 0 (relative error < 2e-7); `exp_minus_x`: exp(-x)
    where the caller has it (it saves an exponential per element)."""
    xs = x.clamp(max=1.0)
    a = _E1_SMALL
    small = -torch.log(xs) + (
        a[0] + xs * (a[1] + xs * (a[2] + xs * (a[3] + xs * (a[4] + xs * a[5]))))
    )
    xl = x.clamp(min=1.0)
    num = (((xl + _E1_NUM[0]) * xl + _E1_NUM[1]) * xl + _E1_NUM[2]) * xl + _E1_NUM[3]
    den = (((xl + _E1_DEN[0]) * xl + _E1_DEN[1]) * xl + _E1_DEN[2]) * xl + _E1_DEN[3]
    # exp(-x) = exp(-xl) wherever this branch is taken (x >= 1)
    large = (torch.exp(-xl) if exp_minus_x is None else exp_minus_x) / xl * num / den
    return torch.where(x <= 1.0, small, large)


def expint_e234(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E2, E3, E4 by upward recurrence E_{n+1} = (exp(-x) - x E_n) / n; x clamped to <= 80."""
    x = x.clamp(max=80.0)
    ex = torch.exp(-x)
    e2 = ex - x * expint_e1(x, ex)
    e3 = (ex - x * e2) / 2.0
    e4 = (ex - x * e3) / 3.0
    return e2, e3, e4


def optical_depth(kappa_mass: torch.Tensor, column_mass: torch.Tensor) -> torch.Tensor:
    """tau (..., D) from opacity per gram (..., D) on the column-mass scale (D,) or (..., D)."""
    top = kappa_mass[..., :1] * column_mass[..., :1]
    steps = (
        0.5
        * (kappa_mass[..., 1:] + kappa_mass[..., :-1])
        * (column_mass[..., 1:] - column_mass[..., :-1])
    )
    return torch.cumsum(torch.cat([top, steps], dim=-1), dim=-1)


def emergent_flux(tau: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Emergent flux / (2 pi) for tau, S of shape (..., D), S piecewise linear in tau."""
    e2, e3, e4 = expint_e234(tau)
    dtau = tau[..., 1:] - tau[..., :-1]
    slope = (source[..., 1:] - source[..., :-1]) / dtau
    # int over [t_i, t_i+1] of (t - t_i) E2(t) dt; its series for thin layers avoids cancellation
    exact = e4[..., :-1] - e4[..., 1:] - dtau * e3[..., 1:]
    thin = 0.5 * dtau * dtau * e2[..., :-1]
    moment = torch.where(dtau < 1e-4, thin, exact)
    inner = (source[..., :-1] * (e3[..., :-1] - e3[..., 1:]) + slope * moment).sum(dim=-1)
    top = source[..., 0] * (0.5 - e3[..., 0])
    bottom = source[..., -1] * e3[..., -1]
    return top + inner + bottom


def planck_flux(
    kappa: torch.Tensor,
    rho: torch.Tensor,
    column_mass: torch.Tensor,
    temperature: torch.Tensor,
    c2_over_lambda: torch.Tensor,
) -> torch.Tensor:
    """Emergent flux / (2 pi) (L,) of opacity kappa [cm^-1] (L, D) on a model atmosphere.

    rho [g cm^-3], column_mass [g cm^-2], temperature [K]: (D,) or (L, D); c2_over_lambda =
    hc / (k lambda) [K] (L,). S = B_lambda up to a wavelength-only factor (it cancels in the
    normalised flux).
    """
    tau = optical_depth(kappa / rho, column_mass)
    return emergent_flux(tau, 1.0 / torch.expm1(c2_over_lambda[:, None] / temperature))


def planck_flux_and_sensitivities(
    kappa: torch.Tensor,
    rho: torch.Tensor,
    column_mass: torch.Tensor,
    temperature: torch.Tensor,
    c2_over_lambda: torch.Tensor,
    partials_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, ...]:
    """planck_flux and its partials by kappa, rho, column_mass and temperature, each (L, D).

    Each wavelength's flux depends only on its own opacities, so one reverse pass of the
    summed flux gives every d F(lambda) / d x(lambda, d) (inputs given per wavelength).
    `partials_dtype`: the partials are computed in the inputs' dtype and stored in this one
    (float32 halves the memory they take and the traffic of every product that reads them).
    """
    shape = kappa.shape
    inputs = (kappa, rho.expand(shape), column_mass.expand(shape), temperature.expand(shape))

    def total(k, r, m, t):
        flux = planck_flux(k, r, m, t, c2_over_lambda)
        return flux.sum(), flux

    grads, flux = torch.func.grad(total, argnums=(0, 1, 2, 3), has_aux=True)(*inputs)
    return (flux, *(g.to(partials_dtype or g.dtype) for g in grads))
