"""Batched Levenberg-Marquardt: every spectrum of a batch is its own problem, solved together.

Each spectrum has its own damping lambda, its own accept/reject decision and its own convergence
test; converged spectra drop out of the active set, so later iterations only evaluate the
spectra still moving. Bounds are handled by an active set: a parameter on its bound whose
descent direction points outwards is held there for that step, so the others converge
undisturbed. This keeps parameters in physical units of the grid and leaves the
Jacobian at an interior optimum untouched (a tanh box transform would shrink it near the edges
and distort the Fisher errors).

Steps solve (J^T J + lambda diag(J^T J)) delta = J^T r (Marquardt's scaling), with J the
Jacobian of the model (weighted, continuum projected out) and r the weighted residual. lambda
follows the gain ratio of each step (actual over predicted chi2 gain; Nielsen's update), so a
fit whose quadratic model keeps over-promising is damped at once. Until 2026-12-08 an accepted
step divided lambda by 3 whatever it gained: in the flat directions of 30-label fits the model
promised 0.5-1 in chi2 and the steps gained 0.01, for dozens of iterations (ML fits of 96
held-out LAMOST spectra at S/N 100: mean 17.3 iterations, 4 stopped at max_iter = 50; with the
gain ratio 13.2 and none, same chi2 and labels).

When to stop: at the optimum to a stated precision, not when progress looks slow. The Newton
decrement d^2 = g^T (J^T J)^-1 g (g = J^T r) is the chi2 a Gauss-Newton step would still gain,
i.e. the squared distance to the optimum in units of the fitted errors. A spectrum has converged
when d^2 < decrement_tol (default 1e-6: within 1e-3 sigma of its optimum in every direction).
A test on the chi2 gain alone (until 2026-12-07) stopped ill-conditioned problems short by a
varying amount, and where it stopped depended on float32 rounding, which changes with the
number of spectra the emulator sees at once: the same spectrum came out differently with other
batch companions (under DDP).

Steps respect the box exactly (`_bounded_step`): a parameter that would cross its bound is put
on it and the others are solved again given that move, instead of clamping a step computed as
if it had moved freely.

chi2 is evaluated from the float32 emulator, so two nearby chi2 values differ by rounding: 2-6e-4
measured at S/N 100 on 334 pixels (more pixels or higher S/N: more). A step whose predicted gain
is below `gain_floor` is therefore accepted on the linear model's word unless chi2 rises by more
than gain_floor: the last approach to the optimum follows the gradient (accurate in float32)
rather than chi2 differences below their rounding.
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


def _bounded_step(
    system: torch.Tensor,
    gradient: torch.Tensor,
    current: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    free: torch.Tensor,
    passes: int = 4,
) -> torch.Tensor:
    """Solve system (b, N, N) step = gradient (b, N) with the box respected.

    Parameters not `free` do not move. A free parameter whose step would cross its bound is
    moved onto the bound and fixed there, and the others are solved again given that move
    (A_ff s_f = g_f - A_fF s_F), up to `passes` times. Clamping the unconstrained step instead
    leaves the other parameters' steps computed for a move that did not happen: near the box
    edges (weak labels of an unconstrained fit sit on them) that made the iterations creep.
    """
    eye = torch.eye(system.shape[-1], dtype=system.dtype, device=system.device)
    fixed_step = torch.zeros_like(gradient)
    free = free.clone()
    for _ in range(passes):
        masked = system * free[:, :, None] * free[:, None, :] + (1.0 - free)[:, :, None] * eye
        rhs = (gradient - (system @ fixed_step[..., None])[..., 0]) * free + fixed_step
        step = torch.linalg.lstsq(masked, rhs[..., None]).solution[..., 0]
        target = current + step
        crossing = (free > 0) & ((target < lower) | (target > upper))
        if not crossing.any():
            break
        fixed_step = torch.where(crossing, target.clamp(lower, upper) - current, fixed_step)
        free = free * (~crossing).to(free.dtype)
    return step


def levenberg_marquardt(
    evaluate: Evaluate,
    theta: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    max_iter: int = 50,
    damping: float = 1e-2,
    decrement_tol: float = 1e-6,
    gain_floor: float = 1e-3,
    step_tol: float = 1e-9,
    max_damping: float = 1e10,
) -> LMResult:
    """Minimise chi2 of every row of theta (B, N) within [lower, upper] (N,).

    A spectrum has converged when its Newton decrement (over the parameters not held on a bound)
    is below decrement_tol; when it stalls near the optimum (d^2 < 1e-2, within 0.1 sigma, and
    d^2 is not below half the smallest d^2 of its accepted points so far: the quadratic model no
    longer improves there, as along the flat directions of labels the spectrum barely
    constrains, or float32 rounding); when no parameter moves by more than step_tol; when a step
    damped with lambda >= 1 gains less than 1e-5 (1 + chi2); or when the damping exceeds
    max_damping (no step improves chi2). Well-constrained fits reach d^2 < 1e-6: each
    Gauss-Newton step there shrinks d^2 ~10x.
    """
    b = theta.shape[0]
    rows = torch.arange(b, device=theta.device)
    theta = theta.clamp(lower, upper).clone()
    chi2, residual, jacobian = evaluate(theta, rows, True)
    lam = torch.full((b,), damping, dtype=theta.dtype, device=theta.device)
    nu = torch.full((b,), 2.0, dtype=theta.dtype, device=theta.device)
    n_iter = torch.zeros(b, dtype=torch.long, device=theta.device)
    converged = torch.zeros(b, dtype=torch.bool, device=theta.device)
    previous = torch.full((b,), torch.inf, dtype=theta.dtype, device=theta.device)
    eye = torch.eye(theta.shape[1], dtype=theta.dtype, device=theta.device)
    for _ in range(max_iter + 1):
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
        held = (1.0 - free)[:, :, None] * eye
        diagonal = jtj.diagonal(dim1=-2, dim2=-1).clamp_min(1e-12)
        newton = torch.linalg.lstsq(jtj + held, gradient[..., None]).solution[..., 0]
        decrement = (gradient * newton).sum(-1).clamp_min(0.0)
        stalled = (decrement < 1e-2) & (decrement > 0.5 * previous[active])
        done = (decrement < decrement_tol) | stalled
        converged[active[done]] = True
        active, keep_rows = active[~done], ~done
        if active.numel() == 0 or n_iter[active].min() >= max_iter:
            break
        jtj, gradient, current = jtj[keep_rows], gradient[keep_rows], current[keep_rows]
        diagonal = diagonal[keep_rows]
        system = jtj + lam[active, None, None] * (diagonal[:, :, None] * eye)
        step = _bounded_step(system, gradient, current, lower, upper, free[keep_rows])
        trial = (current + step).clamp(lower, upper)
        step = trial - current
        moved = step.abs().amax(dim=1)
        # gain the linear model predicts: chi2 - |r - J s|^2 = 2 s.g - s.JtJ.s
        predicted = 2.0 * (step * gradient).sum(-1) - (step * (jtj @ step[..., None])[..., 0]).sum(
            -1
        )
        # chi2 alone decides acceptance (one forward pass); the Jacobian, which costs a pass per
        # parameter, is computed only where the step was accepted
        trial_chi2, _, _ = evaluate(trial, active, False)
        old = chi2[active]
        below_rounding = (predicted < gain_floor) & (trial_chi2 < old + gain_floor)
        better = torch.isfinite(trial_chi2) & ((trial_chi2 < old) | below_rounding)
        keep = active[better]
        if keep.numel() > 0:
            new_chi2, new_residual, new_jacobian = evaluate(trial[better], keep, True)
            theta[keep], chi2[keep] = trial[better], new_chi2
            residual[keep], jacobian[keep] = new_residual, new_jacobian
            # the smallest d^2 so far: a fit whose d^2 jitters at a floor still stops
            previous[keep] = torch.minimum(previous[keep], decrement[keep_rows][better])
        # heavily damped (the quadratic model keeps failing, e.g. a label flipping on and off its
        # bound) and gaining nothing: stop as the chi2-gain rule did
        gained = old - trial_chi2
        damped_stall = better & (lam[active] >= 1.0) & (gained < 1e-5 * (1.0 + old))
        # damping from the gain ratio rho = actual / predicted gain (Nielsen 1999; Madsen, Nielsen
        # & Tingleff 2004, eq. 3.16): an accepted step that gained much less than the quadratic
        # model promised (rho < 1/2) raises the damping, so the steps shrink to where the model
        # holds instead of repeating the same over-long step; a rejected one raises it by a
        # factor nu that doubles on every further rejection. Below chi2's rounding rho is noise:
        # the linear model is trusted (rho = 1).
        rho = torch.where(below_rounding, 1.0, gained / predicted.clamp_min(1e-30))
        shrink = (1.0 - (2.0 * rho.clamp(0.0, 1.0) - 1.0) ** 3).clamp_min(1.0 / 3.0)
        lam[active] = torch.where(
            better, (lam[active] * shrink).clamp_min(1e-9), lam[active] * nu[active]
        )
        nu[active] = torch.where(better, 2.0, nu[active] * 2.0)
        n_iter[active] += 1
        hopeless = (moved < step_tol) | (lam[active] > max_damping) | damped_stall
        converged[active[hopeless]] = True
    return LMResult(theta, chi2, jacobian, n_iter, converged)
