"""Observed spectra for `phdl predict`: sources that stream, resampling, and the DataModule.

A *source* is an indexable collection of `ObservedSpectrum` (`SpectrumSource`): in-memory arrays,
an HDF5 file, FITS files, specutils objects or a list made by any reader (e.g. the LAMOST readers).
`ObservedDataset` turns source item i into fixed-size arrays on the emulator's wavelength grid.
A spectrum that cannot be used (unreadable, NaN everywhere, no ivar, outside the model's range,
wrong shapes) becomes an all-ivar-zero row with a `reason`: it is flagged in the catalogue and
never stops the run.

HDF5 layout read by `HDF5Spectra` (written by `write_observed_hdf5`):

| dataset | shape | meaning |
|---|---|---|
| `wavelength` | (P,) or (N, P) float64 | Angstrom, increasing; NaN pads shorter spectra |
| `flux` | (N, P) float | any unit (the continuum is fitted) |
| `ivar` | (N, P) float | inverse variance, 1 / flux unit^2; 0 = bad |
| `mask` | (N, P) bool/int, optional | non-zero = bad pixel |
| `id` | (N,) str, optional | unique spectrum ids (default: the row number) |
Root attribute `medium` = `vacuum` (default) or `air`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import h5py
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from phdl.data.spectrum import ObservedSpectrum, air_to_vacuum, resample, vacuum_to_air


class SpectrumSource:
    """An indexable collection of observed spectra; item i is an `ObservedSpectrum`.

    Subclasses implement `__len__` and `__getitem__` (which may raise for a malformed spectrum:
    the dataset turns the error into a catalogue flag) and, if cheaper than reading every
    spectrum, `ids()`.
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> ObservedSpectrum:
        raise NotImplementedError

    def ids(self) -> list[str]:
        """Spectrum ids in source order (used to skip spectra already in a catalogue)."""
        return [self[i].id for i in range(len(self))]


class ListSpectra(SpectrumSource):
    """Any sequence of `ObservedSpectrum` (e.g. what a survey reader returns)."""

    def __init__(self, spectra: Sequence[ObservedSpectrum]) -> None:
        self.spectra = spectra

    def __len__(self) -> int:
        return len(self.spectra)

    def __getitem__(self, index: int) -> ObservedSpectrum:
        return self.spectra[index]


class ArraySpectra(SpectrumSource):
    """In-memory arrays: flux and ivar (N, P), wavelength (P,) or (N, P) [Angstrom, vacuum]."""

    def __init__(
        self,
        wavelength: np.ndarray,
        flux: np.ndarray,
        ivar: np.ndarray,
        mask: np.ndarray | None = None,
        ids: Sequence[str] | None = None,
        medium: str = "vacuum",
    ) -> None:
        self.wavelength = np.asarray(wavelength, dtype=np.float64)
        self.flux = np.asarray(flux)
        self.ivar = np.asarray(ivar)
        self.mask = None if mask is None else np.asarray(mask)
        if self.flux.ndim != 2:
            raise ValueError(f"ArraySpectra: flux must be (N, P), got shape {self.flux.shape}")
        n = self.flux.shape[0]
        self._ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
        if len(self._ids) != n:
            raise ValueError(f"ArraySpectra: {len(self._ids)} ids for {n} spectra")
        self.medium = _check_medium(medium, "ArraySpectra")

    def __len__(self) -> int:
        return self.flux.shape[0]

    def ids(self) -> list[str]:
        return list(self._ids)

    def __getitem__(self, index: int) -> ObservedSpectrum:
        wavelength = self.wavelength if self.wavelength.ndim == 1 else self.wavelength[index]
        mask = None if self.mask is None else self.mask[index] != 0
        return _finish(
            self._ids[index], wavelength, self.flux[index], self.ivar[index], mask, self.medium
        )


class HDF5Spectra(SpectrumSource):
    """Spectra from an HDF5 file in the layout of this module's docstring (read lazily)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"HDF5Spectra: no file {self.path}")
        with h5py.File(self.path, "r") as f:
            for name in ("wavelength", "flux", "ivar"):
                if name not in f:
                    raise ValueError(
                        f"{self.path}: missing dataset '{name}' (see phdl.data.observed)"
                    )
            self._n = int(f["flux"].shape[0])
            self._ids = (
                [_as_str(v) for v in f["id"][()]] if "id" in f else [str(i) for i in range(self._n)]
            )
            self.medium = _check_medium(_as_str(f.attrs.get("medium", "vacuum")), self.path)
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        # never pickle an open HDF5 handle to a worker (DESIGN section 7)
        return {**self.__dict__, "_file": None, "_pid": None}

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __len__(self) -> int:
        return self._n

    def ids(self) -> list[str]:
        return list(self._ids)

    def __getitem__(self, index: int) -> ObservedSpectrum:
        f = self._handle()
        wavelength = f["wavelength"]
        wavelength = wavelength[()] if wavelength.ndim == 1 else wavelength[index]
        mask = f["mask"][index] != 0 if "mask" in f else None
        return _finish(
            self._ids[index], wavelength, f["flux"][index], f["ivar"][index], mask, self.medium
        )


def write_observed_hdf5(
    path: str | os.PathLike, spectra: Sequence[ObservedSpectrum], medium: str = "vacuum"
) -> None:
    """Write spectra in `HDF5Spectra`'s layout (shorter spectra padded with NaN wavelengths)."""
    n, p = len(spectra), max(s.wavelength.size for s in spectra)
    wavelength = np.full((n, p), np.nan)
    flux, ivar = np.zeros((n, p), np.float32), np.zeros((n, p), np.float32)
    mask = np.ones((n, p), np.uint8)
    for i, s in enumerate(spectra):
        k = s.wavelength.size
        wavelength[i, :k], flux[i, :k], ivar[i, :k], mask[i, :k] = (
            s.wavelength,
            s.flux,
            s.ivar,
            s.mask,
        )
    same = all(s.wavelength.size == p and np.array_equal(s.wavelength, spectra[0].wavelength)
               for s in spectra)  # fmt: skip
    with h5py.File(path, "w") as f:
        f.create_dataset("wavelength", data=wavelength[0] if same else wavelength)
        f.create_dataset("flux", data=flux, chunks=(1, p))
        f.create_dataset("ivar", data=ivar, chunks=(1, p))
        f.create_dataset("mask", data=mask, chunks=(1, p))
        f.create_dataset("id", data=np.array([s.id for s in spectra], dtype=h5py.string_dtype()))
        f.attrs["medium"] = medium


class FITSSpectra(SpectrumSource):
    """One spectrum per FITS file, read by a configurable description of where things are.

    `layout='table'`: HDU `hdu` is a binary table; `flux`, `ivar`, `wavelength`, `mask` name
    (vector) columns of row 0. `layout='image'`: HDU `hdu` is an image whose rows `flux`,
    `ivar`, `wavelength`, `mask` are given as integers, or a 1-d image of flux with the
    wavelength from the header: `wavelength='log10'` (10**(CRVAL1 + CDELT1 * i), or LAMOST's
    COEFF0/COEFF1) or `'linear'` (CRVAL1 + CDELT1 * i). `uncertainty` says what the ivar entry
    holds: 'ivar', 'sigma' or 'variance'. `id_key` names a header keyword for the id (default:
    the file name without suffix).
    """

    def __init__(
        self,
        paths: list[str] | str,
        layout: str = "table",
        hdu: int | str = 1,
        flux: str | int = "FLUX",
        ivar: str | int = "IVAR",
        wavelength: str | int = "WAVELENGTH",
        mask: str | int | None = None,
        uncertainty: str = "ivar",
        id_key: str | None = None,
        medium: str = "vacuum",
    ) -> None:
        if isinstance(paths, str):
            found = sorted(glob.glob(paths))
            self.paths = found if found else [paths]
        else:
            self.paths = [str(p) for p in paths]
        if layout not in ("table", "image"):
            raise ValueError(f"FITSSpectra: layout must be 'table' or 'image', got '{layout}'")
        if uncertainty not in ("ivar", "sigma", "variance"):
            raise ValueError(
                f"FITSSpectra: uncertainty must be 'ivar', 'sigma' or 'variance', got '{uncertainty}'"
            )
        self.layout, self.hdu, self.uncertainty, self.id_key = layout, hdu, uncertainty, id_key
        self.columns = {"flux": flux, "ivar": ivar, "wavelength": wavelength, "mask": mask}
        self.medium = _check_medium(medium, "FITSSpectra")

    def __len__(self) -> int:
        return len(self.paths)

    def ids(self) -> list[str]:
        if self.id_key is None:
            return [_stem(p) for p in self.paths]
        return super().ids()

    def __getitem__(self, index: int) -> ObservedSpectrum:
        from astropy.io import fits

        path = self.paths[index]
        with fits.open(path, memmap=False) as hdul:
            hdu = hdul[self.hdu]
            header = hdul[0].header.copy()
            header.update(hdu.header)
            spectrum_id = _stem(path) if self.id_key is None else str(header[self.id_key])
            get = self._table_column if self.layout == "table" else self._image_row
            flux = get(hdu, self.columns["flux"], path)
            wavelength = self.columns["wavelength"]
            if isinstance(wavelength, str) and wavelength in ("log10", "linear"):
                wavelength = _header_wavelength(header, flux.size, wavelength, path)
            else:
                wavelength = get(hdu, wavelength, path)
            uncertainty = get(hdu, self.columns["ivar"], path)
            mask = None if self.columns["mask"] is None else get(hdu, self.columns["mask"], path)
        ivar = _to_ivar(uncertainty, self.uncertainty)
        return _finish(
            spectrum_id, wavelength, flux, ivar, None if mask is None else mask != 0, self.medium,
            meta={"path": path},
        )  # fmt: skip

    @staticmethod
    def _table_column(hdu, name, path: str) -> np.ndarray:
        if hdu.data is None or name not in hdu.columns.names:
            names = [] if hdu.data is None else hdu.columns.names
            raise ValueError(f"{path}: no column '{name}' in HDU '{hdu.name}' (has {names})")
        return np.asarray(hdu.data[name][0], dtype=np.float64).reshape(-1)

    @staticmethod
    def _image_row(hdu, row, path: str) -> np.ndarray:
        data = np.asarray(hdu.data, dtype=np.float64)
        if data.ndim == 1:
            if row not in (0, "FLUX"):
                raise ValueError(f"{path}: 1-d image has only a flux row, asked for row {row}")
            return data
        if not isinstance(row, int) or not 0 <= row < data.shape[0]:
            raise ValueError(f"{path}: image of shape {data.shape} has no row {row}")
        return data[row]


class SpecutilsSpectra(SpectrumSource):
    """`specutils.Spectrum1D` objects (optional dependency); uncertainty becomes ivar."""

    def __init__(self, spectra: Sequence, ids: Sequence[str] | None = None) -> None:
        self.spectra = list(spectra)
        self._ids = [str(i) for i in (ids if ids is not None else range(len(self.spectra)))]

    def __len__(self) -> int:
        return len(self.spectra)

    def ids(self) -> list[str]:
        return list(self._ids)

    def __getitem__(self, index: int) -> ObservedSpectrum:
        import astropy.units as u

        spectrum = self.spectra[index]
        wavelength = spectrum.spectral_axis.to_value(u.AA, equivalencies=u.spectral())
        flux = np.asarray(spectrum.flux.value, dtype=np.float64)
        uncertainty = spectrum.uncertainty
        if uncertainty is None:
            raise ValueError(f"spectrum {self._ids[index]}: Spectrum1D has no uncertainty")
        kind = type(uncertainty).__name__
        conversions = {"InverseVariance": "ivar", "StdDevUncertainty": "sigma",
                       "VarianceUncertainty": "variance"}  # fmt: skip
        if kind not in conversions:
            raise ValueError(f"spectrum {self._ids[index]}: unsupported uncertainty {kind}")
        ivar = _to_ivar(np.asarray(uncertainty.array, dtype=np.float64), conversions[kind])
        mask = None if spectrum.mask is None else np.asarray(spectrum.mask, dtype=bool)
        return _finish(self._ids[index], wavelength, flux, ivar, mask, "vacuum")


def _check_medium(medium: str, where: str) -> str:
    if medium not in ("vacuum", "air"):
        raise ValueError(f"{where}: medium must be 'vacuum' or 'air', got '{medium}'")
    return medium


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".fits.gz", ".fit.gz", ".fits", ".fit", ".fz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _to_ivar(values: np.ndarray, kind: str) -> np.ndarray:
    """ivar from ivar, sigma or variance (non-positive or non-finite -> 0)."""
    values = np.asarray(values, dtype=np.float64)
    if kind == "ivar":
        return np.where(np.isfinite(values) & (values > 0), values, 0.0)
    power = 2.0 if kind == "sigma" else 1.0
    good = np.isfinite(values) & (values > 0)
    return np.where(good, 1.0 / np.where(good, values, 1.0) ** power, 0.0)


def _header_wavelength(header, n: int, kind: str, path: str) -> np.ndarray:
    """Wavelength [A] from CRVAL1/CDELT1 (or LAMOST COEFF0/COEFF1), log10 or linear."""
    if "COEFF0" in header and kind == "log10":
        start, step = header["COEFF0"], header["COEFF1"]
    elif "CRVAL1" in header:
        start = header["CRVAL1"]
        step = header.get("CDELT1", header.get("CD1_1"))
        if step is None:
            raise ValueError(f"{path}: header has CRVAL1 but no CDELT1/CD1_1")
        start -= step * (header.get("CRPIX1", 1.0) - 1.0)
    else:
        raise ValueError(f"{path}: no CRVAL1/CDELT1 or COEFF0/COEFF1 for the wavelength")
    axis = start + step * np.arange(n)
    return 10.0**axis if kind == "log10" else axis


def _finish(
    spectrum_id: str,
    wavelength: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    mask: np.ndarray | None,
    medium: str,
    meta: dict | None = None,
) -> ObservedSpectrum:
    """ObservedSpectrum in vacuum without padding pixels (non-finite wavelengths)."""
    wavelength = np.asarray(wavelength, dtype=np.float64).reshape(-1)
    flux, ivar = np.asarray(flux).reshape(-1), np.asarray(ivar).reshape(-1)
    if mask is not None:
        mask = np.asarray(mask).reshape(-1)
    if wavelength.shape == flux.shape == ivar.shape and (mask is None or mask.shape == flux.shape):
        keep = np.isfinite(wavelength)
        wavelength, flux, ivar = wavelength[keep], flux[keep], ivar[keep]
        mask = None if mask is None else mask[keep]
    if medium == "air":
        wavelength = air_to_vacuum(wavelength)
    return ObservedSpectrum(spectrum_id, wavelength, flux, ivar, mask, dict(meta or {}))


class ObservedDataset(Dataset):
    """Source spectra resampled onto a model wavelength grid, with a reason when unusable.

    Item: dict with `flux`, `ivar` (P,) float32 on the model grid (bad pixels ivar = 0),
    `index` (position in the source), `id`, `snr` (median flux * sqrt(ivar) of the observed
    pixels) and `reason` ('' when the spectrum can be fitted).
    """

    def __init__(
        self,
        source: SpectrumSource,
        wavelength: np.ndarray,
        medium: str = "vacuum",
        min_good_pixels: int = 20,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.source = source
        self.wavelength = np.asarray(wavelength, dtype=np.float64)
        self.medium = _check_medium(medium, "ObservedDataset")
        self.min_good_pixels = int(min_good_pixels)
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, int)
        # vacuum wavelengths of the model grid's pixels (observed spectra are vacuum)
        self._grid_vacuum = air_to_vacuum(self.wavelength) if medium == "air" else self.wavelength

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, position: int) -> dict:
        index = int(self.indices[position])
        n_pixels = self.wavelength.size
        item = {"index": index, "id": str(index), "snr": float("nan"), "reason": ""}
        try:
            spectrum = self.source[index]
            item["id"] = str(spectrum.id)
            spectrum.validate()
            good = spectrum.good_pixels()
            item["snr"] = float(np.median(spectrum.flux[good] * np.sqrt(spectrum.ivar[good])))
            on_grid = resample(spectrum, self._grid_vacuum)
            n_good = int(np.count_nonzero(on_grid.ivar > 0))
            if n_good < self.min_good_pixels:
                low, high = spectrum.wavelength[good][[0, -1]]
                raise ValueError(
                    f"spectrum {spectrum.id}: {n_good} usable pixels on the model grid "
                    f"(< {self.min_good_pixels}); observed good pixels span {low:.1f}-{high:.1f} A, "
                    f"model {self._grid_vacuum[0]:.1f}-{self._grid_vacuum[-1]:.1f} A"
                )
            flux, ivar = on_grid.flux, on_grid.ivar
        except Exception as error:  # any malformed input becomes a flagged row, never a crash
            item["reason"] = f"{type(error).__name__}: {error}".replace("\n", " ")[:200]
            flux, ivar = np.zeros(n_pixels), np.zeros(n_pixels)
        item["flux"] = np.asarray(flux, dtype=np.float32)
        item["ivar"] = np.asarray(ivar, dtype=np.float32)
        return item


def collate_observed(items: list[dict]) -> dict:
    """Batch of ObservedDataset items: tensors for arrays and numbers, lists for strings."""
    return {
        "flux": torch.from_numpy(np.stack([i["flux"] for i in items])),
        "ivar": torch.from_numpy(np.stack([i["ivar"] for i in items])),
        "index": torch.tensor([i["index"] for i in items], dtype=torch.long),
        "snr": torch.tensor([i["snr"] for i in items], dtype=torch.float64),
        "id": [i["id"] for i in items],
        "reason": [i["reason"] for i in items],
    }


class ObservedDataModule(LightningDataModule):
    """Observed spectra for `phdl predict`, resampled onto the emulator's wavelength grid.

    The grid comes from the fitter (`set_model_grid`, called by LabelFitter.setup) unless given
    here. `skip_ids` (called by the catalogue writer) drops spectra already in the output.

    Args:
        source: where spectra come from (ArraySpectra, HDF5Spectra, FITSSpectra, ...).
        batch_size: spectra fitted together in one batched optimisation.
        num_workers: DataLoader worker processes reading and resampling spectra.
        min_good_pixels: fewer usable pixels on the model grid flags a spectrum.
        wavelength: model grid [Angstrom]; normally taken from the emulator.
        medium: medium of `wavelength` ('vacuum' or 'air').
    """

    def __init__(
        self,
        source: SpectrumSource,
        batch_size: int = 32,
        num_workers: int = 0,
        min_good_pixels: int = 20,
        wavelength: list[float] | None = None,
        medium: str = "vacuum",
    ) -> None:
        super().__init__()
        self.source = source
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.min_good_pixels = int(min_good_pixels)
        self.wavelength = None if wavelength is None else np.asarray(wavelength, np.float64)
        self.medium = medium
        self._skip: set[str] = set()

    def set_model_grid(self, wavelength: np.ndarray, medium: str = "vacuum") -> None:
        """Resample onto this grid [Angstrom] (the emulator's)."""
        self.wavelength = np.asarray(wavelength, dtype=np.float64)
        self.medium = medium

    def skip_ids(self, ids: set[str]) -> None:
        """Leave out spectra whose id is in `ids` (already in the catalogue)."""
        self._skip = set(ids)

    def remaining_indices(self) -> np.ndarray:
        """Source positions still to fit; raises if the source has duplicate ids."""
        ids = self.source.ids()
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            duplicates = sorted({i for i in ids if i in seen or seen.add(i)})[:5]
            raise ValueError(f"observed spectra: ids must be unique, repeated: {duplicates}")
        return np.array([i for i, name in enumerate(ids) if name not in self._skip], dtype=int)

    def predict_dataloader(self) -> DataLoader:
        if self.wavelength is None:
            raise RuntimeError(
                "ObservedDataModule: no model wavelength grid; use it with LabelFitter (which "
                "sets it) or pass `wavelength`"
            )
        dataset = ObservedDataset(
            self.source, self.wavelength, self.medium, self.min_good_pixels,
            self.remaining_indices(),
        )  # fmt: skip
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_observed,
            persistent_workers=False,
        )


__all__ = [
    "ArraySpectra",
    "FITSSpectra",
    "HDF5Spectra",
    "ListSpectra",
    "ObservedDataModule",
    "ObservedDataset",
    "SpecutilsSpectra",
    "SpectrumSource",
    "collate_observed",
    "vacuum_to_air",
    "write_observed_hdf5",
]
