"""EmulatorModule: trains a label -> spectrum network on fluxes and gradient spectra.

Loss = flux term + lambda x gradient term (PhDLspec's physical prior). The gradient term compares
the network's d flux / d label, converted to physical units through the label scaling (chain
rule), with the grid's gradient spectra. It never builds the full (L, P) Jacobian: each spectrum
gets a few label directions per step, differentiated in forward mode (the networks' own written-out
`jvp`, phdl.models.base.network_jvp: ~5x cheaper than `torch.func.jvp` on CPU): one-hot (one
label each) or 'dense' (a random +-1 combination of all labels). Either way each label's
error is divided by that label's typical gradient size so that weak-lined elements are not
drowned by Teff (DESIGN section 6: unnormalised random directions gave them no signal).

The network is built here from plain arguments and everything needed to rebuild it (label
names and ranges, wavelengths, medium, resolution, network sizes) is in `save_hyperparameters()`;
`load_emulator` turns a checkpoint back into a frozen `SpectrumEmulator` without unpickling code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError

from phdl.labels import LabelScaling
from phdl.models import SpectrumEmulator, build_network
from phdl.models.base import network_jvp

FLUX_LOSSES = ("mse", "l1")
SCHEDULERS = ("cosine", "onecycle", "constant")
GRADIENT_SAMPLING = ("uniform", "error", "dense")
GRADIENT_BALANCE = ("fixed", "relative")
GRADIENT_NORMALISE = ("typical", "spectrum", "none")
#: Rows (spectrum x label) per forward-mode pass when validating gradients: bounds memory.
VAL_ROWS = 128


class CombinedLoss(nn.Module):
    """Weighted sum of named loss parts; weights can change during training (schedules)."""

    def __init__(self, weights: dict[str, float]) -> None:
        super().__init__()
        self.weights = dict(weights)

    def forward(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of weight x part over the parts given (a part not computed this step is absent)."""
        unknown = set(parts) - set(self.weights)
        if unknown:
            raise KeyError(
                f"loss parts {sorted(unknown)} have no weight; known: {sorted(self.weights)}"
            )
        return sum(self.weights[name] * value for name, value in parts.items())


def _pointwise(error: torch.Tensor, kind: str) -> torch.Tensor:
    return error.abs() if kind == "l1" else error.square()


class EmulatorModule(LightningModule):
    """Training of a spectrum emulator with the gradient-spectra prior.

    Args:
        label_scaling: `LabelScaling.to_dict()` of the training labels (linked from the data).
        wavelength: wavelength grid [Angstrom] (linked from the data).
        medium: 'air' or 'vacuum' (linked from the data).
        resolution: R = lambda / delta lambda of the grid (linked from the data).
        gradient_names: labels of the batches' gradient spectra, K axis order (linked).
        gradient_scale: typical size of each gradient spectrum [1/label unit] (linked).
        model: network, 'transformer' or 'mlp' (The Payne).
        patch_size, d_model, n_layers, n_heads, d_ff, label_hidden, dropout: transformer sizes.
        mlp_hidden, mlp_layers: Payne MLP width and number of hidden layers.
        flux_loss: 'mse' or 'l1' (The Payne's), for both terms.
        gradient_weight: lambda; 0 trains on fluxes only and never differentiates the network.
        gradient_directions: one-hot label directions per spectrum per step.
        gradient_spectra: how many spectra of each batch get derivative directions (None: all).
            The flux term always uses the whole batch; a few spectra per step carry the
            gradient term at a fraction of the cost of differentiating every one.
        gradient_sampling: 'uniform' over labels with gradients, or 'error' (half uniform, half in
            proportion to each label's running gradient error, so badly learnt labels get more):
            one-hot directions, one label each. 'dense': each direction is a random +-1
            combination of every label with gradient spectra, each label's component divided by
            its gradient size (gradient_normalise), so one forward-mode pass checks
            all labels at once and its expected squared error is the sum of the labels'
            normalised errors (weak-lined elements are not drowned by Teff).
        gradient_normalise: what each label's gradient error is divided by: 'typical' (its
            typical gradient size over the grid), 'spectrum' (the rms of that spectrum's own
            gradient spectrum, floored at LabelScaling.gradient_floor: the loss then measures the
            relative error per spectrum that validation and `phdl report` measure, so spectra
            where a label's lines are weak count as much as those where they are strong) or
            'none'. True / False are 'typical' / 'none' (checkpoints from before 'spectrum').
        gradient_start_step: optimiser steps on fluxes only before the gradient term starts.
        gradient_warmup_steps: steps over which lambda then ramps linearly from 0.
        gradient_every: apply the gradient term on every n-th step only (cheaper steps between).
        gradient_balance: 'fixed' (loss = flux + lambda x gradient) or 'relative' (the gradient
            term is rescaled each step to lambda x the flux term's current size, so it can
            neither starve the flux fit nor fade as the fluxes improve).
        lr, weight_decay: AdamW settings.
        scheduler: 'cosine' (linear warm-up, cosine decay), 'onecycle' or 'constant'.
        warmup_steps: linear learning-rate warm-up steps for 'cosine'.
        val_gradient_batches: validation batches per epoch on which per-label gradient errors
            are measured (one jvp per label; -1 for all).
    """

    def __init__(
        self,
        label_scaling: dict | None = None,
        wavelength: list[float] | None = None,
        medium: str = "vacuum",
        resolution: float = float("nan"),
        gradient_names: list[str] | None = None,
        gradient_scale: list[float] | None = None,
        model: str = "transformer",
        patch_size: int = 32,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        d_ff: int = 512,
        label_hidden: int = 256,
        dropout: float = 0.0,
        mlp_hidden: int = 300,
        mlp_layers: int = 2,
        flux_loss: str = "mse",
        gradient_weight: float = 0.0,
        gradient_directions: int = 2,
        gradient_spectra: int | None = None,
        gradient_sampling: str = "uniform",
        gradient_normalise: str | bool = "spectrum",
        gradient_start_step: int = 0,
        gradient_warmup_steps: int = 0,
        gradient_every: int = 1,
        gradient_balance: str = "fixed",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        scheduler: str = "cosine",
        warmup_steps: int = 100,
        val_gradient_batches: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if label_scaling is None or wavelength is None:
            raise ValueError(
                "EmulatorModule needs the grid's label_scaling and wavelength: train with "
                "GridDataModule through `phdl fit` (they are linked automatically) or build it "
                "with EmulatorModule.from_datamodule(datamodule, ...)"
            )
        if isinstance(gradient_normalise, bool):
            gradient_normalise = "typical" if gradient_normalise else "none"
            self.hparams.gradient_normalise = gradient_normalise
        for name, value, allowed in (
            ("gradient_normalise", gradient_normalise, GRADIENT_NORMALISE),
            ("flux_loss", flux_loss, FLUX_LOSSES),
            ("scheduler", scheduler, SCHEDULERS),
            ("gradient_sampling", gradient_sampling, GRADIENT_SAMPLING),
            ("gradient_balance", gradient_balance, GRADIENT_BALANCE),
        ):
            if value not in allowed:
                raise ValueError(f"EmulatorModule: {name}={value!r}, expected one of {allowed}")
        if gradient_spectra is not None and gradient_spectra < 1:
            raise ValueError(
                f"EmulatorModule: gradient_spectra must be >= 1 or None, got {gradient_spectra}"
            )
        if gradient_weight < 0 or gradient_directions < 1 or gradient_every < 1:
            raise ValueError(
                "EmulatorModule: need gradient_weight >= 0, gradient_directions >= 1 and "
                f"gradient_every >= 1, got {gradient_weight}, {gradient_directions}, {gradient_every}"
            )
        self.label_scaling = LabelScaling.from_dict(label_scaling)
        self.gradient_names = tuple(gradient_names or ())
        self.network = network_from_hparams(self.hparams)

        n_gradients = len(self.gradient_names)
        scale = gradient_scale if gradient_scale is not None else [1.0] * n_gradients
        if len(scale) != n_gradients:
            raise ValueError(
                f"EmulatorModule: {len(scale)} gradient_scale values for {n_gradients} gradients "
                f"{list(self.gradient_names)}"
            )
        # Which label (column of the labels) each gradient spectrum differentiates.
        label_of_gradient = [self.label_scaling.index(name) for name in self.gradient_names]
        self.register_buffer(
            "gradient_label_index",
            torch.tensor(label_of_gradient, dtype=torch.long),
            persistent=False,
        )
        self.register_buffer(
            "gradient_size", torch.tensor(scale, dtype=torch.float32), persistent=False
        )
        self.register_buffer(
            "gradient_floor",
            torch.tensor(
                self.label_scaling.gradient_floor(self.gradient_names), dtype=torch.float32
            ),
            persistent=False,
        )
        self.register_buffer(
            "label_span",
            torch.tensor(self.label_scaling.span(), dtype=torch.float32),
            persistent=False,
        )
        # Running normalised gradient error per label, for gradient_sampling='error'.
        self.register_buffer("gradient_error", torch.ones(n_gradients))
        # The emulator's own rms error per pixel on the validation spectra of the latest
        # validation (-1: not measured yet); saved with the weights, so the fitter can add it to
        # each spectrum's noise (phdl.fit.model.SpectrumModel.model_ivar).
        n_pixels = len(wavelength)
        self.register_buffer("flux_error", torch.full((n_pixels,), -1.0))
        self.register_buffer("_val_square_sum", torch.zeros(n_pixels), persistent=False)
        self.register_buffer("_val_count", torch.zeros(()), persistent=False)

        self.loss = CombinedLoss({"flux": 1.0, "gradient": gradient_weight})
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        "flux_mae": MeanAbsoluteError(),
                        "flux_rmse": MeanSquaredError(squared=False),
                        "gradient_rel_error": nn.ModuleDict(
                            {name: MeanMetric() for name in self.gradient_names}
                        ),
                    }
                )
                for stage in ("val", "test")
            }
        )

    @classmethod
    def from_datamodule(cls, datamodule, **kwargs) -> EmulatorModule:
        """An EmulatorModule for a GridDataModule's grid; `kwargs` are the other init arguments."""
        return cls(**emulator_arguments(datamodule), **kwargs)

    def forward(self, scaled_labels: torch.Tensor) -> torch.Tensor:
        """Normalised flux (B, P) from scaled labels (B, L)."""
        return self.network(scaled_labels)

    # -- the gradient term --------------------------------------------------------------------
    def current_gradient_weight(self) -> float:
        """lambda at this optimiser step (0 before the start, then a linear ramp, then lambda)."""
        hp = self.hparams
        step = self.global_step - hp.gradient_start_step
        if hp.gradient_weight == 0 or step < 0 or step % hp.gradient_every:
            return 0.0
        ramp = (
            1.0
            if hp.gradient_warmup_steps <= 0
            else min(1.0, (step + 1) / hp.gradient_warmup_steps)
        )
        return hp.gradient_weight * ramp

    def sample_directions(self, gradient_mask: torch.Tensor) -> torch.Tensor:
        """Gradient columns to differentiate along, (B, D), drawn without replacement per spectrum."""
        n_directions = min(self.hparams.gradient_directions, gradient_mask.shape[1])
        available = gradient_mask.float()
        if self.hparams.gradient_sampling == "error":
            share = self.gradient_error / self.gradient_error.sum().clamp_min(1e-12)
            available = available * (0.5 / gradient_mask.shape[1] + 0.5 * share)
        # A tiny floor keeps rows with fewer than D gradients valid; such picks get weight 0.
        return torch.multinomial(available + 1e-6, n_directions, replacement=False)

    def directional_derivatives(
        self, scaled_labels: torch.Tensor, columns: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flux (B, P) and d flux / d label in physical units along gradient `columns` (B, D, P).

        One forward-mode pass with D one-hot tangents per spectrum, each on its label; the
        derivative w.r.t. the scaled label is divided by the label's span.
        """
        label_index = self.gradient_label_index[columns]  # (B, D)
        tangent = F.one_hot(label_index, scaled_labels.shape[1]).to(scaled_labels.dtype)
        flux, d_flux_d_scaled = network_jvp(self.network, scaled_labels, tangent)
        return flux, d_flux_d_scaled / self.label_span[label_index][..., None]

    def dense_gradient_errors(
        self, scaled_labels: torch.Tensor, gradients: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flux (B, P) and per (spectrum, direction) loss (B, D) along random sign combinations.

        Direction r (B, D, K) of +-1 over the labels with gradient spectra (0 where absent); the
        network is differentiated along sum_k r_k w_k d/d label_k, with w_k = 1 / (typical
        gradient size) when normalising, and compared with sum_k r_k w_k gradient_k. The loss is
        divided by the number of labels, so that it is the mean normalised per-label error in
        expectation, as for one-hot directions.
        """
        b, k = mask.shape
        d = self.hparams.gradient_directions
        signs = torch.randint(0, 2, (b, d, k), device=mask.device).to(gradients.dtype) * 2 - 1
        weights = signs * mask[:, None, :].to(gradients.dtype)
        scale = self.gradient_normalisation(gradients)
        if scale is not None:
            weights = weights / scale[:, None, :]
        # d / d physical label_k = (d / d scaled label) / span: fold the span into the tangent.
        span = self.label_span[self.gradient_label_index]
        tangent = torch.zeros(b, d, scaled_labels.shape[1], dtype=scaled_labels.dtype,
                              device=scaled_labels.device)  # fmt: skip
        tangent.index_add_(2, self.gradient_label_index, weights / span)
        flux, derivative = network_jvp(self.network, scaled_labels, tangent)
        target = torch.einsum("bdk,bkp->bdp", weights, torch.where(mask[..., None], gradients, 0))
        error = derivative - target
        n_labels = mask.sum(1).clamp_min(1).to(gradients.dtype)[:, None]
        per_direction = _pointwise(error, self.hparams.flux_loss).mean(-1) / n_labels
        return flux, per_direction

    def gradient_errors(
        self, derivatives: torch.Tensor, gradients: torch.Tensor, columns: torch.Tensor
    ) -> torch.Tensor:
        """Per (spectrum, direction) loss (B, D): pixel mean of the (normalised) error."""
        target = gradients.gather(1, columns[..., None].expand(-1, -1, gradients.shape[-1]))
        error = derivatives - target
        scale = self.gradient_normalisation(gradients)
        if scale is not None:
            error = error / scale.gather(1, columns)[..., None]
        return _pointwise(error, self.hparams.flux_loss).mean(-1)

    def gradient_normalisation(self, gradients: torch.Tensor) -> torch.Tensor | None:
        """What each label's gradient error is divided by (gradient_normalise), (B, K): the
        typical sizes, the per-spectrum rms sizes floored as in validation, or None."""
        mode = self.hparams.gradient_normalise
        if mode == "typical":
            return self.gradient_size.to(gradients.dtype).expand(gradients.shape[0], -1)
        if mode == "spectrum":
            rms = gradients.square().mean(-1).sqrt()
            return torch.maximum(rms, self.gradient_floor.to(rms.dtype))
        return None

    # -- steps --------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        labels, flux = batch["labels"], batch["flux"]
        weight = self.current_gradient_weight()
        mask = batch["gradient_mask"]
        parts: dict[str, torch.Tensor] = {}
        subset = self.hparams.get("gradient_spectra")
        if subset is not None and subset < labels.shape[0]:
            # The batch is already shuffled: its first spectra are a random subset.
            mask = mask[:subset]
        if weight > 0 and mask.shape[1] > 0 and bool(mask.any()):
            n = mask.shape[0]
            if self.hparams.gradient_sampling == "dense":
                derived, per_pair = self.dense_gradient_errors(
                    labels[:n], batch["gradients"][:n], mask
                )
                valid = mask.any(1, keepdim=True).expand_as(per_pair).float()
            else:
                columns = self.sample_directions(mask)
                derived, derivatives = self.directional_derivatives(labels[:n], columns)
                per_pair = self.gradient_errors(derivatives, batch["gradients"][:n], columns)
                valid = mask.gather(1, columns).float()
            if n < labels.shape[0]:
                predicted = torch.cat([derived, self.network(labels[n:])])
            else:
                predicted = derived
            parts["gradient"] = (per_pair * valid).sum() / valid.sum().clamp_min(1.0)
            if self.hparams.gradient_sampling == "error":
                self._update_gradient_error(per_pair.detach(), columns, valid)
        else:
            # lambda = 0: exactly the plain emulator, no derivative is ever taken.
            predicted = self.network(labels)
        parts["flux"] = _pointwise(predicted - flux, self.hparams.flux_loss).mean()
        if "gradient" in parts and self.hparams.gradient_balance == "relative":
            ratio = parts["flux"].detach() / parts["gradient"].detach().clamp_min(1e-30)
            weight = weight * float(ratio)
        self.loss.weights["gradient"] = weight
        total = self.loss(parts)
        batch_size = labels.shape[0]
        for name, value in parts.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        self.log("train/gradient_weight", weight, batch_size=batch_size)
        return total

    @torch.no_grad()
    def _update_gradient_error(
        self, per_pair: torch.Tensor, columns: torch.Tensor, valid: torch.Tensor, decay: float = 0.9
    ) -> None:
        total = torch.zeros_like(self.gradient_error).index_add_(
            0, columns.flatten(), (per_pair * valid).flatten()
        )
        count = torch.zeros_like(self.gradient_error).index_add_(
            0, columns.flatten(), valid.flatten()
        )
        seen = count > 0
        mean = total[seen] / count[seen]
        self.gradient_error[seen] = decay * self.gradient_error[seen] + (1 - decay) * mean.sqrt()

    def _evaluate(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        labels, flux = batch["labels"], batch["flux"]
        predicted = self.network(labels)
        if stage == "val":
            residual = (predicted - flux).detach().float()
            self._val_square_sum += residual.square().sum(0)
            self._val_count += residual.shape[0]
        metrics = self.metrics[stage]
        metrics["flux_mae"](predicted, flux)
        metrics["flux_rmse"](predicted, flux)
        batch_size = labels.shape[0]
        self.log(f"{stage}/flux_mae", metrics["flux_mae"], batch_size=batch_size)
        self.log(f"{stage}/flux_rmse", metrics["flux_rmse"], batch_size=batch_size, prog_bar=True)
        self.log(
            f"{stage}/loss_flux",
            _pointwise(predicted - flux, self.hparams.flux_loss).mean(),
            batch_size=batch_size,
            sync_dist=True,
        )
        limit = self.hparams.val_gradient_batches
        mask = batch["gradient_mask"]
        if not self.gradient_names or (0 <= limit <= batch_idx) or not bool(mask.any()):
            return
        # Every gradient label: the batch repeated per label, one one-hot tangent each, in
        # chunks of at most ~128 rows (memory grows with rows x tokens^2 in attention).
        k, b = len(self.gradient_names), labels.shape[0]
        chunk = max(1, VAL_ROWS // b)
        columns = torch.arange(k, device=labels.device).expand(b, k)
        derivatives = torch.cat(
            [
                self.directional_derivatives(labels, columns[:, start : start + chunk])[1]
                for start in range(0, k, chunk)
            ],
            dim=1,
        )  # (B, K, P)
        target = batch["gradients"]
        # as phdl.report: |target| over all pixels floored (LabelScaling.gradient_floor)
        floor = self.gradient_floor * target.shape[-1] ** 0.5
        relative = (derivatives - target).norm(dim=-1) / torch.maximum(target.norm(dim=-1), floor)
        for column, name in enumerate(self.gradient_names):
            present = mask[:, column]
            if present.any():
                metric = self.metrics[stage]["gradient_rel_error"][name]
                metric.update(relative[present, column])
                self.log(
                    f"{stage}/gradient_rel_error/{name}", metric, batch_size=int(present.sum())
                )

    def on_validation_epoch_start(self) -> None:
        self._val_square_sum.zero_()
        self._val_count.zero_()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        """flux_error = rms residual per pixel over all validation spectra (all ranks)."""
        if self.trainer.sanity_checking:
            return
        square_sum = self.trainer.strategy.reduce(self._val_square_sum.clone(), reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count.clone(), reduce_op="sum")
        if float(count) > 0:
            self.flux_error.copy_((square_sum / count).sqrt())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints written before flux_error existed load with it unmeasured (-1)."""
        state = checkpoint.get("state_dict", {})
        state.setdefault("flux_error", torch.full_like(self.flux_error, -1.0))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "constant":
            return optimizer
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        if hp.scheduler == "onecycle":
            if not math.isfinite(total):
                raise ValueError("scheduler 'onecycle' needs trainer.max_steps or max_epochs")
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=int(total)
            )
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, _warmup_cosine(hp.warmup_steps, total)
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _warmup_cosine(warmup_steps: int, total_steps: float):
    """Learning-rate factor: linear warm-up, then cosine decay to 0 at total_steps (if finite)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not math.isfinite(total_steps) or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def network_from_hparams(hparams) -> nn.Module:
    """The bare network an EmulatorModule with these hyper-parameters holds (untrained)."""
    label_names = hparams["label_scaling"]["names"]
    return build_network(
        hparams.get("model", "transformer"),
        n_labels=len(label_names),
        n_pixels=len(hparams["wavelength"]),
        patch_size=hparams.get("patch_size", 32),
        d_model=hparams.get("d_model", 128),
        n_layers=hparams.get("n_layers", 4),
        n_heads=hparams.get("n_heads", 4),
        d_ff=hparams.get("d_ff", 512),
        label_hidden=hparams.get("label_hidden", 256),
        dropout=hparams.get("dropout", 0.0),
        hidden=hparams.get("mlp_hidden", 300),
        n_hidden_layers=hparams.get("mlp_layers", 2),
    )


def emulator_arguments(datamodule) -> dict:
    """The grid description an EmulatorModule takes from a GridDataModule (plain values)."""
    return {
        "label_scaling": _scaling_to_dict(datamodule.label_scaling),
        "wavelength": _to_float_list(datamodule.wavelength),
        "medium": str(datamodule.medium),
        "resolution": float(datamodule.resolution),
        "gradient_names": list(datamodule.gradient_names),
        "gradient_scale": _to_float_list(datamodule.gradient_scale),
    }


def _scaling_to_dict(scaling: LabelScaling | dict | None) -> dict | None:
    """LabelScaling -> plain dict for hyper-parameters (None and dicts pass through)."""
    return scaling.to_dict() if isinstance(scaling, LabelScaling) else scaling


def _to_float_list(values: Sequence[float] | np.ndarray | None) -> list[float] | None:
    """Array -> list of Python floats (YAML/JSON-safe hyper-parameters; None passes through)."""
    return None if values is None else [float(v) for v in np.asarray(values).reshape(-1)]


def load_emulator(
    checkpoint_path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> SpectrumEmulator:
    """A frozen SpectrumEmulator (eval mode, no grad) from an EmulatorModule checkpoint.

    Loads with `weights_only=True` (no code is unpickled) and rebuilds the network from the
    stored hyper-parameters.
    """
    checkpoint = torch.load(checkpoint_path, map_location=map_location, weights_only=True)
    hparams = checkpoint.get("hyper_parameters") or {}
    missing = [key for key in ("label_scaling", "wavelength") if hparams.get(key) is None]
    if missing or "state_dict" not in checkpoint:
        raise ValueError(
            f"{checkpoint_path}: not an EmulatorModule checkpoint (hyper_parameters lack {missing} "
            "or there is no state_dict)"
        )
    network = network_from_hparams(hparams)
    prefix = "network."
    state = {
        key[len(prefix) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }
    network.load_state_dict(state)
    flux_error = checkpoint["state_dict"].get("flux_error")
    if flux_error is not None and bool((flux_error < 0).any()):
        flux_error = None  # trained without a validation pass: not measured
    emulator = SpectrumEmulator(
        network,
        LabelScaling.from_dict(hparams["label_scaling"]),
        np.asarray(hparams["wavelength"], dtype=np.float64),
        medium=hparams.get("medium", "vacuum"),
        resolution=hparams.get("resolution", float("nan")),
        flux_error=None if flux_error is None else flux_error.double().cpu().numpy(),
    )
    if isinstance(map_location, (str, torch.device)):
        emulator = emulator.to(map_location)
    emulator.eval()
    emulator.requires_grad_(False)
    return emulator
