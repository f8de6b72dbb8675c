"""The data model of a fit: emulator flux at the labels, Doppler shifted, times a fitted continuum.

    flux_obs(lambda) = continuum(lambda) x emulator(labels)(lambda / (1 + v/c)) + noise (ivar)

Parameters theta (B, N) are the fitted labels in the emulator's scaled units ([-0.5, 0.5] spans
the training grid) followed, when the radial velocity is fitted, by v / RV_SCALE. Labels that are
not fitted stay at their value in `base` (B, L). The continuum is solved exactly for every theta
(phdl.fit.continuum) and projected out of the Jacobian (variable projection), so chi2, the
optimiser's steps and the Fisher matrix all have the continuum marginalised.

An optional Gaussian label prior (`label_prior`) adds (theta - mean) / sigma per label to the
residual vector, so the same Levenberg-Marquardt finds the maximum a posteriori labels and the
inverse Fisher matrix becomes the posterior covariance. A label the spectrum cannot constrain then
stays at the prior mean with the prior's width as its error, instead of wandering to a bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np
import torch

from phdl.fit.continuum import _normal_equations, chebyshev_basis, template_chi2
from phdl.fit.doppler import DopplerShift
from phdl.fit.lm import LMResult, levenberg_marquardt
from phdl.models.base import SpectrumEmulator

#: theta's RV entry is v / RV_SCALE [km/s], so all parameters are O(0.1-1).
RV_SCALE = 100.0


@dataclass
class Evaluation:
    """chi2 (B,), weighted residuals (B, P) and, if asked, the projected Jacobian (B, P, N).

    With a label prior, chi2 includes the prior's penalty (`SpectrumModel.prior_chi2`) and the
    residual and Jacobian carry N extra rows (the prior's), after the P pixels.
    """

    chi2: torch.Tensor
    residual: torch.Tensor
    jacobian: torch.Tensor | None = None
    model: torch.Tensor | None = None  # continuum x shifted normalised model (B, P)
    continuum: torch.Tensor | None = None  # (B, P)


class SpectrumModel:
    """Forward model, chi2 and Jacobian of a batch of spectra on an emulator's grid.

    Args:
        emulator: frozen SpectrumEmulator (its device is used).
        fit_labels: labels to fit (default: all); the others stay at `base`.
        fit_rv: fit the radial velocity (else v = 0).
        rv_bounds: allowed velocities [km/s].
        continuum_order: Chebyshev order of the continuum.
        continuum_segments: break wavelengths [A] between independently fitted continuum pieces.
        label_margin: allowed extrapolation beyond the training grid, in scaled units.
        jacobian_rows: rows (spectra x labels) per forward-mode pass (caps memory).
        jacobian_method: 'forward' (forward-mode AD, exact) or 'finite_difference'.
        fd_step: finite-difference step [scaled label units].
        fit_broadening: fit an extra Gaussian broadening of the model (sigma in km/s, e.g. a
            resolution mismatch or rotation), parametrised as (sigma / RV_SCALE)^2 >= 0 so its
            derivative does not vanish at zero.
        broadening_max: largest broadening sigma [km/s].
        label_prior: Gaussian prior {label or pattern: (mean, sigma)} in the label's physical
            units, e.g. {"*_fe": (0.0, 0.25)}; patterns are shell-style (fnmatch) over the fitted
            labels, an exact name wins over a pattern. None: maximum likelihood.
        flux_error: the emulator's own error per pixel (P,) [normalised flux], e.g. its rms
            residual on held-out grid spectra; `model_ivar` adds it to the noise. None: the
            emulator is taken as exact.
    """

    def __init__(
        self,
        emulator: SpectrumEmulator,
        fit_labels: Sequence[str] | None = None,
        fit_rv: bool = True,
        rv_bounds: tuple[float, float] = (-500.0, 500.0),
        continuum_order: int = 3,
        continuum_segments: Sequence[float] | None = None,
        label_margin: float = 0.0,
        jacobian_rows: int = 4096,
        jacobian_method: str = "forward",
        fd_step: float = 1e-3,
        fit_broadening: bool = False,
        broadening_max: float = 300.0,
        label_prior: Mapping[str, Sequence[float]] | None = None,
        flux_error: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        if jacobian_method not in ("forward", "finite_difference"):
            raise ValueError(
                f"jacobian_method must be 'forward' or 'finite_difference', got '{jacobian_method}'"
            )
        self.jacobian_method, self.fd_step = jacobian_method, float(fd_step)
        self.emulator = emulator
        self.names = tuple(emulator.label_names)
        fit_labels = self.names if fit_labels is None else tuple(fit_labels)
        unknown = [n for n in fit_labels if n not in self.names]
        if unknown:
            raise KeyError(f"fit_labels {unknown} not in the emulator's labels {list(self.names)}")
        self.fit_labels = fit_labels
        self.device = emulator._label_min.device
        self.network_dtype = emulator._label_min.dtype
        self.fit_index = torch.tensor([self.names.index(n) for n in fit_labels], device=self.device)
        self.fit_rv = bool(fit_rv)
        self.rv_bounds = (float(rv_bounds[0]), float(rv_bounds[1]))
        self.fit_broadening = bool(fit_broadening)
        self.n_params = len(fit_labels) + int(self.fit_rv) + int(self.fit_broadening)
        self.jacobian_rows = int(jacobian_rows)
        wavelength = emulator.wavelength
        self.basis = torch.as_tensor(
            chebyshev_basis(wavelength, continuum_order, continuum_segments),
            dtype=torch.float64, device=self.device,
        )  # fmt: skip
        self.doppler = DopplerShift(wavelength, device=self.device)
        if self.fit_broadening and not self.doppler.uniform:
            raise ValueError("fit_broadening needs an emulator grid uniform in log wavelength")
        # (sigma / RV_SCALE)^2 -> Gaussian variance in pixels^2
        self.width_per_theta = (RV_SCALE / (299_792.458 * self.doppler.log_step)) ** 2
        speed = max(abs(self.rv_bounds[0]), abs(self.rv_bounds[1])) if self.fit_rv else 0.0
        speed += 4.0 * broadening_max if self.fit_broadening else 0.0
        self.usable = self.doppler.valid_pixels(speed)  # (P,) pixels inside the grid for any v
        lower = [-0.5 - label_margin] * len(fit_labels)
        upper = [0.5 + label_margin] * len(fit_labels)
        if self.fit_rv:
            lower.append(self.rv_bounds[0] / RV_SCALE)
            upper.append(self.rv_bounds[1] / RV_SCALE)
        if self.fit_broadening:
            lower.append(0.0)
            upper.append((broadening_max / RV_SCALE) ** 2)
        self.lower = torch.tensor(lower, dtype=torch.float64, device=self.device)
        self.upper = torch.tensor(upper, dtype=torch.float64, device=self.device)
        self.prior_mean, self.prior_weight = self._resolve_prior(label_prior)
        self.flux_error = None
        if flux_error is not None:
            error = torch.as_tensor(flux_error, dtype=torch.float64, device=self.device)
            if error.shape != (wavelength.shape[0],) or not bool(torch.isfinite(error).all()):
                raise ValueError(
                    f"flux_error must be {wavelength.shape[0]} finite values (one per emulator "
                    f"pixel), got shape {tuple(error.shape)}"
                )
            self.flux_error = error.clamp_min(0.0)

    def _resolve_prior(self, label_prior) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior mean (N,) and 1/sigma (N,) in theta units; weight 0 where a label has no prior."""
        n = self.n_params
        mean = torch.zeros(n, dtype=torch.float64, device=self.device)
        weight = torch.zeros(n, dtype=torch.float64, device=self.device)
        if not label_prior:
            return mean, weight
        minimum = np.asarray(self.emulator.label_scaling.minimum, dtype=np.float64)
        span = np.asarray(self.emulator.label_scaling.span(), dtype=np.float64)
        for key, value in label_prior.items():
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            if len(values) != 2 or not all(np.isfinite(float(v)) for v in values):
                raise ValueError(f"label_prior['{key}'] must be (mean, sigma), got {value!r}")
            if float(values[1]) <= 0:
                raise ValueError(f"label_prior['{key}']: sigma must be > 0, got {values[1]}")
            if not any(fnmatchcase(name, key) for name in self.fit_labels):
                raise KeyError(
                    f"label_prior key '{key}' matches none of the fitted labels {list(self.fit_labels)}"
                )
        for k, name in enumerate(self.fit_labels):
            patterns = [name] if name in label_prior else list(label_prior)
            key = next((p for p in patterns if fnmatchcase(name, p)), None)
            if key is None:
                continue
            centre, sigma = (float(v) for v in label_prior[key])
            j = self.names.index(name)
            mean[k] = (centre - minimum[j]) / span[j] - 0.5
            weight[k] = span[j] / sigma
        return mean, weight

    @property
    def has_prior(self) -> bool:
        """True when at least one fitted label has a Gaussian prior."""
        return bool((self.prior_weight > 0).any())

    def prior_terms(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior's weighted residuals (B, N) and their Jacobian (B, N, N) at theta (B, N).

        Same convention as the pixels (residual = "data" - model, Jacobian of the model), so
        they can be appended to them: residual (mean - theta) / sigma, Jacobian diag(1 / sigma).
        """
        n = theta.shape[-1]  # the first n parameters (the labels alone will do)
        weight = self.prior_weight[:n]
        residual = (self.prior_mean[:n] - theta) * weight
        jacobian = torch.diag_embed(weight.expand_as(theta))
        return residual, jacobian

    def prior_chi2(self, theta: torch.Tensor) -> torch.Tensor:
        """The label prior's share (B,) of chi2 at theta (0 without a prior)."""
        return self.prior_terms(theta)[0].square().sum(-1)

    # --- labels ------------------------------------------------------------------------------
    def default_scaled_labels(self) -> torch.Tensor:
        """(L,) scaled start/fixed values: [X/Fe] = 0 and vmic etc. mid-grid, inside the grid."""
        physical = []
        for name, lo, hi in zip(self.names, *self._ranges()):
            value = 0.0 if (name.endswith("_fe") or name.endswith("_h")) else 0.5 * (lo + hi)
            physical.append(min(max(value, lo), hi))
        physical_t = torch.tensor(physical, dtype=self.network_dtype, device=self.device)
        return self.emulator.scale(physical_t).to(torch.float64)

    def _ranges(self) -> tuple[list[float], list[float]]:
        scaling = self.emulator.label_scaling
        return list(scaling.minimum), list(scaling.maximum)

    def full_labels(self, theta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Scaled labels (B, L): `base` with the fitted entries taken from theta."""
        labels = base.clone()
        labels[:, self.fit_index] = theta[:, : len(self.fit_labels)]
        return labels

    def velocity(self, theta: torch.Tensor) -> torch.Tensor:
        """Radial velocities (B,) [km/s]."""
        if not self.fit_rv:
            return torch.zeros(theta.shape[0], dtype=theta.dtype, device=theta.device)
        return theta[:, len(self.fit_labels)] * RV_SCALE

    def broadening(self, theta: torch.Tensor) -> torch.Tensor:
        """Extra Gaussian broadening sigma (B,) [km/s] (0 when not fitted)."""
        if not self.fit_broadening:
            return torch.zeros(theta.shape[0], dtype=theta.dtype, device=theta.device)
        return theta[:, -1].clamp_min(0.0).sqrt() * RV_SCALE

    # --- model -------------------------------------------------------------------------------
    def emulate(self, scaled: torch.Tensor) -> torch.Tensor:
        """Normalised rest-frame flux (B, P) float64 from scaled labels (B, L)."""
        with torch.no_grad():
            return self.emulator(scaled.to(self.network_dtype).contiguous()).to(torch.float64)

    def emulate_with_jacobian(self, scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flux (B, P) and d flux / d fitted scaled label (B, P, K).

        'forward': forward-mode AD, the network's written-out jvp with one tangent per fitted
        label (network_jvp: the primal pass runs once per spectrum), in chunks of
        `jacobian_rows` spectra x labels.
        'finite_difference': one-sided differences of step `fd_step` (scaled units): one forward
        pass per label; float32 rounding then limits the derivatives to ~1e-4 (absolute, per
        scaled unit), far below the noise of any spectrum.
        """
        b, k = scaled.shape[0], len(self.fit_labels)
        inputs = scaled.to(self.network_dtype).contiguous()
        directions = torch.zeros(k, b, inputs.shape[1], dtype=inputs.dtype, device=inputs.device)
        directions[torch.arange(k, device=inputs.device), :, self.fit_index] = 1.0
        chunk = max(1, self.jacobian_rows // max(b, 1))
        with torch.no_grad():
            if self.jacobian_method == "finite_difference":
                flux = self.emulator(inputs)
                shifted = (inputs[None] + self.fd_step * directions).reshape(k * b, -1)
                parts = [
                    self.emulator(shifted[i : i + chunk * b]) for i in range(0, k * b, chunk * b)
                ]
                jvps = (torch.cat(parts).reshape(k, b, -1) - flux[None]) / self.fd_step
            else:
                tangents = directions.transpose(0, 1)  # (B, K, L)
                parts = [
                    self.emulator.jvp(inputs, tangents[:, start : start + chunk])
                    for start in range(0, k, chunk)
                ]
                flux = parts[0][0]
                jvps = torch.cat([derivative for _, derivative in parts], dim=1).transpose(0, 1)
        return flux.to(torch.float64), jvps.to(torch.float64).permute(1, 2, 0)

    def normalised(
        self, theta: torch.Tensor, base: torch.Tensor, jacobian: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Shifted normalised model (B, P) and, if asked, its Jacobian in theta (B, P, N)."""
        scaled = self.full_labels(theta, base)
        rv = self.velocity(theta)
        if self.fit_broadening:
            return self._broadened(scaled, rv, theta[:, -1] * self.width_per_theta, jacobian)
        if not jacobian:
            return self.doppler(self.emulate(scaled), rv), None
        flux, d_flux = self.emulate_with_jacobian(scaled)
        if not self.fit_rv:
            return self.doppler(flux, rv), self.doppler(d_flux, rv)
        shifted, d_shifted_dv = self.doppler(flux, rv, derivative=True)
        columns = [self.doppler(d_flux, rv), (d_shifted_dv * RV_SCALE)[..., None]]
        return shifted, torch.cat(columns, dim=-1)

    def _broadened(self, scaled, rv, width_sq, jacobian: bool):
        """normalised() with the Gaussian broadening: columns labels, [v], broadening."""
        if not jacobian:
            return self.doppler.broaden(self.emulate(scaled), rv, width_sq), None
        flux, d_flux = self.emulate_with_jacobian(scaled)
        shifted, d_rv, d_width = self.doppler.broaden(flux, rv, width_sq, derivative=True)
        columns = [self.doppler.broaden(d_flux, rv, width_sq)]
        if self.fit_rv:
            columns.append((d_rv * RV_SCALE)[..., None])
        columns.append((d_width * self.width_per_theta)[..., None])
        return shifted, torch.cat(columns, dim=-1)

    def evaluate(
        self,
        theta: torch.Tensor,
        base: torch.Tensor,
        flux: torch.Tensor,
        ivar: torch.Tensor,
        jacobian: bool = False,
        ridge: float = 1e-10,
        prior: bool = True,
    ) -> Evaluation:
        """chi2 with the continuum solved exactly; Jacobian with the continuum projected out.

        `prior=False` leaves the label prior out (callers that add it once themselves, such as
        the joint fit of several exposures of one star).
        """
        normalised, d_normalised = self.normalised(theta, base, jacobian)
        weights = ivar * self.usable
        design = normalised[:, :, None] * self.basis[None]  # (B, P, M)
        gram = _normal_equations(design, weights, ridge)
        rhs = torch.einsum("bpm,bp->bm", design, weights * flux)
        coefficients = torch.linalg.solve(gram, rhs)
        continuum = coefficients @ self.basis.T
        model = normalised * continuum
        sqrt_w = weights.sqrt()
        residual = sqrt_w * (flux - model)
        chi2 = (residual**2).sum(-1)
        projected = None
        if jacobian:
            # variable projection (Kaufman): remove the continuum directions from dr/dtheta
            weighted = sqrt_w[..., None] * continuum[..., None] * d_normalised  # (B, P, N)
            weighted_design = sqrt_w[..., None] * design  # (B, P, M)
            overlap = weighted_design.transpose(1, 2) @ weighted  # (B, M, N)
            projected = weighted - weighted_design @ torch.linalg.solve(gram, overlap)
        if prior and self.has_prior:
            prior_residual, prior_jacobian = self.prior_terms(theta)
            chi2 = chi2 + prior_residual.square().sum(-1)
            residual = torch.cat([residual, prior_residual], dim=-1)
            if projected is not None:
                projected = torch.cat([projected, prior_jacobian], dim=1)
        return Evaluation(chi2, residual, projected, model, continuum)

    def model_ivar(
        self, theta: torch.Tensor, base: torch.Tensor, flux: torch.Tensor, ivar: torch.Tensor
    ) -> torch.Tensor:
        """ivar (B, P) with the emulator's own error added to the noise: 1 / (1/ivar + (c e)^2).

        e is `flux_error` moved to the spectrum's velocity, c its continuum at theta (solved
        as in `evaluate`), so the term is in the data's units. Evaluated once (at the start of
        the fit) and then held fixed, so chi2 stays a least-squares problem. Pixels with ivar = 0
        stay 0; without `flux_error` ivar is returned unchanged.
        """
        if self.flux_error is None:
            return ivar
        start = self.evaluate(theta, base, flux, ivar, prior=False)
        variance = self.doppler(self.flux_error.square().expand_as(flux), self.velocity(theta))
        extra = start.continuum.square() * variance.clamp_min(0.0)
        return torch.where(ivar > 0, ivar / (1.0 + ivar * extra), torch.zeros_like(ivar))

    def optimise(
        self,
        theta: torch.Tensor,
        base: torch.Tensor,
        flux: torch.Tensor,
        ivar: torch.Tensor,
        max_iter: int = 50,
    ) -> LMResult:
        """Batched Levenberg-Marquardt of every spectrum (B, P) from theta (B, N) in the bounds."""

        def evaluate(th: torch.Tensor, rows: torch.Tensor, jacobian: bool):
            e = self.evaluate(th, base[rows], flux[rows], ivar[rows], jacobian=jacobian)
            return e.chi2, e.residual, e.jacobian

        return levenberg_marquardt(evaluate, theta, self.lower, self.upper, max_iter)

    # --- initialisation ----------------------------------------------------------------------
    def template_grid(self, size: int = 6) -> torch.Tensor:
        """Scaled labels (T, L) of a size^3 grid in Teff, log g, [Fe/H] (others at defaults)."""
        axes = [n for n in ("teff", "logg", "fe_h") if n in self.fit_labels]
        if not axes:
            axes = list(self.fit_labels[:3])
        values = torch.linspace(-0.4, 0.4, size, dtype=torch.float64, device=self.device)
        mesh = torch.meshgrid(*([values] * len(axes)), indexing="ij")
        grid = self.default_scaled_labels().repeat(mesh[0].numel(), 1)
        for name, axis in zip(axes, mesh):
            grid[:, self.names.index(name)] = axis.reshape(-1)
        return grid

    def initial_guess(
        self,
        flux: torch.Tensor,
        ivar: torch.Tensor,
        grid_size: int = 6,
        rv_step: float = 10.0,
        chunk: int = 512,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Starting theta (B, N) and base labels (B, L) without user guesses.

        1. RV: chi2 of 3 reference templates (cool, mid, hot) shifted over a velocity grid of
           step `rv_step` [km/s] (continuum solved for each); parabolic refinement of the best.
        2. Labels: data moved to the rest frame at that RV, chi2 against a grid_size^3 grid in
           Teff, log g, [Fe/H] (other labels at their defaults); the best grid point per spectrum.
        """
        b = flux.shape[0]
        weights = ivar * self.usable
        base = self.default_scaled_labels().repeat(b, 1)
        grid = self.template_grid(grid_size)
        templates = self.emulate(grid)  # (T, P)
        rv = torch.zeros(b, dtype=torch.float64, device=self.device)
        if self.fit_rv:
            rv = self._scan_velocity(flux, weights, grid, templates, rv_step, chunk)
        rest_flux = self.doppler(flux, -rv / (1.0 + rv / 299_792.458))
        rest_weights = self.doppler(weights, -rv / (1.0 + rv / 299_792.458))
        good = self.doppler((weights > 0).to(torch.float64), -rv) > 0.999
        rest_weights = torch.where(good, rest_weights.clamp_min(0.0), 0.0) * self.usable
        chi2 = torch.cat([
            template_chi2(rest_flux, rest_weights, self.basis, templates[i : i + chunk])
            for i in range(0, templates.shape[0], chunk)
        ], dim=1)  # fmt: skip
        best = grid[chi2.argmin(dim=1)]  # (B, L)
        theta = [best[:, self.fit_index]]
        if self.fit_rv:
            theta.append((rv / RV_SCALE)[:, None])
        if self.fit_broadening:
            theta.append(torch.zeros_like(rv)[:, None])
        return torch.cat(theta, dim=1), base

    def _scan_velocity(self, flux, weights, grid, templates, rv_step, chunk) -> torch.Tensor:
        """Best velocity (B,) [km/s] over a grid, refined by a parabola through 3 chi2 values."""
        low, high = self.rv_bounds
        velocities = torch.arange(low, high + 0.5 * rv_step, rv_step, dtype=torch.float64,
                                  device=self.device)  # fmt: skip
        velocities = velocities[(velocities >= low) & (velocities <= high)]
        teff = self.names.index("teff") if "teff" in self.names else None
        references = []
        for value in (-0.3, 0.0, 0.3):
            labels = self.default_scaled_labels()
            if teff is not None:
                labels[teff] = value
            references.append(labels)
        reference = self.emulate(torch.stack(references))  # (R, P)
        n_ref, n_v = reference.shape[0], velocities.numel()
        shifted = self.doppler(
            reference.repeat_interleave(n_v, 0), velocities.repeat(n_ref)
        )  # (R * V, P), reference-major
        chi2 = torch.cat([
            template_chi2(flux, weights, self.basis, shifted[i : i + chunk])
            for i in range(0, shifted.shape[0], chunk)
        ], dim=1).reshape(-1, n_ref, n_v)  # fmt: skip
        best_ref = chi2.min(dim=2).values.argmin(dim=1)
        curve = chi2[torch.arange(flux.shape[0]), best_ref]  # (B, V)
        k = curve.argmin(dim=1).clamp(1, max(n_v - 2, 1))
        rv = velocities[k]
        if n_v >= 3:
            rows = torch.arange(flux.shape[0])
            left, mid, right = curve[rows, k - 1], curve[rows, k], curve[rows, k + 1]
            denominator = left - 2 * mid + right
            offset = torch.where(denominator > 0, 0.5 * (left - right) / denominator, 0.0)
            rv = rv + offset.clamp(-1.0, 1.0) * rv_step
        return rv.clamp(low, high)


def fisher_covariance(jacobian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of J^T J (B, N, N) for projected Jacobians (B, P, N), and a singular flag (B,)."""
    fisher = jacobian.transpose(1, 2) @ jacobian
    scale = fisher.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300).sqrt()
    normalised = fisher / (scale[:, :, None] * scale[:, None, :])
    covariance = torch.linalg.pinv(normalised, hermitian=True) / (
        scale[:, :, None] * scale[:, None, :]
    )
    condition = torch.linalg.cond(normalised)
    singular = ~torch.isfinite(condition) | (condition > 1e12) | (fisher.diagonal(dim1=-2, dim2=-1)
                                                                  <= 0).any(-1)  # fmt: skip
    return covariance, singular


def physical_errors(
    covariance: torch.Tensor, model: SpectrumModel, theta: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-sigma errors of the fitted labels (B, K) [label units], v (B,) and broadening (B,) [km/s].

    The broadening error is propagated from its squared parametrisation (NaN at zero width).
    """
    sigma = covariance.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
    span = torch.as_tensor(
        model.emulator.label_scaling.span(), dtype=torch.float64, device=sigma.device
    )[model.fit_index]
    k = len(model.fit_labels)
    nan = torch.full_like(sigma[:, 0], np.nan)
    labels = sigma[:, :k] * span
    rv = sigma[:, k] * RV_SCALE if model.fit_rv else nan
    broadening = nan
    if model.fit_broadening and theta is not None:
        root = theta[:, -1].clamp_min(0.0).sqrt()
        broadening = torch.where(root > 0, sigma[:, -1] * RV_SCALE / (2 * root), nan)
    return labels.cpu().numpy(), rv.cpu().numpy(), broadening.cpu().numpy()
