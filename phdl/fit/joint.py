"""Joint fit of several exposures of one star: shared labels, a radial velocity per exposure.

Each exposure keeps its own continuum (solved exactly, projected out as in a single fit) and its
own RV; the labels are common. Stars are batched like single spectra: a star's parameter vector
is [labels (K), v_1 ... v_E] (scaled units), its residual the exposures' residuals one after the
other, and its Jacobian block-structured (every exposure fills the label columns and its own RV
column). Stars with fewer exposures than the batch's largest are padded with ivar = 0 exposures,
which add nothing to chi2 and whose RV is reported as NaN. The same batched Levenberg-Marquardt
and Fisher errors as for single spectra then apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from phdl.fit.lm import levenberg_marquardt
from phdl.fit.model import RV_SCALE, SpectrumModel, fisher_covariance


def fit_exposures(
    model: SpectrumModel,
    flux: Sequence[torch.Tensor],
    ivar: Sequence[torch.Tensor],
    max_iter: int = 50,
    grid_size: int = 6,
    rv_step: float = 10.0,
) -> dict[str, np.ndarray]:
    """Fit stars whose exposures are given as flux[s], ivar[s] of shape (E_s, P) on the model grid.

    Returns per star: `labels` (S, K) and `labels_err` (S, K) [physical units, model.fit_labels
    order], `rv` and `rv_err` (S, E_max) [km/s, NaN for padding], `chi2` (S,), `n_iter`,
    `converged`. Needs model.fit_rv (one velocity per exposure) and no broadening.
    """
    if not model.fit_rv or model.fit_broadening:
        raise ValueError("fit_exposures needs a SpectrumModel with fit_rv=True, no broadening")
    n_stars, k = len(flux), len(model.fit_labels)
    n_exp = max(int(f.shape[0]) for f in flux)
    p = model.basis.shape[0]
    device = model.device
    stacked_flux = torch.zeros(n_stars, n_exp, p, dtype=torch.float64, device=device)
    stacked_ivar = torch.zeros_like(stacked_flux)
    present = torch.zeros(n_stars, n_exp, dtype=torch.bool, device=device)
    for s, (f, w) in enumerate(zip(flux, ivar)):
        stacked_flux[s, : f.shape[0]] = torch.as_tensor(f, dtype=torch.float64, device=device)
        stacked_ivar[s, : f.shape[0]] = torch.as_tensor(w, dtype=torch.float64, device=device)
        present[s, : f.shape[0]] = True
    flat_flux = stacked_flux.reshape(n_stars * n_exp, p)
    flat_ivar = stacked_ivar.reshape(n_stars * n_exp, p)

    # start: each exposure fitted on its own (template start, then Levenberg-Marquardt), and the
    # labels of the exposure with the best chi2 per pixel; starting the joint fit from the coarse
    # template point instead let it end in a wrong minimum for some stars (measured)
    real = present.reshape(-1).nonzero().squeeze(1)
    theta_single, base_single = model.initial_guess(flat_flux[real], flat_ivar[real], grid_size,
                                                    rv_step)  # fmt: skip
    # the emulator's own error joins each exposure's noise (no-op without a stored flux_error)
    flat_ivar[real] = model.model_ivar(theta_single, base_single, flat_flux[real], flat_ivar[real])
    single = model.optimise(theta_single, base_single, flat_flux[real], flat_ivar[real], max_iter)
    theta_single, start_chi2 = single.theta, single.chi2
    n_pix = (flat_ivar[real] > 0).sum(-1).clamp_min(1)
    score = torch.full((n_stars * n_exp,), float("inf"), dtype=torch.float64, device=device)
    score[real] = start_chi2 / n_pix
    best = score.reshape(n_stars, n_exp).argmin(dim=1)
    labels0 = torch.zeros(n_stars * n_exp, k, dtype=torch.float64, device=device)
    rv0 = torch.zeros(n_stars * n_exp, dtype=torch.float64, device=device)
    labels0[real], rv0[real] = theta_single[:, :k], theta_single[:, k]
    labels0 = labels0.reshape(n_stars, n_exp, k)[torch.arange(n_stars), best]
    theta = torch.cat([labels0, rv0.reshape(n_stars, n_exp)], dim=1)  # (S, K + E)
    base = model.default_scaled_labels().repeat(n_stars * n_exp, 1)
    lower = torch.cat([model.lower[:k], model.lower[k].repeat(n_exp)])
    upper = torch.cat([model.upper[:k], model.upper[k].repeat(n_exp)])

    def expand(th: torch.Tensor) -> torch.Tensor:
        """Star parameters (b, K + E) -> exposure parameters (b * E, K + 1)."""
        labels = th[:, :k].repeat_interleave(n_exp, dim=0)
        return torch.cat([labels, th[:, k:].reshape(-1, 1)], dim=1)

    def evaluate(th: torch.Tensor, rows: torch.Tensor, jacobian: bool):
        b = th.shape[0]
        exposures = (rows[:, None] * n_exp + torch.arange(n_exp, device=device)).reshape(-1)
        e = model.evaluate(expand(th), base[exposures], flat_flux[exposures],
                           flat_ivar[exposures], jacobian=jacobian, prior=False)  # fmt: skip
        chi2 = e.chi2.reshape(b, n_exp).sum(1)
        residual = e.residual.reshape(b, n_exp * p)
        # the label prior once per star (not per exposure), on the shared labels
        prior_residual, prior_jacobian = model.prior_terms(th[:, :k])
        if model.has_prior:
            chi2 = chi2 + prior_residual.square().sum(-1)
            residual = torch.cat([residual, prior_residual], dim=-1)
        if not jacobian:
            return chi2, residual, None
        j = e.jacobian.reshape(b, n_exp, p, k + 1)
        full = torch.zeros(b, n_exp, p, k + n_exp, dtype=j.dtype, device=device)
        full[..., :k] = j[..., :k]
        for exposure in range(n_exp):
            full[:, exposure, :, k + exposure] = j[:, exposure, :, k]
        full = full.reshape(b, n_exp * p, k + n_exp)
        if model.has_prior:
            prior_rows = torch.zeros(b, k, k + n_exp, dtype=j.dtype, device=device)
            prior_rows[..., :k] = prior_jacobian
            full = torch.cat([full, prior_rows], dim=1)
        return chi2, residual, full

    result = levenberg_marquardt(evaluate, theta, lower, upper, max_iter)
    covariance, _ = fisher_covariance(result.jacobian)
    sigma = covariance.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    span = torch.as_tensor(model.emulator.label_scaling.span(), dtype=torch.float64,
                           device=device)[model.fit_index]  # fmt: skip
    scaled = model.full_labels(result.theta[:, :k], base[::n_exp])
    physical = model.emulator.unscale(scaled.to(model.network_dtype)).double()[:, model.fit_index]
    rv = torch.where(present, result.theta[:, k:] * RV_SCALE, torch.nan)
    rv_err = torch.where(present, sigma[:, k:] * RV_SCALE, torch.nan)
    prior_chi2 = model.prior_chi2(result.theta[:, :k])
    return {
        "labels": physical.cpu().numpy(),
        "labels_err": (sigma[:, :k] * span).cpu().numpy(),
        "rv": rv.cpu().numpy(),
        "rv_err": rv_err.cpu().numpy(),
        "chi2": (result.chi2 - prior_chi2).cpu().numpy(),  # the spectra's own, prior removed
        "n_iter": result.n_iter.cpu().numpy(),
        "converged": result.converged.cpu().numpy(),
    }
