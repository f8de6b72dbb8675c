"""Stream observed spectra from files at survey scale: only paths in memory, bad files rejected.

`SpectrumFileDataset` is a torch `Dataset` over a directory, a glob pattern, a list file or a
sequence of paths. Each item is read (and preprocessed) lazily, inside the DataLoader worker
that asks for it, and is either an `ObservedSpectrum` or a `Rejected(path, reason)` record: a
truncated, corrupt or unusable file never stops a run. `write_rejects` writes the rejected files
(FITS or CSV) next to the catalogue.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from phdl.data.lamost import (
    DEFAULT_MASK_BITS,
    FITS_SUFFIXES,
    LamostFormatError,
    MaskPolicy,
    file_stem,
    read_lamost,
)
from phdl.data.observed import SpectrumSource
from phdl.data.preprocess import DEFAULT_BAD_REGIONS, Preprocessor
from phdl.data.spectrum import ObservedSpectrum

#: Suffixes of text files read as lists of paths (one per line, '#' starts a comment).
LIST_SUFFIXES: tuple[str, ...] = (".txt", ".lst", ".list", ".csv")


@dataclass(frozen=True)
class Rejected:
    """A file that gave no usable spectrum: its path and the reason, in words."""

    path: str
    reason: str


def _read_list_file(path: Path) -> list[str]:
    """Paths listed in a text file (first CSV column; relative paths are relative to the file)."""
    paths = []
    with open(path, newline="") as handle:
        for line in handle:
            entry = line.split("#", 1)[0].strip().split(",", 1)[0].strip()
            if not entry or entry.lower() in ("path", "filename", "file"):
                continue
            entry_path = Path(entry).expanduser()
            paths.append(str(entry_path if entry_path.is_absolute() else path.parent / entry_path))
    return paths


def resolve_paths(
    source: str | os.PathLike | Sequence[str | os.PathLike], recursive: bool = True
) -> list[str]:
    """File paths from a directory (FITS files in it, sorted), a glob, a list file or a sequence.

    A directory yields only files whose names end in a FITS suffix (`FITS_SUFFIXES`); a glob, a
    list file or an explicit sequence is taken as given, so a wrong file becomes a reject.
    """
    if isinstance(source, (list, tuple)):
        return [str(Path(p)) for p in source]
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        pattern = "**/*" if recursive else "*"
        return sorted(
            str(p)
            for p in path.glob(pattern)
            if p.is_file() and p.name.lower().endswith(FITS_SUFFIXES)
        )
    if path.is_file():
        if path.name.lower().endswith(LIST_SUFFIXES):
            return _read_list_file(path)
        return [str(path)]
    if glob.has_magic(text):
        return sorted(glob.glob(str(path), recursive=recursive))
    raise FileNotFoundError(f"{text}: no such directory, file, list file or matching glob")


def read_spectrum_file(
    path: str | os.PathLike,
    preprocess: Callable[[ObservedSpectrum], ObservedSpectrum] | None = None,
    mask_policy: MaskPolicy = "and",
    mask_bits: int = DEFAULT_MASK_BITS,
    reader: Callable[..., ObservedSpectrum] = read_lamost,
) -> ObservedSpectrum | Rejected:
    """Read and preprocess one file; any failure becomes `Rejected(path, reason)`, never raises."""
    path = str(path)
    try:
        spectrum = reader(path, mask_policy=mask_policy, mask_bits=mask_bits)
        return spectrum if preprocess is None else preprocess(spectrum)
    except LamostFormatError as exc:
        return Rejected(path, _strip_path(str(exc), path))
    except Exception as exc:  # a run over millions of files must outlive any one of them
        return Rejected(path, _strip_path(f"{type(exc).__name__}: {exc}", path))


def _strip_path(message: str, path: str) -> str:
    """The reason without a leading 'path: ' (the path is its own column)."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


class SpectrumFileDataset(Dataset):
    """Lazily read spectra from files: item i is an `ObservedSpectrum` or a `Rejected`.

    Only the paths live in the dataset (one numpy string array, cheap to fork and pickle), so
    DataLoader workers read their own files. `preprocess` (e.g. a `Preprocessor`) must be
    picklable. Use `collate_spectra` as the DataLoader's `collate_fn`.
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        preprocess: Callable[[ObservedSpectrum], ObservedSpectrum] | None = None,
        mask_policy: MaskPolicy = "and",
        mask_bits: int = DEFAULT_MASK_BITS,
        recursive: bool = True,
    ) -> None:
        paths = resolve_paths(source, recursive=recursive)
        if not paths:
            raise FileNotFoundError(f"{source}: no spectrum files found")
        self.paths = np.array(paths, dtype=np.str_)
        self.preprocess = preprocess
        self.mask_policy = mask_policy
        self.mask_bits = mask_bits

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> ObservedSpectrum | Rejected:
        return read_spectrum_file(
            str(self.paths[index]), self.preprocess, self.mask_policy, self.mask_bits
        )


class LamostSpectra(SpectrumSource):
    """LAMOST FITS files as a source for `phdl.data.observed.ObservedDataModule` (`phdl predict`).

    Item i is the file read by `read_lamost` with bad pixels and `bad_regions` masked (not
    resampled: the datamodule resamples onto the emulator grid). A bad file raises
    LamostFormatError naming it and the problem; the datamodule turns that into a flagged
    catalogue row. `id_from="filename"` (default) uses the file name without suffixes as the
    spectrum id, known without opening any file (resuming a catalogue of millions of spectra
    needs all ids up front); `"header"` uses OBSID (or DESIG) and reads every header for `ids()`.

    Args:
        paths: a directory, glob pattern, list file (one path per line) or list of paths.
        mask_policy: which LAMOST pixel mask flags bad pixels: and, or, both, none.
        mask_bits: mask bits that count (default: all).
        bad_regions: (start, end) wavelength regions [A] to mask; None = the defaults.
        mask_water: also mask the water telluric bands.
        min_good_fraction: fewer usable pixels than this fraction makes the file bad.
        id_from: "filename" or "header".
    """

    def __init__(
        self,
        paths: str | list[str],
        mask_policy: str = "and",
        mask_bits: int = DEFAULT_MASK_BITS,
        bad_regions: list[tuple[float, float]] | None = None,
        mask_water: bool = False,
        min_good_fraction: float = 0.3,
        id_from: str = "filename",
    ) -> None:
        if id_from not in ("filename", "header"):
            raise ValueError(
                f"LamostSpectra: id_from must be 'filename' or 'header', got {id_from!r}"
            )
        self.paths = np.array(resolve_paths(paths), dtype=np.str_)
        if self.paths.size == 0:
            raise FileNotFoundError(f"LamostSpectra: no spectrum files in {paths}")
        self.mask_policy = mask_policy
        self.mask_bits = int(mask_bits)
        self.id_from = id_from
        self.preprocess = Preprocessor(
            bad_regions=list(DEFAULT_BAD_REGIONS if bad_regions is None else bad_regions),
            mask_water=mask_water,
            min_good_fraction=min_good_fraction,
        )

    def __len__(self) -> int:
        return int(self.paths.size)

    def __getitem__(self, index: int) -> ObservedSpectrum:
        path = str(self.paths[index])
        try:
            spectrum = read_lamost(path, mask_policy=self.mask_policy, mask_bits=self.mask_bits)
            if self.id_from == "filename":
                spectrum.id = file_stem(path)
            return self.preprocess(spectrum)
        except (LamostFormatError, ValueError) as exc:
            # the catalogue's flag_reason is short: name the file, not its whole directory
            name = Path(path).name
            reason = _strip_path(str(exc), path).replace(path, name)
            raise LamostFormatError(f"{name}: {reason}") from None

    def ids(self) -> list[str]:
        if self.id_from == "filename":
            return [file_stem(p) for p in self.paths]
        ids = []
        for path in self.paths:
            try:
                ids.append(read_lamost(str(path), mask_policy="none").id)
            except LamostFormatError:
                ids.append(file_stem(path))
        return ids


def collate_spectra(
    items: Sequence[ObservedSpectrum | Rejected],
) -> tuple[list[ObservedSpectrum], list[Rejected]]:
    """DataLoader collate: keep records as objects, split into (spectra, rejects)."""
    spectra = [item for item in items if isinstance(item, ObservedSpectrum)]
    rejects = [item for item in items if isinstance(item, Rejected)]
    return spectra, rejects


def iter_spectra(
    source: str | os.PathLike | Sequence[str | os.PathLike] | SpectrumFileDataset,
    preprocess: Callable[[ObservedSpectrum], ObservedSpectrum] | None = None,
    num_workers: int = 0,
    batch_size: int = 64,
    **dataset_kwargs,
) -> Iterator[tuple[list[ObservedSpectrum], list[Rejected]]]:
    """Batches (spectra, rejects) in file order, read by `num_workers` DataLoader workers."""
    dataset = (
        source
        if isinstance(source, SpectrumFileDataset)
        else SpectrumFileDataset(source, preprocess, **dataset_kwargs)
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_spectra,
        persistent_workers=False,
    )
    yield from loader


def read_spectra(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    preprocess: Callable[[ObservedSpectrum], ObservedSpectrum] | None = None,
    num_workers: int = 0,
    **dataset_kwargs,
) -> tuple[list[ObservedSpectrum], list[Rejected]]:
    """All spectra and rejects of `source` in memory (for small samples; stream otherwise)."""
    spectra: list[ObservedSpectrum] = []
    rejects: list[Rejected] = []
    for batch_spectra, batch_rejects in iter_spectra(
        source, preprocess, num_workers=num_workers, **dataset_kwargs
    ):
        spectra.extend(batch_spectra)
        rejects.extend(batch_rejects)
    return spectra, rejects


def write_rejects(
    rejects: Sequence[Rejected], path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write the rejected files as a table with columns path, reason (.fits or .csv by suffix)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: rejects table exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes).lower()
    if suffix.endswith((".fits", ".fit", ".fits.gz")):
        from astropy.table import Table

        table = Table(
            {
                "path": np.array([r.path for r in rejects], dtype=np.str_),
                "reason": np.array([r.reason for r in rejects], dtype=np.str_),
            }
        )
        table.meta["EXTNAME"] = "REJECTS"
        table.write(path, overwrite=overwrite)
    elif suffix.endswith(".csv"):
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "reason"])
            writer.writerows([r.path, r.reason] for r in rejects)
    else:
        raise ValueError(f"{path}: rejects table must end in .fits or .csv")
    return path


def read_rejects(path: str | os.PathLike) -> list[Rejected]:
    """Read a rejects table written by `write_rejects` (.fits or .csv)."""
    path = Path(path)
    if "".join(path.suffixes).lower().endswith(".csv"):
        with open(path, newline="") as handle:
            return [Rejected(row["path"], row["reason"]) for row in csv.DictReader(handle)]
    from astropy.table import Table

    table = Table.read(path)
    return [Rejected(str(p), str(r)) for p, r in zip(table["path"], table["reason"])]


def build_parser():
    """The `python -m phdl.data.files` argument parser."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m phdl.data.files",
        description="Read LAMOST files (directory, glob, list file) and report layouts and rejects.",
    )
    parser.add_argument("source", help="directory, glob pattern or list file of LAMOST FITS files")
    parser.add_argument("--rejects", help="write the rejects table here (.csv or .fits)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing rejects table"
    )
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--mask-policy", default="and", choices=["and", "or", "both", "none"])
    return parser


def main(args: Sequence[str] | None = None) -> int:
    """`python -m phdl.data.files SOURCE [--rejects PATH]`: read every file, summarise, list rejects."""
    import time
    from collections import Counter

    parser = build_parser()
    options = parser.parse_args(args)

    start = time.perf_counter()
    layouts: Counter = Counter()
    rejects: list[Rejected] = []
    dataset = SpectrumFileDataset(options.source, Preprocessor(), mask_policy=options.mask_policy)
    for spectra, batch_rejects in iter_spectra(dataset, num_workers=options.workers):
        layouts.update(s.meta.get("layout", "?") for s in spectra)
        rejects.extend(batch_rejects)
    elapsed = time.perf_counter() - start
    n_files = len(dataset)
    print(f"{n_files} files in {elapsed:.1f} s ({n_files / elapsed:.0f} files/s)")
    for layout, count in sorted(layouts.items()):
        print(f"  {layout}: {count}")
    print(f"  rejected: {len(rejects)}")
    for reason, count in Counter(r.reason.split(" (", 1)[0] for r in rejects).most_common(10):
        print(f"    {count} x {reason}")
    if options.rejects:
        print(f"rejects written to {write_rejects(rejects, options.rejects, options.overwrite)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
