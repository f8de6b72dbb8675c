"""The continuum: a Chebyshev polynomial per spectrum (optionally per arm), solved exactly.

The observed flux is modelled as continuum(lambda) x normalised model(lambda). For fixed labels the
continuum coefficients enter linearly, so they are solved by weighted linear least squares at every
step instead of being optimised (variable projection): the label optimiser never sees them, and the
Fisher matrix of the labels is the one with the continuum marginalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def chebyshev_basis(
    wavelength: np.ndarray, order: int, segments: Sequence[float] | None = None
) -> np.ndarray:
    """Design matrix (P, M) of Chebyshev polynomials T_0..T_order in wavelength [Angstrom].

    `segments` are break wavelengths [A] (e.g. between a spectrograph's blue and red arms): each
    segment gets its own polynomial (zero outside it), so M = (order + 1) x n_segments. Breaks
    outside the grid's range are ignored, so one LAMOST config (break at the 5800 A dichroic)
    serves emulators that cover one arm only.
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if order < 0:
        raise ValueError(f"continuum order must be >= 0, got {order}")
    breaks = sorted(float(s) for s in (segments or ()))
    breaks = [b for b in breaks if wavelength[0] < b <= wavelength[-1]]
    edges = [-np.inf, *breaks, np.inf]
    columns = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (wavelength >= low) & (wavelength < high)
        if not inside.any():
            raise ValueError(
                f"continuum segment [{low}, {high}) A holds no pixel of the model grid "
                f"({wavelength[0]:.1f}-{wavelength[-1]:.1f} A)"
            )
        w = wavelength[inside]
        x = np.zeros_like(wavelength)
        x[inside] = 2.0 * (w - w[0]) / max(w[-1] - w[0], 1e-12) - 1.0
        basis = np.polynomial.chebyshev.chebvander(x, order)  # (P, order + 1)
        columns.append(basis * inside[:, None])
    return np.concatenate(columns, axis=1)


def _normal_equations(design: torch.Tensor, weights: torch.Tensor, ridge: float):
    """G = D^T W D + ridge * trace-scaled I for design (B, P, M) and weights (B, P)."""
    gram = torch.einsum("bpm,bp,bpn->bmn", design, weights, design)
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return gram + ridge * scale[:, None, None] * eye


def solve_continuum(
    model: torch.Tensor,
    flux: torch.Tensor,
    ivar: torch.Tensor,
    basis: torch.Tensor,
    ridge: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients (B, M) and continuum (B, P) minimising sum ivar (flux - model x basis c)^2."""
    design = model[:, :, None] * basis[None]
    gram = _normal_equations(design, ivar, ridge)
    rhs = torch.einsum("bpm,bp->bm", design, ivar * flux)
    coefficients = torch.linalg.solve(gram, rhs)
    return coefficients, coefficients @ basis.T


def template_chi2(
    flux: torch.Tensor,
    ivar: torch.Tensor,
    basis: torch.Tensor,
    templates: torch.Tensor,
    ridge: float = 1e-10,
) -> torch.Tensor:
    """chi2 (B, T) of every spectrum against every template (T, P), each with its best continuum.

    chi2 = sum w y^2 - b^T G^-1 b with G_ij = sum_p w m^2 A_i A_j and b_i = sum_p w y m A_i,
    computed as two matrix products over pixels (no (B, T, P) intermediate).
    """
    m = basis.shape[1]
    pair = (basis[:, :, None] * basis[:, None, :]).reshape(basis.shape[0], m * m)  # (P, M^2)
    gram = torch.einsum("bp,pk->bkp", ivar, pair) @ (templates**2).T  # (B, M^2, T)
    gram = gram.permute(0, 2, 1).reshape(flux.shape[0], templates.shape[0], m, m)
    rhs = (torch.einsum("bp,pm->bmp", ivar * flux, basis) @ templates.T).permute(0, 2, 1)
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)
    gram = gram + ridge * scale[..., None, None] * torch.eye(
        m, dtype=gram.dtype, device=gram.device
    )
    coefficients = torch.linalg.solve(gram, rhs[..., None])[..., 0]
    total = (ivar * flux**2).sum(-1, keepdim=True)
    return total - (coefficients * rhs).sum(-1)
