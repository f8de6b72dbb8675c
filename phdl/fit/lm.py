"""Batched Levenberg-Marquardt: every spectrum of a batch is its own problem, solved together.

Each spectrum has its own damping lambda, its own accept/reject decision and its own convergence
test; converged spectra drop out of the active set, so later iterations only evaluate the
spectra still moving. Bounds are handled by projection: a trial point is clamped into the box
[lower, upper] before it is evaluated, and a parameter on its bound whose descent direction points
outwards is held there for that step (active set), so the others converge undisturbed. Projection keeps parameters in physical units of the grid and leaves the
Jacobian at an interior optimum untouched (a tanh box transform would shrink it near the edges
and distort the Fisher errors).

Steps solve (J^T J + lambda diag(J^T J)) delta = J^T r (Marquardt's scaling), with J the
Jacobian of the model (weighted, continuum projected out) and r the weighted residual.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: evaluate(theta (b, N), rows (b,), jacobian) -> (chi2 (b,), residual (b, P), jacobian (b, P, N)
#: or None when not asked for)
Evaluate = Callable[
    [torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
]


@dataclass
class LMResult:
    """Optimum theta (B, N), chi2 (B,), Jacobian there (B, P, N), iterations and convergence."""

    theta: torch.Tensor
    chi2: torch.Tensor
    jacobian: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor


def levenberg_marquardt(
    evaluate: Evaluate,
    theta: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    max_iter: int = 50,
    damping: float = 1e-2,
    chi2_tol: float = 1e-5,
    step_tol: float = 1e-7,
    max_damping: float = 1e10,
) -> LMResult:
    """Minimise chi2 of every row of theta (B, N) within [lower, upper] (N,).

    A spectrum has converged when an accepted step lowers chi2 by less than chi2_tol x (1 + chi2)
    or moves no parameter by more than step_tol, or when the damping exceeds max_damping (no
    step improves chi2: a minimum to working precision).
    """
    b = theta.shape[0]
    rows = torch.arange(b, device=theta.device)
    theta = theta.clamp(lower, upper).clone()
    chi2, residual, jacobian = evaluate(theta, rows, True)
    lam = torch.full((b,), damping, dtype=theta.dtype, device=theta.device)
    n_iter = torch.zeros(b, dtype=torch.long, device=theta.device)
    converged = torch.zeros(b, dtype=torch.bool, device=theta.device)
    eye = torch.eye(theta.shape[1], dtype=theta.dtype, device=theta.device)
    for _ in range(max_iter):
        active = (~converged).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        j, r = jacobian[active], residual[active]
        jtj = j.transpose(1, 2) @ j
        gradient = (j.transpose(1, 2) @ r[..., None])[..., 0]
        # active set: a parameter on its bound whose descent direction points outwards is held
        current = theta[active]
        blocked = ((current <= lower + 1e-9) & (gradient < 0)) | (
            (current >= upper - 1e-9) & (gradient > 0)
        )
        free = (~blocked).to(jtj.dtype)
        jtj = jtj * free[:, :, None] * free[:, None, :]
        gradient = gradient * free
        diagonal = jtj.diagonal(dim1=-2, dim2=-1).clamp_min(1e-12)
        system = jtj + lam[active, None, None] * (diagonal[:, :, None] * eye)
        system = system + (1.0 - free)[:, :, None] * eye
        step = torch.linalg.lstsq(system, gradient[..., None]).solution[..., 0]
        trial = (current + step).clamp(lower, upper)
        moved = (trial - current).abs().amax(dim=1)
        # chi2 alone decides acceptance (one forward pass); the Jacobian, which costs a pass per
        # parameter, is computed only where the step was accepted
        trial_chi2, _, _ = evaluate(trial, active, False)
        old = chi2[active]
        better = torch.isfinite(trial_chi2) & (trial_chi2 < old)
        keep = active[better]
        if keep.numel() > 0:
            new_chi2, new_residual, new_jacobian = evaluate(trial[better], keep, True)
            theta[keep], chi2[keep] = trial[better], new_chi2
            residual[keep], jacobian[keep] = new_residual, new_jacobian
        lam[active] = torch.where(better, (lam[active] / 3.0).clamp_min(1e-9), lam[active] * 4.0)
        n_iter[active] += 1
        small_gain = better & (old - trial_chi2 < chi2_tol * (1.0 + old))
        done = small_gain | (moved < step_tol) | (lam[active] > max_damping)
        converged[active[done]] = True
    return LMResult(theta, chi2, jacobian, n_iter, converged)
