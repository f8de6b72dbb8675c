"""Optional posterior sampling of chosen spectra with `emcee` (vectorised over walkers).

The likelihood is exp(-chi2 / 2) with the continuum profiled (solved exactly for each sample);
the prior is uniform inside the fitter's bounds, times the Gaussian `label_prior` when the model
has one (its penalty is part of the model's chi2). All walkers of a step are one emulator batch.
"""

from __future__ import annotations

import numpy as np
import torch

from phdl.fit.model import RV_SCALE, SpectrumModel


def sample_posterior(
    model: SpectrumModel,
    flux: torch.Tensor,
    ivar: torch.Tensor,
    theta: torch.Tensor,
    base: torch.Tensor,
    n_walkers: int = 64,
    n_steps: int = 500,
    scale: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Chain (n_steps, n_walkers, N) in physical units (fitted labels, then v [km/s]).

    Walkers start in a small ball around `theta` (N,) of width `scale` (N,) (e.g. the Fisher
    errors in theta units; default 1e-3).
    """
    import emcee

    n = theta.numel()
    lower, upper = model.lower.cpu().numpy(), model.upper.cpu().numpy()
    centre = theta.detach().cpu().numpy().reshape(-1)
    width = np.full(n, 1e-3) if scale is None else np.maximum(np.asarray(scale), 1e-6)
    rng = np.random.default_rng(seed)
    start = np.clip(centre + width * rng.standard_normal((n_walkers, n)), lower, upper)
    flux_b, ivar_b, base_b = flux.reshape(1, -1), ivar.reshape(1, -1), base.reshape(1, -1)

    def log_probability(points: np.ndarray) -> np.ndarray:
        inside = np.all((points >= lower) & (points <= upper), axis=1)
        values = np.full(points.shape[0], -np.inf)
        if inside.any():
            th = torch.as_tensor(points[inside], dtype=torch.float64, device=model.device)
            k = th.shape[0]
            chi2 = model.evaluate(
                th, base_b.expand(k, -1), flux_b.expand(k, -1), ivar_b.expand(k, -1)
            ).chi2
            values[inside] = -0.5 * chi2.cpu().numpy()
        return values

    sampler = emcee.EnsembleSampler(n_walkers, n, log_probability, vectorize=True)
    sampler.random_state = np.random.RandomState(seed).get_state()  # reproducible chains
    sampler.run_mcmc(start, n_steps, progress=False)
    chain = sampler.get_chain()  # (steps, walkers, N) in theta units
    n_labels = len(model.fit_labels)
    span = np.asarray(model.emulator.label_scaling.span())[model.fit_index.cpu().numpy()]
    low = np.asarray(model.emulator.label_scaling.minimum)[model.fit_index.cpu().numpy()]
    physical = chain.copy()
    physical[..., :n_labels] = (chain[..., :n_labels] + 0.5) * span + low
    if model.fit_rv:
        physical[..., n_labels] = chain[..., n_labels] * RV_SCALE
    return physical
