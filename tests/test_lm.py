"""The batched Levenberg-Marquardt on its own: box-respecting steps, where it stops, batch companions.

Problems with known answers: a quadratic whose box-constrained minimum is known in closed form,
and a nonlinear least-squares fit (a Gaussian line) whose optimum a float64 reference solver finds.
"""

from __future__ import annotations

import numpy as np
import torch
from fit_toy import FEW_LABELS, observe, random_labels, toy_emulator

from phdl.fit.fitter import LabelFitter
from phdl.fit.lm import _bounded_step, levenberg_marquardt


def test_bounded_step_solves_the_box_constrained_quadratic_not_a_clamped_one():
    # minimise s.A.s - 2 g.s with s_0 <= 0.5: the free minimum is (2.5, -2.5)
    a = torch.tensor([[[2.0, 1.2], [1.2, 1.0]]], dtype=torch.float64)
    g = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    current = torch.zeros(1, 2, dtype=torch.float64)
    lower = torch.tensor([-5.0, -5.0], dtype=torch.float64)
    upper = torch.tensor([0.5, 5.0], dtype=torch.float64)
    free = torch.ones(1, 2, dtype=torch.float64)
    step = _bounded_step(a, g, current, lower, upper, free)
    # s_0 on its bound, s_1 the minimum given it: (g_1 - A_10 s_0) / A_11
    expected = torch.tensor([[0.5, (0.5 - 1.2 * 0.5) / 1.0]], dtype=torch.float64)
    assert torch.allclose(step, expected, atol=1e-12)
    clamped = torch.linalg.solve(a, g[..., None])[..., 0].clamp(lower, upper)
    assert (clamped - expected).abs().max() > 0.1  # what clamping would have given instead
    # a parameter that is not free does not move, and the others are solved without it
    held = _bounded_step(a, g, current, lower, upper, torch.tensor([[0.0, 1.0]]).double())
    assert held[0, 0] == 0.0 and torch.isclose(held[0, 1], torch.tensor(0.5, dtype=torch.float64))


def _line_problem(n: int, seed: int):
    """Gaussian-line fits (amplitude, centre, log width) with noise; centre bounded to [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = torch.linspace(-5.0, 5.0, 200, dtype=torch.float64)
    truth = torch.tensor(
        np.c_[rng.uniform(0.5, 1.5, n), rng.uniform(-0.5, 1.6, n), rng.uniform(-0.3, 0.3, n)]
    )
    sigma = 0.05
    data = _line(truth, x) + sigma * torch.tensor(rng.standard_normal((n, x.numel())))

    def evaluate(theta, rows, jacobian):
        model = _line(theta, x)
        residual = (data[rows] - model) / sigma
        j = None
        if jacobian:
            j = torch.func.vmap(torch.func.jacfwd(lambda t: _line(t[None], x)[0]))(theta) / sigma
        return residual.square().sum(-1), residual, j

    lower = torch.tensor([0.0, -1.0, -1.0], dtype=torch.float64)
    upper = torch.tensor([3.0, 1.0, 1.0], dtype=torch.float64)
    start = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64).repeat(n, 1)
    return evaluate, start, lower, upper


def _line(theta, x):
    amplitude, centre, log_width = theta[:, :1], theta[:, 1:2], theta[:, 2:3]
    return amplitude * torch.exp(-0.5 * ((x - centre) / torch.exp(log_width)) ** 2)


def test_fits_stop_at_the_optimum_in_units_of_their_errors():
    evaluate, start, lower, upper = _line_problem(12, seed=1)
    result = levenberg_marquardt(evaluate, start, lower, upper)
    assert result.converged.all()
    # at the optimum: the gradient vanishes in every free direction to < 1e-3 sigma
    _, residual, j = evaluate(result.theta, torch.arange(12), True)
    gradient = (j.transpose(1, 2) @ residual[..., None])[..., 0]
    on_bound = (result.theta <= lower + 1e-9) | (result.theta >= upper - 1e-9)
    assert on_bound[:, 1].sum() >= 2  # some true centres lie beyond the box
    free = ~on_bound
    for i in range(12):
        f = free[i]
        jtj = j[i][:, f].T @ j[i][:, f]
        decrement = gradient[i, f] @ torch.linalg.solve(jtj, gradient[i, f])
        assert decrement < 1e-6, (i, decrement)
        # on a bound, chi2 must rise inwards (a KKT point, not a stall)
        for k in (~f).nonzero().squeeze(1):
            inwards = 1.0 if result.theta[i, k] <= lower[k] + 1e-9 else -1.0
            assert gradient[i, k] * inwards <= 0.0


def test_a_spectrum_fits_the_same_whatever_its_batch_companions():
    emulator = toy_emulator()
    labels = random_labels(emulator, 9, seed=11)
    rv = np.random.default_rng(12).uniform(-100.0, 100.0, 9)
    flux, ivar = observe(emulator, labels, snr=80.0, rv=rv, seed=13)
    flux, ivar = torch.tensor(flux), torch.tensor(ivar)
    fitter = LabelFitter.from_emulator(emulator)
    ids = [str(i) for i in range(9)]
    together = fitter.fit(flux, ivar, ids)
    for size in (1, 2, 4):
        parts = [fitter.fit(flux[s : s + size], ivar[s : s + size], ids[s : s + size])
                 for s in range(0, 9, size)]  # fmt: skip
        for name in [*FEW_LABELS, "rv"]:
            alone = np.concatenate([p[name] for p in parts])
            difference = np.abs(alone - together[name]) / together[f"{name}_err"]
            # measured 6e-5 (the chi2-gain stopping rule before 2026-12-07: 1.4e-3)
            assert difference.max() < 3e-4, (size, name, difference.max())


def test_cmaes_search_of_a_spectrum_does_not_depend_on_its_companions():
    from phdl.fit.cmaes import cmaes_search

    centres = torch.tensor([[0.3, -0.2], [-0.1, 0.4], [0.2, 0.2]], dtype=torch.float64)

    def chi2(theta, rows):
        return ((theta - centres[rows]) / 0.05).square().sum(-1)

    lower, upper = torch.full((2,), -1.0).double(), torch.full((2,), 1.0).double()
    start = torch.zeros(3, 2, dtype=torch.float64)
    together, _ = cmaes_search(chi2, start, lower, upper, iterations=5, seed=3)
    for row in range(3):
        alone, _ = cmaes_search(
            lambda theta, rows, r=row: chi2(theta, torch.full_like(rows, r)),
            start[row : row + 1], lower, upper, iterations=5, seed=3, keys=[row],
        )  # fmt: skip
        assert torch.equal(alone[0], together[row])
    other_seed, _ = cmaes_search(chi2, start, lower, upper, iterations=5, seed=4)
    assert not torch.equal(other_seed, together)
