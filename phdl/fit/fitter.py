"""LabelFitter: the inference LightningModule. `predict_step` fits a whole batch of spectra at once.

Per batch, on the module's device:
1. initial guess without user input: RV from a coarse velocity scan of 3 reference templates, then
   the best point of a Teff-log g-[Fe/H] template grid (phdl.fit.model.SpectrumModel);
2. optionally a global CMA-ES stage (phdl.fit.cmaes);
3. batched Levenberg-Marquardt over all labels + RV (phdl.fit.lm), the continuum solved exactly;
4. errors from the inverse Fisher matrix J^T W J at the optimum (continuum projected out, so
   marginalised; RV and all labels jointly), flags, S/N, and optionally the best-fit spectra;
5. optionally emcee posterior chains for chosen ids (phdl.fit.mcmc).

`Trainer.predict` runs under inference mode by default; configs set `trainer.inference_mode:
false` (DESIGN section 7). predict_step also leaves inference mode itself, so the fit works either
way: it only needs forward-mode AD, which no_grad (used under DDP) does not switch off.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from lightning.pytorch import LightningModule

from phdl.fit.model import RV_SCALE, SpectrumModel, fisher_covariance, physical_errors
from phdl.labels import is_abundance, label_unit
from phdl.malloc import keep_freed_memory
from phdl.models.base import SpectrumEmulator

#: Bits of the catalogue's `flag` column (the star) and of every `<label>_flag` column (that
#: label). The star's AT_BOUNDARY and PRIOR_DOMINATED concern its stellar parameters (Teff, log g,
#: vmic, [Fe/H], RV, broadening): a weak [X/Fe] on its bound or held by the label prior is
#: normal at low resolution and is marked in that abundance's own column only, so that
#: `flag == 0` selects well-fitted stars and `mg_fe_flag == 0` measured [Mg/Fe] among them.
FLAG_BITS: dict[str, int] = {
    "BAD_INPUT": 1,  # not fitted: see flag_reason
    "NOT_CONVERGED": 2,  # Levenberg-Marquardt hit max_iter
    "AT_BOUNDARY": 4,  # the label (star: a stellar parameter) ended on its bound
    "SINGULAR_FISHER": 8,  # some label is unconstrained: the errors are unreliable
    "PRIOR_DOMINATED": 16,  # the label (star: a stellar parameter) owes more to its prior
}

#: Distance to a bound [scaled units] below which a parameter counts as on it.
BOUND_TOLERANCE = 1e-3


class LabelFitter(LightningModule):
    """Fits labels, RV and continuum of observed spectra with a frozen emulator.

    Args:
        checkpoint: emulator checkpoint (`phdl fit` output) loaded by phdl.emulator.load_emulator.
        fit_labels: labels to fit (default: all the emulator's); the others are held at
            [X/Fe] = 0 or the middle of the grid.
        fit_rv: fit the radial velocity [km/s]; else v = 0 (spectra in the rest frame).
        rv_bounds: allowed radial velocities [km/s].
        rv_step: step of the initial velocity scan [km/s].
        continuum_order: Chebyshev order of the continuum polynomial.
        continuum_segments: break wavelengths [A] between separately fitted continuum pieces
            (e.g. [5800] for LAMOST's blue and red arms).
        label_margin: allowed extrapolation beyond the training grid [scaled units, grid = 1].
        label_prior: Gaussian label prior {label or shell pattern: [mean, sigma]} in physical
            units, e.g. {"*_fe": [0.0, 0.25]}: maximum a posteriori labels, posterior errors, and
            the PRIOR_DOMINATED bit of `<label>_flag` set where the label's posterior error
            exceeds sigma / sqrt(2) (the spectrum holds less information on it than the prior).
            None: maximum likelihood.
        emulator_error: add the emulator's own per-pixel error (stored in checkpoints trained
            by this version: rms residual of the validation spectra) to each spectrum's noise,
            so pixels the emulator gets wrong weigh less and errors include it. No effect for
            checkpoints without it.
        fit_broadening: also fit a Gaussian broadening of the model (resolution mismatch,
            rotation), sigma in km/s up to `broadening_max` (catalogue column `broadening`).
        init_grid_size: points per axis of the Teff-log g-[Fe/H] start grid (size^3 templates).
        max_iter: Levenberg-Marquardt iterations at most.
        global_search: 'none' or 'cmaes' (CMA-ES before Levenberg-Marquardt).
        cmaes_popsize, cmaes_iterations, cmaes_sigma: CMA-ES settings (sigma in scaled units).
        return_model: add the best-fit model flux and continuum (on the emulator grid) per row.
        mcmc_ids: spectrum ids to sample with emcee after the fit.
        mcmc_walkers, mcmc_steps: emcee settings.
        mcmc_dir: folder for the chains (`<id>.npz`), required with mcmc_ids.
        jacobian_rows: spectra x labels per forward-mode pass (caps memory).
        jacobian_method: 'forward' (forward-mode AD: exact; default) or 'finite_difference'
            (one forward pass per label: derivatives to ~1e-4; ~1.4x faster end to end on
            CPU with the shipped emulator).
        seed: seed of the stochastic stages (CMA-ES, emcee).
        keep_freed_memory: in `setup` (the Trainer's processes), tell glibc to keep freed
            memory for reuse (phdl.malloc): the fit's large per-iteration temporaries are then
            not page-faulted anew, 2.2-2.7x faster on 2 CPU cores. Process-wide; False leaves
            malloc as it is.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        fit_labels: list[str] | None = None,
        fit_rv: bool = True,
        rv_bounds: tuple[float, float] = (-500.0, 500.0),
        rv_step: float = 10.0,
        continuum_order: int = 3,
        continuum_segments: list[float] | None = None,
        label_margin: float = 0.0,
        label_prior: dict[str, list[float]] | None = None,
        emulator_error: bool = True,
        fit_broadening: bool = False,
        broadening_max: float = 300.0,
        init_grid_size: int = 6,
        max_iter: int = 50,
        global_search: str = "none",
        cmaes_popsize: int = 16,
        cmaes_iterations: int = 30,
        cmaes_sigma: float = 0.1,
        return_model: bool = False,
        mcmc_ids: list[str] | None = None,
        mcmc_walkers: int = 64,
        mcmc_steps: int = 500,
        mcmc_dir: str | None = None,
        jacobian_rows: int = 4096,
        jacobian_method: str = "forward",
        seed: int = 0,
        keep_freed_memory: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if global_search not in ("none", "cmaes"):
            raise ValueError(f"global_search must be 'none' or 'cmaes', got '{global_search}'")
        if mcmc_ids and not mcmc_dir:
            raise ValueError("mcmc_ids given without mcmc_dir (where the chains are written)")
        self.emulator: SpectrumEmulator | None = None
        if checkpoint is not None:
            from phdl.emulator import load_emulator

            if not os.path.exists(checkpoint):
                raise FileNotFoundError(f"LabelFitter: emulator checkpoint {checkpoint} not found")
            self.emulator = load_emulator(checkpoint, map_location="cpu")
        self._model: SpectrumModel | None = None

    @classmethod
    def from_emulator(cls, emulator: SpectrumEmulator, **kwargs) -> LabelFitter:
        """A fitter around an emulator object (tests, notebooks); kwargs as for __init__."""
        fitter = cls(checkpoint=None, **kwargs)
        fitter.emulator = emulator.eval().requires_grad_(False)
        return fitter

    # --- set-up ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Give the datamodule the emulator's wavelength grid to resample onto (and keep
        freed memory in this process, `keep_freed_memory`)."""
        self._require_emulator()
        if self.hparams.keep_freed_memory:
            keep_freed_memory()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "set_model_grid"):
            if getattr(datamodule, "wavelength", None) is None:
                datamodule.set_model_grid(self.emulator.wavelength, self.emulator.medium)

    def _require_emulator(self) -> SpectrumEmulator:
        if self.emulator is None:
            raise RuntimeError(
                "LabelFitter has no emulator: pass `checkpoint` (or use from_emulator)"
            )
        return self.emulator

    @property
    def spectrum_model(self) -> SpectrumModel:
        """The data model on the emulator's current device (rebuilt after a device move)."""
        emulator = self._require_emulator()
        if self._model is None or self._model.device != emulator._label_min.device:
            h = self.hparams
            self._model = SpectrumModel(
                emulator, h.fit_labels, h.fit_rv, tuple(h.rv_bounds), h.continuum_order,
                h.continuum_segments, h.label_margin, h.jacobian_rows, h.jacobian_method,
                fit_broadening=h.fit_broadening, broadening_max=h.broadening_max,
                label_prior=h.label_prior,
                flux_error=emulator.flux_error if h.emulator_error else None,
            )  # fmt: skip
        return self._model

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.spectrum_model.fit_labels

    def column_units(self) -> dict[str, str]:
        """Unit of every catalogue column that has one (FITS TUNITn)."""
        units = {"rv": "km / s", "rv_err": "km / s"}
        if self.hparams.fit_broadening:
            units["broadening"] = units["broadening_err"] = "km / s"
        for name in self.label_names:
            units[name] = units[f"{name}_err"] = label_unit(name)
        return units

    def header(self) -> dict[str, object]:
        """Catalogue header cards: what was fitted how, and the flag bits."""
        h = self.hparams
        emulator = self._require_emulator()
        cards: dict[str, object] = {
            "EMULATOR": os.path.basename(str(h.checkpoint)) if h.checkpoint else "in-memory",
            "WAVEMIN": float(emulator.wavelength[0]),
            "WAVEMAX": float(emulator.wavelength[-1]),
            "MEDIUM": emulator.medium,
            "CONTORD": int(h.continuum_order),
            "FITRV": bool(h.fit_rv),
            "GLOBAL": h.global_search,
            "NLABELS": len(self.label_names),
            "PRIOR": self.spectrum_model.has_prior,
            "EMUERR": self.spectrum_model.flux_error is not None,
        }
        for name, bit in FLAG_BITS.items():
            cards[f"FLAG{bit}"] = name
        return cards

    def parameter_names(self) -> list[str]:
        """Names of the fitted parameters in order: the labels, then rv and broadening_sq."""
        h = self.hparams
        names = [*self.spectrum_model.fit_labels] + (["rv"] if h.fit_rv else [])
        return names + (["broadening_sq"] if h.fit_broadening else [])

    # --- fitting -----------------------------------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int = 0, dataloader_idx: int = 0) -> dict:
        """Fit every spectrum of the batch; returns catalogue columns (numpy) for the writer."""
        with torch.inference_mode(False):
            flux = batch["flux"].clone().to(self.device, torch.float64)
            ivar = batch["ivar"].clone().to(self.device, torch.float64)
            return self.fit(flux, ivar, batch["id"], batch["index"], batch["reason"], batch["snr"])

    def fit(
        self,
        flux: torch.Tensor,
        ivar: torch.Tensor,
        ids: Sequence[str],
        index: torch.Tensor | Sequence[int] | None = None,
        reason: Sequence[str] | None = None,
        snr: torch.Tensor | Sequence[float] | None = None,
    ) -> dict[str, np.ndarray]:
        """Fit spectra (B, P) already on the emulator grid; catalogue columns per spectrum."""
        model = self.spectrum_model
        b = flux.shape[0]
        ids = [str(i) for i in ids]
        reason = list(reason) if reason is not None else [""] * b
        index = np.arange(b) if index is None else np.asarray(torch.as_tensor(index).cpu())
        flux = torch.nan_to_num(flux.to(model.device, torch.float64))
        ivar = torch.nan_to_num(ivar.to(model.device, torch.float64)).clamp_min(0.0)
        if snr is None:
            snr = self._snr(flux, ivar)
        snr = np.asarray(torch.as_tensor(snr, dtype=torch.float64).cpu())
        n_params = model.n_params
        n_continuum = model.basis.shape[1]
        n_good = ((ivar > 0) & model.usable).sum(-1)
        for i in range(b):
            needed = n_params + n_continuum + 1
            if not reason[i] and int(n_good[i]) < needed:
                reason[i] = f"only {int(n_good[i])} usable pixels for {needed - 1} parameters"
        valid = torch.tensor([not r for r in reason], device=model.device)

        columns = self._empty_columns(b, ids, index, reason, snr, n_good)
        rows = valid.nonzero().squeeze(1)
        if rows.numel() > 0:
            self._fit_rows(flux[rows], ivar[rows], rows.cpu().numpy(), columns, ids, index)
        columns["flag"] = np.where(valid.cpu().numpy(), columns["flag"], FLAG_BITS["BAD_INPUT"])
        return columns

    def _fit_rows(self, flux, ivar, rows: np.ndarray, columns: dict, ids: list[str], index) -> None:
        """Initial guess, optional CMA-ES, Levenberg-Marquardt and Fisher errors for valid rows.

        `index` (the spectra's positions in their dataset) keys each spectrum's CMA-ES draws.
        """
        model = self.spectrum_model
        h = self.hparams
        theta, base = model.initial_guess(flux, ivar, h.init_grid_size, h.rv_step)
        ivar = model.model_ivar(theta, base, flux, ivar)
        if h.global_search == "cmaes":
            from phdl.fit.cmaes import cmaes_search

            keys = np.abs(np.asarray(index, dtype=np.int64)[rows])

            def chi2(th: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
                return model.evaluate(th, base[sel], flux[sel], ivar[sel]).chi2

            theta, _ = cmaes_search(
                chi2, theta, model.lower, model.upper, h.cmaes_sigma, h.cmaes_popsize,
                h.cmaes_iterations, h.seed, keys=keys,
            )  # fmt: skip
        result = model.optimise(theta, base, flux, ivar, h.max_iter)
        covariance, singular = fisher_covariance(result.jacobian)
        label_errors, rv_errors, broadening_errors = physical_errors(
            covariance, model, result.theta
        )
        scaled = model.full_labels(result.theta, base)
        physical = model.emulator.unscale(scaled.to(model.network_dtype)).to(torch.float64)
        physical = physical[:, model.fit_index].cpu().numpy()
        n_labels = len(model.fit_labels)
        sigma = covariance.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()[:, :n_labels]
        weight = model.prior_weight[:n_labels]
        prior_dominated = ((weight > 0) & (sigma * weight > 2**-0.5)).cpu().numpy()
        near_low = (result.theta - model.lower).abs() < BOUND_TOLERANCE
        near_high = (model.upper - result.theta).abs() < BOUND_TOLERANCE
        at_bound = (near_low | near_high).cpu().numpy()

        for k, name in enumerate(model.fit_labels):
            columns[name][rows] = physical[:, k]
            columns[f"{name}_err"][rows] = label_errors[:, k]
        columns["rv"][rows] = model.velocity(result.theta).cpu().numpy()
        columns["rv_err"][rows] = rv_errors
        if model.fit_broadening:
            columns["broadening"][rows] = model.broadening(result.theta).cpu().numpy()
            columns["broadening_err"][rows] = broadening_errors
        # one flag per fitted parameter, in theta order (parameter_names)
        names = self.parameter_names()
        parameter_flag = np.where(at_bound, FLAG_BITS["AT_BOUNDARY"], 0).astype(np.int16)
        parameter_flag[:, :n_labels] |= np.where(prior_dominated, FLAG_BITS["PRIOR_DOMINATED"], 0)
        for k, name in enumerate(names):
            column = "broadening" if name == "broadening_sq" else name  # fitted as its square
            columns[f"{column}_flag"][rows] = parameter_flag[:, k]
        # the catalogue's chi2 is the spectrum's alone; the optimiser's included the prior
        chi2 = (result.chi2 - model.prior_chi2(result.theta)).cpu().numpy()
        dof = np.maximum(columns["n_pixels"][rows] - model.n_params - model.basis.shape[1], 1)
        columns["chi2"][rows] = chi2
        columns["chi2_red"][rows] = chi2 / dof
        columns["n_iter"][rows] = result.n_iter.cpu().numpy()
        columns["converged"][rows] = result.converged.cpu().numpy()
        # the star's flag: those of its stellar parameters (not of its [X/Fe]) and of the fit
        stellar = np.array([not is_abundance(name) for name in names], dtype=bool)
        flag = np.bitwise_or.reduce(parameter_flag[:, stellar], axis=1).astype(np.int32)
        flag |= np.where(result.converged.cpu().numpy(), 0, FLAG_BITS["NOT_CONVERGED"])
        flag |= np.where(singular.cpu().numpy(), FLAG_BITS["SINGULAR_FISHER"], 0)
        columns["flag"][rows] = flag
        if h.return_model or h.mcmc_ids:
            final = model.evaluate(result.theta, base, flux, ivar)
            if h.return_model:
                columns["model_flux"][rows] = final.model.cpu().numpy().astype(np.float32)
                columns["continuum"][rows] = final.continuum.cpu().numpy().astype(np.float32)
        if h.mcmc_ids:
            self._sample(flux, ivar, result.theta, base, covariance, rows, ids, n_labels)

    def _sample(self, flux, ivar, theta, base, covariance, rows, ids, n_labels) -> None:
        """emcee chains for the rows whose id is in mcmc_ids, written as `<mcmc_dir>/<id>.npz`."""
        from phdl.fit.mcmc import sample_posterior

        h = self.hparams
        wanted = set(h.mcmc_ids)
        os.makedirs(h.mcmc_dir, exist_ok=True)
        for k, row in enumerate(rows):
            if ids[row] not in wanted:
                continue
            scale = covariance[k].diagonal().clamp_min(0).sqrt().cpu().numpy()
            chain = sample_posterior(
                self.spectrum_model, flux[k], ivar[k], theta[k], base[k], h.mcmc_walkers,
                h.mcmc_steps, scale, h.seed,
            )  # fmt: skip
            names = self.parameter_names()
            safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in ids[row])
            path = os.path.join(h.mcmc_dir, f"{safe}.npz")
            temporary = path + f".tmp{os.getpid()}.npz"
            np.savez(temporary, chain=chain, names=np.array(names))
            os.replace(temporary, path)

    def _empty_columns(self, b, ids, index, reason, snr, n_good) -> dict[str, np.ndarray]:
        """Catalogue columns for b rows, NaN/False until fitted."""
        model = self.spectrum_model
        columns: dict[str, np.ndarray] = {
            "id": np.array(ids, dtype=str),
            "index": np.asarray(index, dtype=np.int64),
        }
        for name in model.fit_labels:
            columns[name] = np.full(b, np.nan)
            columns[f"{name}_err"] = np.full(b, np.nan)
        for name in model.fit_labels:
            columns[f"{name}_flag"] = np.zeros(b, dtype=np.int16)
        columns.update(
            rv=np.full(b, np.nan),
            rv_err=np.full(b, np.nan),
            rv_flag=np.zeros(b, dtype=np.int16),
            **(
                {
                    "broadening": np.full(b, np.nan),
                    "broadening_err": np.full(b, np.nan),
                    "broadening_flag": np.zeros(b, dtype=np.int16),
                }
                if self.hparams.fit_broadening
                else {}
            ),
            chi2=np.full(b, np.nan),
            chi2_red=np.full(b, np.nan),
            n_pixels=n_good.cpu().numpy().astype(np.int32),
            snr=np.asarray(snr, dtype=np.float64),
            converged=np.zeros(b, dtype=bool),
            n_iter=np.zeros(b, dtype=np.int16),
            flag=np.zeros(b, dtype=np.int32),
            flag_reason=np.array([r or "" for r in reason], dtype=str),
        )
        if self.hparams.return_model:
            p = model.basis.shape[0]
            columns["model_flux"] = np.full((b, p), np.nan, dtype=np.float32)
            columns["continuum"] = np.full((b, p), np.nan, dtype=np.float32)
        return columns

    @staticmethod
    def _snr(flux: torch.Tensor, ivar: torch.Tensor) -> torch.Tensor:
        """Median flux x sqrt(ivar) over good pixels (B,)."""
        values = torch.where(ivar > 0, flux * ivar.sqrt(), torch.nan)
        return torch.nanmedian(values, dim=1).values

    def forward(self, scaled_labels: torch.Tensor) -> torch.Tensor:
        """Normalised flux (B, P) of the emulator at scaled labels (B, L)."""
        return self._require_emulator()(scaled_labels)


__all__ = ["FLAG_BITS", "LabelFitter", "RV_SCALE"]
