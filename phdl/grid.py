"""The grid file contract (HDF5, schema version 1): write, read lazily, validate, import.

A grid holds N synthetic spectra on one wavelength grid, their labels and their gradient
spectra d flux / d label (DESIGN section 3). Files reach ~5 GB, so spectra are stored in
one HDF5 chunk each and read one at a time; only wavelengths and labels (small) are held in
memory. Every problem found is reported as a `GridError` naming the file and what was expected.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from phdl.labels import label_unit

SCHEMA_VERSION = 1
MEDIA = ("air", "vacuum")
REQUIRED_DATASETS = ("wavelength", "label_names", "labels", "flux", "gradient_names", "gradients")
#: Spectra scanned at once when checking values (bounds memory on huge grids).
_SCAN_BLOCK = 64


class GridError(ValueError):
    """A grid file breaks the schema-v1 contract; the message names the file and the problem."""


@dataclass(frozen=True)
class GridInfo:
    """Everything about a grid except its spectra (small enough to keep in memory)."""

    path: Path
    wavelength: np.ndarray  # (P,) Angstrom
    medium: str
    label_names: tuple[str, ...]
    label_units: tuple[str, ...]
    labels: np.ndarray  # (N, L) physical units
    gradient_names: tuple[str, ...]
    resolution: float
    source: str
    normalisation: str
    attrs: dict = field(default_factory=dict)

    @property
    def n_spectra(self) -> int:
        return self.labels.shape[0]

    @property
    def n_pixels(self) -> int:
        return self.wavelength.shape[0]

    @property
    def gradient_index(self) -> np.ndarray:
        """For each gradient, the position of its label in `label_names`."""
        return np.array([self.label_names.index(n) for n in self.gradient_names], dtype=np.int64)


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=h5py.string_dtype())


def _decode(values) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def create_grid(
    path: str | os.PathLike,
    wavelength: np.ndarray,
    label_names: Sequence[str],
    labels: np.ndarray,
    gradient_names: Sequence[str],
    *,
    medium: str = "vacuum",
    resolution: float = float("nan"),
    source: str = "unknown",
    normalisation: str = "unknown",
    label_units: Sequence[str] | None = None,
    extra_attrs: Mapping[str, object] | None = None,
) -> None:
    """Create an empty schema-v1 grid for the given labels: flux and gradients are NaN.

    Spectra are then filled in with `write_spectra` (in any order, resumably: the dataset
    `completed` records which spectra are done). One HDF5 chunk per spectrum.
    """
    path = Path(path)
    wavelength = np.asarray(wavelength, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float32)
    label_names = [str(n) for n in label_names]
    gradient_names = [str(n) for n in gradient_names]
    units = list(label_units) if label_units is not None else [label_unit(n) for n in label_names]
    _check_metadata(path, wavelength, medium, label_names, units, labels, gradient_names)
    n, p, k = labels.shape[0], wavelength.shape[0], len(gradient_names)
    with h5py.File(path, "w") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["resolution"] = float(resolution)
        f.attrs["source"] = source
        f.attrs["normalisation"] = normalisation
        f.attrs["created_by"] = f"phdl ({getpass.getuser()})"
        for key, value in (extra_attrs or {}).items():
            f.attrs[key] = value
        w = f.create_dataset("wavelength", data=wavelength)
        w.attrs["medium"] = medium
        w.attrs["unit"] = "Angstrom"
        names = f.create_dataset("label_names", data=_strings(label_names))
        names.attrs["units"] = _strings(units)
        f.create_dataset("labels", data=labels)
        f.create_dataset("gradient_names", data=_strings(gradient_names))
        f.create_dataset("flux", shape=(n, p), dtype=np.float32, chunks=(1, p), fillvalue=np.nan)
        f.create_dataset(
            "gradients",
            shape=(n, k, p),
            dtype=np.float32,
            chunks=(1, max(k, 1), p),
            fillvalue=np.nan,
        )
        f.create_dataset("completed", shape=(n,), dtype=bool, fillvalue=False)


def write_spectra(
    path: str | os.PathLike, indices: Sequence[int], flux: np.ndarray, gradients: np.ndarray
) -> None:
    """Store computed spectra (flux (M, P), gradients (M, K, P)) at `indices` and mark them done.

    The file is flushed before returning, so a run killed afterwards keeps these spectra.
    """
    indices = np.asarray(indices, dtype=np.int64)
    with h5py.File(path, "r+") as f:
        n, p = f["flux"].shape
        k = f["gradients"].shape[1]
        if flux.shape != (len(indices), p) or gradients.shape != (len(indices), k, p):
            raise GridError(
                f"{path}: writing {len(indices)} spectra needs flux {(len(indices), p)} and "
                f"gradients {(len(indices), k, p)}, got {flux.shape} and {gradients.shape}"
            )
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise GridError(f"{path}: spectrum index out of range 0..{n - 1}")
        for j, i in enumerate(indices):
            f["flux"][i] = flux[j]
            f["gradients"][i] = gradients[j]
        completed = f["completed"][...]
        completed[indices] = True
        f["completed"][...] = completed
        f.flush()


def completed_mask(path: str | os.PathLike) -> np.ndarray:
    """Which spectra of a grid being built are already computed (all True for finished grids)."""
    with h5py.File(path, "r") as f:
        if "completed" in f:
            return f["completed"][...].astype(bool)
        return np.ones(f["labels"].shape[0], dtype=bool)


def copy_completed(
    source: str | os.PathLike, destination: str | os.PathLike, block: int = 64
) -> GridInfo:
    """A finished schema-v1 grid of the spectra `source` has completed so far, in their order.

    Train on the first part of a grid while `phdl synth` keeps filling the rest (the source is
    only read; each `write_spectra` of the writer leaves it consistent). Streams `block`
    spectra at a time, so grids larger than memory copy.
    """
    source, destination = Path(source), Path(destination)
    if source.resolve() == destination.resolve():
        raise GridError(f"{source}: copying onto itself; give another destination")
    info = read_grid_info(source, check_values=False, allow_incomplete=True)
    done = np.nonzero(completed_mask(source))[0]
    if done.size == 0:
        raise GridError(f"{source}: no spectrum is completed yet")
    core = ("schema_version", "resolution", "source", "normalisation", "created_by")
    extra = {k: v for k, v in info.attrs.items() if k not in core}
    extra["copied_from"] = f"{source} ({done.size} of {info.n_spectra} completed spectra)"
    create_grid(
        destination, info.wavelength, info.label_names, info.labels[done], info.gradient_names,
        medium=info.medium, resolution=info.resolution, source=info.source,
        normalisation=info.normalisation, label_units=info.label_units, extra_attrs=extra,
    )  # fmt: skip
    with h5py.File(source, "r") as f:
        for start in range(0, done.size, block):
            rows = done[start : start + block]
            write_spectra(destination, np.arange(start, start + rows.size),
                          f["flux"][rows], f["gradients"][rows])  # fmt: skip
    return read_grid_info(destination)


def write_grid(
    path: str | os.PathLike,
    wavelength: np.ndarray,
    label_names: Sequence[str],
    labels: np.ndarray,
    flux: np.ndarray,
    gradient_names: Sequence[str],
    gradients: np.ndarray,
    **metadata,
) -> None:
    """Write a whole in-memory grid (flux (N, P), gradients (N, K, P)) as schema v1."""
    create_grid(path, wavelength, label_names, labels, gradient_names, **metadata)
    flux = np.asarray(flux, dtype=np.float32)
    gradients = np.asarray(gradients, dtype=np.float32)
    write_spectra(path, np.arange(len(labels)), flux, gradients)


def _check_metadata(path, wavelength, medium, label_names, units, labels, gradient_names):
    if wavelength.ndim != 1 or wavelength.size < 2:
        raise GridError(
            f"{path}: 'wavelength' must be 1-d with at least 2 pixels, got shape {wavelength.shape}"
        )
    if not np.all(np.isfinite(wavelength)):
        raise GridError(f"{path}: 'wavelength' contains NaN or inf")
    if np.any(np.diff(wavelength) <= 0):
        first = int(np.argmax(np.diff(wavelength) <= 0))
        raise GridError(
            f"{path}: 'wavelength' must increase strictly; pixel {first + 1} "
            f"({wavelength[first + 1]!r} A) does not exceed pixel {first} ({wavelength[first]!r} A)"
        )
    if medium not in MEDIA:
        raise GridError(
            f"{path}: wavelength attribute 'medium' must be one of {MEDIA}, got {medium!r}"
        )
    if len(set(label_names)) != len(label_names):
        raise GridError(f"{path}: duplicate names in 'label_names': {list(label_names)}")
    if len(units) != len(label_names):
        raise GridError(
            f"{path}: 'label_names' has {len(label_names)} names but {len(units)} units"
        )
    if labels.ndim != 2 or labels.shape[1] != len(label_names):
        raise GridError(
            f"{path}: 'labels' must have shape (N, {len(label_names)}) to match 'label_names', "
            f"got {labels.shape}"
        )
    if labels.shape[0] == 0:
        raise GridError(f"{path}: the grid is empty (0 spectra)")
    bad = ~np.isfinite(labels)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise GridError(
            f"{path}: 'labels' contains {int(bad.sum())} NaN/inf values "
            f"(first: spectrum {row}, label '{label_names[col]}')"
        )
    unknown = [g for g in gradient_names if g not in label_names]
    if unknown:
        raise GridError(
            f"{path}: gradient names {unknown} are not among the label names {list(label_names)}"
        )
    if len(set(gradient_names)) != len(gradient_names):
        raise GridError(f"{path}: duplicate names in 'gradient_names': {list(gradient_names)}")


def read_grid_info(
    path: str | os.PathLike, check_values: bool = True, allow_incomplete: bool = False
) -> GridInfo:
    """Open a grid, validate it against schema v1 and return its metadata and labels.

    With `check_values`, flux and gradients are scanned block by block (memory stays bounded)
    for NaN/inf flux and infinite gradients; NaN gradients mean "not computed" and are allowed.
    """
    path = Path(path)
    if not path.exists():
        raise GridError(f"{path}: no such grid file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise GridError(f"{path}: not a readable HDF5 file ({err})") from None
    with f:
        version = f.attrs.get("schema_version")
        if version is None:
            raise GridError(
                f"{path}: root attribute 'schema_version' is missing (expected {SCHEMA_VERSION})"
            )
        if int(version) != SCHEMA_VERSION:
            raise GridError(
                f"{path}: unknown schema version {version}; this phdl reads version {SCHEMA_VERSION}"
            )
        missing = [d for d in REQUIRED_DATASETS if d not in f]
        if missing:
            raise GridError(
                f"{path}: missing dataset(s) {missing}; schema v1 needs {list(REQUIRED_DATASETS)}"
            )
        wavelength = f["wavelength"][...].astype(np.float64)
        medium = f["wavelength"].attrs.get("medium", "")
        medium = medium.decode() if isinstance(medium, bytes) else str(medium)
        label_names = _decode(f["label_names"][...])
        units_attr = f["label_names"].attrs.get("units")
        units = (
            _decode(units_attr)
            if units_attr is not None
            else tuple(label_unit(n) for n in label_names)
        )
        labels = f["labels"][...]
        gradient_names = _decode(f["gradient_names"][...])
        _check_metadata(path, wavelength, medium, label_names, units, labels, gradient_names)
        n, p, k = labels.shape[0], wavelength.shape[0], len(gradient_names)
        if f["flux"].shape != (n, p):
            raise GridError(
                f"{path}: 'flux' has shape {f['flux'].shape}, expected (N={n}, P={p}) from "
                f"'labels' and 'wavelength'"
            )
        if f["gradients"].shape != (n, k, p):
            raise GridError(
                f"{path}: 'gradients' has shape {f['gradients'].shape}, expected (N={n}, K={k}, P={p}) "
                f"from 'labels', 'gradient_names' and 'wavelength'"
            )
        if "completed" in f and not allow_incomplete:
            done = f["completed"][...]
            if not done.all():
                raise GridError(
                    f"{path}: the grid is incomplete: {int(done.sum())} of {n} spectra computed "
                    f"(an interrupted build; rerun the same `phdl synth` command to resume, or "
                    f"train on the finished part: phdl.grid.copy_completed)"
                )
        if check_values:
            _scan_values(path, f)
        attrs = {key: f.attrs[key] for key in f.attrs}
        return GridInfo(
            path=path,
            wavelength=wavelength,
            medium=medium,
            label_names=label_names,
            label_units=units,
            labels=labels.astype(np.float32),
            gradient_names=gradient_names,
            resolution=float(f.attrs.get("resolution", np.nan)),
            source=str(f.attrs.get("source", "unknown")),
            normalisation=str(f.attrs.get("normalisation", "unknown")),
            attrs=attrs,
        )


def _scan_values(path: Path, f: h5py.File) -> None:
    flux, gradients = f["flux"], f["gradients"]
    for start in range(0, flux.shape[0], _SCAN_BLOCK):
        block = flux[start : start + _SCAN_BLOCK]
        bad = ~np.isfinite(block)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise GridError(
                f"{path}: 'flux' contains {int(bad.sum())} NaN/inf values in spectra "
                f"{start}..{start + len(block) - 1} (first: spectrum {start + row}, pixel {col})"
            )
        if gradients.shape[1]:
            g = gradients[start : start + _SCAN_BLOCK]
            if np.isinf(g).any():
                row = int(np.argwhere(np.isinf(g))[0][0])
                raise GridError(
                    f"{path}: 'gradients' contains inf values (first: spectrum {start + row}); "
                    "use NaN for gradients that were not computed"
                )


class GridReader:
    """Reads spectra of one grid lazily, one HDF5 chunk per spectrum.

    The file handle is opened on first use in the process that reads (e.g. inside a
    DataLoader worker) and is never pickled, so workers and DDP ranks each get their own.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None

    def _handle(self) -> h5py.File:
        if self._file is None:
            # A small raw-data chunk cache: reading is sequential per spectrum, caching more
            # would only grow resident memory on multi-GB grids.
            self._file = h5py.File(self.path, "r", rdcc_nbytes=4 * 1024**2)
        return self._file

    def flux(self, index: int) -> np.ndarray:
        """Normalised flux of spectrum `index`, (P,) float32."""
        return self._handle()["flux"][index]

    def gradients(self, index: int) -> np.ndarray:
        """Gradient spectra of spectrum `index`, (K, P) float32, NaN where not computed."""
        return self._handle()["gradients"][index]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):
        return {"path": self.path, "_file": None}

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def import_difference_grid(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    delta: float | Mapping[str, float] | None = None,
) -> GridInfo:
    """Convert a grid whose `gradients` hold differences flux(label + delta) - flux into schema v1.

    `delta` is the step per label (one number for all, or a mapping by gradient name); where
    it is None, the dataset attribute `gradients.attrs['delta']` (K,) of the source is used.
    Spectra are streamed one at a time, so grids larger than memory convert.
    """
    source, destination = Path(source), Path(destination)
    if source.resolve() == destination.resolve():
        raise GridError(
            f"{source}: importing in place would destroy the source; give another destination"
        )
    with h5py.File(source, "r") as f:
        if "gradients" not in f or "gradient_names" not in f:
            raise GridError(f"{source}: missing dataset 'gradients' or 'gradient_names'")
        names = _decode(f["gradient_names"][...])
        if delta is None:
            if "delta" not in f["gradients"].attrs:
                raise GridError(
                    f"{source}: no step given: pass delta, or store gradients.attrs['delta'] (K,)"
                )
            steps = np.asarray(f["gradients"].attrs["delta"], dtype=np.float64).reshape(-1)
        elif isinstance(delta, Mapping):
            missing = [n for n in names if n not in delta]
            if missing:
                raise GridError(f"{source}: no difference step given for gradients {missing}")
            steps = np.array([float(delta[n]) for n in names])
        else:
            steps = np.full(len(names), float(delta))
    if steps.shape != (len(names),) or np.any(steps == 0) or not np.all(np.isfinite(steps)):
        raise GridError(
            f"{source}: difference steps must be finite, non-zero, one per gradient; got {steps}"
        )
    # Validate the source as if it were schema v1 (its gradients are only rescaled).
    info = read_grid_info(source, check_values=True)
    create_grid(
        destination,
        info.wavelength,
        info.label_names,
        info.labels,
        info.gradient_names,
        medium=info.medium,
        resolution=info.resolution,
        source=info.source,
        normalisation=info.normalisation,
        label_units=info.label_units,
        extra_attrs={"imported_from": str(source), "difference_steps": steps},
    )
    reader = GridReader(source)
    try:
        for i in range(info.n_spectra):
            grads = reader.gradients(i) / steps[:, None].astype(np.float32)
            write_spectra(destination, [i], reader.flux(i)[None], grads[None])
    finally:
        reader.close()
    return read_grid_info(destination, check_values=False)
