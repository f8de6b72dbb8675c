"""GridDataModule: a schema-v1 grid of synthetic spectra as training, validation and test batches.

Only wavelengths and labels are held in memory; fluxes and gradient spectra are read one spectrum
at a time by a `GridReader` that each DataLoader worker (and each DDP rank) opens for itself
(DESIGN section 7). The label scaling is fitted on the training split only and travels with the
model through the CLI's argument links (see `phdl.cli`), so the checkpoint describes itself.

Every batch is a dict:

| key | shape | meaning |
|---|---|---|
| `index` | (B,) int64 | spectrum number in the grid file |
| `labels` | (B, L) float32 | labels scaled to [-0.5, 0.5] by `label_scaling` |
| `flux` | (B, P) float32 | normalised flux |
| `gradients` | (B, K, P) float32 | d flux / d label in physical units (per K, per dex...), 0 where missing |
| `gradient_mask` | (B, K) bool | True where that gradient spectrum exists (all pixels finite) |
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from phdl.grid import GridError, GridInfo, GridReader, read_grid_info
from phdl.labels import GRADIENT_FLOOR, LabelScaling


class GridDataset(Dataset):
    """Spectra `indices` of a grid file, read lazily; labels already scaled (small, in memory)."""

    def __init__(
        self,
        path: str,
        indices: np.ndarray,
        scaled_labels: np.ndarray,
        gradient_columns: Sequence[int],
    ) -> None:
        self.path = path
        self.indices = np.asarray(indices, dtype=np.int64)
        self.scaled_labels = np.asarray(scaled_labels, dtype=np.float32)  # (len(indices), L)
        self.gradient_columns = np.asarray(gradient_columns, dtype=np.int64)
        # Not opened here: the dataset is pickled to workers, each opens its own handle.
        self.reader = GridReader(path)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, np.ndarray | int]:
        index = int(self.indices[item])
        flux = self.reader.flux(index)
        if len(self.gradient_columns):
            gradients = self.reader.gradients(index)[self.gradient_columns]
        else:
            gradients = np.zeros((0, flux.shape[0]), dtype=np.float32)
        mask = np.isfinite(gradients).all(axis=1)
        gradients = np.where(mask[:, None], gradients, 0.0).astype(np.float32)
        return {
            "index": index,
            "labels": self.scaled_labels[item],
            "flux": flux.astype(np.float32),
            "gradients": gradients,
            "gradient_mask": mask,
        }


def split_indices(
    n_spectra: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded random train/val/test split of spectrum numbers 0..n_spectra-1 (each sorted)."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"grid split: val_fraction={val_fraction} and test_fraction={test_fraction} must be "
            "in [0, 1) and sum to less than 1"
        )
    order = np.random.default_rng(seed).permutation(n_spectra)
    n_val = math.ceil(val_fraction * n_spectra) if val_fraction > 0 else 0
    n_test = math.ceil(test_fraction * n_spectra) if test_fraction > 0 else 0
    n_train = n_spectra - n_val - n_test
    if n_train < 1:
        raise ValueError(
            f"grid split: {n_spectra} spectra leave no training spectrum with "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    train, val, test = np.split(order, [n_train, n_train + n_val])
    return np.sort(train), np.sort(val), np.sort(test)


class GridDataModule(LightningDataModule):
    """Train/val/test batches from one schema-v1 grid file, read lazily per spectrum.

    Args:
        path: the grid file (HDF5, schema v1).
        batch_size: spectra per batch (per device under DDP).
        val_fraction: share of spectra held out for validation.
        test_fraction: share of spectra held out for the test set.
        seed: seed of the random split (the same seed gives the same split on every rank).
        num_workers: DataLoader worker processes (each opens the file itself).
        gradient_labels: which of the grid's gradient spectra to train on (None: all of them;
            an empty list: none).
        gradient_scale_spectra: training spectra read to estimate each label's typical gradient
            size (used to weight the gradient loss per label).
        gradient_scale_floor: flux change across a label's whole training range below which its
            gradient spectra count as noise: each label's typical size is at least this / range.
            Without it a label with no lines in the window (e.g. [Eu/Fe] at 5000-5400 A) gets a
            near-zero size, its relative errors explode and drown the flux term.
        check_values: scan every flux and gradient for NaN/inf when opening (slow on big grids).
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        gradient_labels: list[str] | None = None,
        gradient_scale_spectra: int = 256,
        gradient_scale_floor: float = GRADIENT_FLOOR,
        check_values: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.path = str(path)
        self.batch_size = batch_size
        self.num_workers = num_workers
        if not Path(self.path).exists():
            raise GridError(
                f"{self.path}: no such grid file (for the demo, write a toy grid there with "
                f"`python -m phdl.data.toy {self.path}`)"
            )
        self.info: GridInfo = read_grid_info(self.path, check_values=check_values)
        self.train_indices, self.val_indices, self.test_indices = split_indices(
            self.info.n_spectra, val_fraction, test_fraction, seed
        )
        self._label_scaling = LabelScaling.fit(
            self.info.label_names, self.info.labels[self.train_indices]
        )
        if gradient_labels is None:
            gradient_labels = list(self.info.gradient_names)
        unknown = [name for name in gradient_labels if name not in self.info.gradient_names]
        if unknown:
            raise GridError(
                f"{self.path}: gradient_labels {unknown} have no gradient spectra in this grid; "
                f"it has {list(self.info.gradient_names)}"
            )
        self._gradient_names = tuple(gradient_labels)
        self.gradient_columns = [self.info.gradient_names.index(n) for n in gradient_labels]
        self._gradient_scale = self._typical_gradient_size(
            gradient_scale_spectra, gradient_scale_floor
        )

    # -- what the emulator needs to know (linked into EmulatorModule by phdl.cli) --------------
    @property
    def label_scaling(self) -> LabelScaling:
        """Scaling fitted on the training split's labels (min/max per label)."""
        return self._label_scaling

    @property
    def wavelength(self) -> np.ndarray:
        """Wavelength grid (P,) [Angstrom] in `medium`."""
        return self.info.wavelength

    @property
    def medium(self) -> str:
        return self.info.medium

    @property
    def resolution(self) -> float:
        """Spectral resolution R = lambda / delta lambda of the grid (NaN if unknown)."""
        return self.info.resolution

    @property
    def gradient_names(self) -> tuple[str, ...]:
        """Labels whose gradient spectra the batches carry, in the order of `gradients`' K axis."""
        return self._gradient_names

    @property
    def gradient_scale(self) -> list[float]:
        """Typical size (median over training spectra of the pixel rms) of each gradient [1/unit]."""
        return list(self._gradient_scale)

    def _typical_gradient_size(self, n_spectra: int, floor: float = 0.0) -> list[float]:
        """Median over up to n_spectra training spectra of each gradient's rms over pixels, at
        least `floor` / (the label's training range)."""
        if not self.gradient_columns:
            return []
        rng = np.random.default_rng(self.hparams.seed)
        n = min(n_spectra, len(self.train_indices))
        sample = np.sort(rng.choice(self.train_indices, size=n, replace=False))
        rms = np.full((n, len(self.gradient_columns)), np.nan)
        reader = GridReader(self.path)
        try:
            for row, index in enumerate(sample):
                gradients = reader.gradients(int(index))[self.gradient_columns].astype(np.float64)
                rms[row] = np.sqrt(np.mean(gradients**2, axis=1))  # NaN where not computed
        finally:
            reader.close()
        lowest = self._label_scaling.gradient_floor(self._gradient_names, floor)
        scale = []
        for column, least in zip(rms.T, lowest):
            finite = column[np.isfinite(column) & (column > 0)]
            # A label with no usable gradient spectrum never enters the loss; 1 keeps it finite.
            typical = float(np.median(finite)) if finite.size else 1.0
            scale.append(max(typical, float(least)))
        return scale

    # -- datasets and loaders ---------------------------------------------------------------
    def _dataset(self, indices: np.ndarray) -> GridDataset:
        scaled = self._label_scaling.to_scaled(self.info.labels[indices].astype(np.float64))
        return GridDataset(self.path, indices, scaled, self.gradient_columns)

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = self._dataset(self.train_indices)
        self.val_dataset = self._dataset(self.val_indices)
        self.test_dataset = self._dataset(self.test_indices)

    def _loader(self, dataset: GridDataset, shuffle: bool) -> DataLoader:
        # Lightning swaps in a DistributedSampler under DDP: ranks then see disjoint spectra.
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)

    # -- checkpoint contents ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Split and scaling, stored in checkpoints so a resumed run can check it has the same."""
        return {
            "label_scaling": self._label_scaling.to_dict(),
            "n_train": len(self.train_indices),
            "n_val": len(self.val_indices),
            "n_test": len(self.test_indices),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        saved = LabelScaling.from_dict(state_dict["label_scaling"])
        if saved != self._label_scaling:
            raise ValueError(
                f"{self.path}: the checkpoint was trained with label scaling {saved.to_dict()}, "
                f"but this grid and split give {self._label_scaling.to_dict()}; resume with the "
                "same grid file, fractions and seed"
            )
