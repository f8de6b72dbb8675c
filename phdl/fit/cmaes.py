"""Optional global stage: CMA-ES per spectrum (the `cma` library) with batched chi2 evaluations.

Why the `cma` library and not a torch re-implementation: its step-size and covariance adaptation,
restarts and bound handling are the reference implementation (Hansen), well tested; its cost is
bookkeeping on N ~ 30 dimensions per spectrum, negligible next to the emulator. What matters for
throughput is that the emulator sees one big batch: every generation, all spectra's populations
(B x popsize candidates) are stacked and evaluated in a single call.

Each spectrum's strategy draws from its own generator, seeded by (seed, key) with key the
spectrum's position in the dataset: the `cma` default (the global numpy generator, shared by
all strategies) made a spectrum's search depend on which spectra were fitted beside it, so DDP
ranks and batch sizes changed the result.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

#: chi2(theta (b, N), rows (b,)) -> chi2 (b,)
Chi2 = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cmaes_search(
    chi2: Chi2,
    theta: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    sigma: float = 0.1,
    popsize: int = 16,
    iterations: int = 30,
    seed: int = 0,
    keys: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best theta (B, N) and chi2 (B,) after `iterations` CMA-ES generations per spectrum.

    keys (B,) non-negative ints, one per spectrum (default 0..B-1), seed its random draws with
    `seed`: the same (seed, key) gives the same search whatever the batch.
    """
    import cma

    b, n = theta.shape
    keys = np.arange(b) if keys is None else np.asarray(keys, dtype=np.int64)
    bounds = [lower.cpu().numpy().tolist(), upper.cpu().numpy().tolist()]
    start = theta.detach().cpu().numpy()
    strategies = []
    for i in range(b):
        generator = np.random.default_rng([seed, int(keys[i])])
        options = {"bounds": bounds, "popsize": popsize, "verbose": -9, "seed": np.nan,
                   "maxiter": iterations, "tolfun": 1e-9,
                   "randn": lambda *shape, g=generator: g.standard_normal(shape)}  # fmt: skip
        strategies.append(cma.CMAEvolutionStrategy(start[i], sigma, options))
    best = theta.detach().clone()
    best_chi2 = chi2(best, torch.arange(b, device=theta.device))
    for _ in range(iterations):
        running = [i for i, es in enumerate(strategies) if not es.stop()]
        if not running:
            break
        candidates = [np.asarray(strategies[i].ask()) for i in running]
        stacked = torch.as_tensor(
            np.concatenate(candidates), dtype=theta.dtype, device=theta.device
        )
        rows = torch.as_tensor(np.repeat(running, popsize), device=theta.device)
        values = chi2(stacked, rows).reshape(len(running), popsize)
        values = torch.nan_to_num(values, nan=float("inf"))
        for k, i in enumerate(running):
            strategies[i].tell(list(candidates[k]), values[k].cpu().numpy().tolist())
            j = int(values[k].argmin())
            if values[k, j] < best_chi2[i]:
                best_chi2[i] = values[k, j]
                best[i] = stacked[k * popsize + j]
    return best, best_chi2
