"""The catalogue writer: one row per spectrum, written batch by batch, safe to kill and rerun.

Each predicted batch becomes a small FITS shard `<output>.parts/part-<first index>-r<rank>.fits`,
written to a temporary name and renamed (`os.replace` is atomic), so a shard is either whole or
absent. At the end of `predict`, after a barrier, rank 0 merges the existing catalogue and all
shards, keeps one row per id, sorts by source index (DDP rank r fits samples r, r+N, ...; the
order is rebuilt from the index carried in every batch), writes the catalogue atomically and only
then deletes the shards; the spectra that could not be fitted (unreadable file, no usable pixel,
...) are listed with their reason in `<catalogue stem>_rejects.csv` beside it. A rerun first collects the ids already in the catalogue and the shards
and tells the datamodule to skip them: a run killed at any point loses nothing already written and
never produces duplicate rows.

Formats by suffix: `.fits` (default; units as TUNITn, flag bits and settings in the header),
`.hdf5`/`.h5`, `.ecsv`, `.csv` (no vector columns, e.g. `return_model`).
"""

from __future__ import annotations

import glob
import os
import warnings

import numpy as np
from astropy.io import fits
from astropy.table import Table, unique, vstack
from lightning.pytorch.callbacks import BasePredictionWriter


def catalogue_table(columns: dict[str, np.ndarray], units: dict[str, str], meta: dict) -> Table:
    """An astropy Table of catalogue columns with units and header cards."""
    table = Table({name: np.asarray(values) for name, values in columns.items()})
    for name, unit in units.items():
        if name in table.colnames and unit:
            table[name].unit = unit
    table.meta.update(meta)
    return table


def read_table(path: str) -> Table:
    """Read a catalogue or shard written by `write_table`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns that FITS has no "dex"
        if path.endswith((".h5", ".hdf5")):
            return Table.read(path, path="catalogue")
        if _format(path) == "fits":
            return Table.read(path, format="fits", mask_invalid=False)
        return Table.read(path, format=_format(path))


def write_table(table: Table, path: str) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    temporary = os.path.join(directory, f".{base}.tmp{os.getpid()}")
    kind = _format(path)
    if kind in ("ascii.csv",) and any(table[c].ndim > 1 for c in table.colnames):
        raise ValueError(f"{path}: CSV cannot hold vector columns (return_model); use .fits/.hdf5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns that FITS has no "dex"
        if kind == "hdf5":
            table.write(temporary, path="catalogue", format="hdf5", serialize_meta=True)
        elif kind == "fits":
            _fits_hdulist(table).writeto(temporary)
        else:
            table.write(temporary, format=kind)
    os.replace(temporary, path)


def _fits_hdulist(table: Table) -> fits.HDUList:
    """Primary + binary table with every unit as TUNITn, 'dex' included (astropy drops it)."""
    hdu = fits.table_to_hdu(table)
    for number, name in enumerate(table.colnames, start=1):
        unit = table[name].unit
        if unit is not None and str(unit):
            text = unit.to_string() if hasattr(unit, "to_string") else str(unit)
            hdu.header[f"TUNIT{number}"] = text if text != "km / s" else "km s-1"
    hdu.header["EXTNAME"] = "CATALOGUE"
    return fits.HDUList([fits.PrimaryHDU(), hdu])


def _format(path: str) -> str:
    if path.endswith((".fits", ".fit", ".fits.gz")):
        return "fits"
    if path.endswith((".h5", ".hdf5")):
        return "hdf5"
    if path.endswith(".ecsv"):
        return "ascii.ecsv"
    if path.endswith(".csv"):
        return "ascii.csv"
    raise ValueError(f"catalogue {path}: unknown format; use .fits, .hdf5, .ecsv or .csv")


class CatalogueWriter(BasePredictionWriter):
    """Writes LabelFitter predictions to `output`, one shard per batch, merged at the end.

    Args:
        output: catalogue path (.fits, .hdf5, .ecsv or .csv).
        resume: skip spectra already in the catalogue or its shards (else refuse to overwrite).
    """

    def __init__(self, output: str, resume: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output = str(output)
        _format(self.output)
        self.resume = bool(resume)
        self.parts_dir = self.output + ".parts"
        self._failed = False

    def part_paths(self) -> list[str]:
        """Complete shards on disk (temporary files are never listed)."""
        return sorted(glob.glob(os.path.join(self.parts_dir, "part-*.fits")))

    def done_ids(self) -> set[str]:
        """Ids already in the catalogue or its shards."""
        done: set[str] = set()
        for path in ([self.output] if os.path.exists(self.output) else []) + self.part_paths():
            done.update(str(i) for i in read_table(path)["id"])
        return done

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Tell the datamodule which spectra are already done (all ranks read the same files)."""
        if stage != "predict":
            return
        exists = os.path.exists(self.output) or bool(self.part_paths())
        if exists and not self.resume:
            raise FileExistsError(
                f"{self.output} (or its shards) exists and resume is false: remove it or resume"
            )
        done = self.done_ids() if exists else set()
        datamodule = getattr(trainer, "datamodule", None)
        if done:
            if not hasattr(datamodule, "skip_ids"):
                raise TypeError(
                    f"{self.output} holds {len(done)} rows but the datamodule cannot skip spectra "
                    "(no skip_ids): use phdl.data.observed.ObservedDataModule or a new output"
                )
            datamodule.skip_ids(done)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        """One atomic shard per batch, named by the batch's first source index and the rank."""
        if prediction is None or len(prediction["id"]) == 0:
            return
        table = catalogue_table(prediction, pl_module.column_units(), pl_module.header())
        first = int(np.min(prediction["index"]))
        name = f"part-{first:012d}-r{trainer.global_rank:04d}.fits"
        write_table(table, os.path.join(self.parts_dir, name))

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._failed = True

    def on_predict_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier("phdl_catalogue_merge")
        if trainer.is_global_zero:
            self.merge(pl_module)
        trainer.strategy.barrier("phdl_catalogue_merged")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # a run with nothing left to fit may skip on_predict_end: still merge leftover shards
        if stage == "predict" and not self._failed and trainer.is_global_zero and self.part_paths():
            self.merge(pl_module)

    @property
    def rejects_path(self) -> str:
        """`<catalogue stem>_rejects.csv` beside the catalogue."""
        stem = self.output
        for suffix in (".fits.gz", ".fits", ".hdf5", ".h5", ".ecsv", ".csv"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        return stem + "_rejects.csv"

    def write_rejects(self, catalogue: Table) -> Table:
        """The spectra that could not be fitted (flag BAD_INPUT): id, index, reason; atomic."""
        from phdl.fit.fitter import FLAG_BITS

        bad = (np.asarray(catalogue["flag"]) & FLAG_BITS["BAD_INPUT"]) != 0
        rejects = Table(
            {
                "id": np.asarray(catalogue["id"][bad], dtype=str),
                "index": np.asarray(catalogue["index"][bad], dtype=np.int64),
                "reason": np.asarray(catalogue["flag_reason"][bad], dtype=str),
            }
        )
        write_table(rejects, self.rejects_path)
        return rejects

    def merge(self, pl_module=None) -> Table | None:
        """Catalogue + shards -> one row per id, sorted by source index; then remove shards."""
        parts = self.part_paths()
        sources = ([self.output] if os.path.exists(self.output) else []) + parts
        if not sources:
            return None
        tables = [read_table(path) for path in sources]
        merged = vstack(tables, join_type="outer", metadata_conflicts="silent")
        merged = unique(merged, keys="id", keep="first")
        merged.sort("index")
        if pl_module is not None:
            for name, unit in pl_module.column_units().items():
                if name in merged.colnames:
                    merged[name].unit = unit
            merged.meta.update(pl_module.header())
        write_table(merged, self.output)
        self.write_rejects(merged)
        for path in parts:
            os.remove(path)
        if os.path.isdir(self.parts_dir) and not os.listdir(self.parts_dir):
            os.rmdir(self.parts_dir)
        return merged
