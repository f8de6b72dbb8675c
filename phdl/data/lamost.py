"""LAMOST low-resolution spectra (FITS, one spectrum per file) -> `ObservedSpectrum`.

Three layouts exist in released files (DESIGN section 4). Each is described as data in
`LAYOUTS` and recognised from the file's content (header keys and array shapes, never the
file name) by one `identify_*` function, as specutils does for its survey loaders:

| layout | where the data are | wavelength |
|---|---|---|
| `dr1-image` | primary image (5, P): flux, ivar, continuum-subtracted flux, andmask, ormask | 10**(COEFF0 + COEFF1 i) |
| `dr2-8-image` | primary image (5, P): flux, ivar, wavelength, andmask, ormask | row 2 |
| `dr9-table` | HDU 1 one-row binary table, vector columns FLUX, IVAR, WAVELENGTH, ANDMASK, ORMASK | column |

Pixel mask bits (the same for ANDMASK, bad in every exposure, and ORMASK, bad in at least one):
see `MASK_BITS`. Which mask and which bits flag a pixel bad is the reader's `mask_policy`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from phdl.data import _fits
from phdl.data.spectrum import C_KMS, ObservedSpectrum, air_to_vacuum

#: LAMOST 1D pixel mask bits (value -> meaning), as in the LAMOST data-release documentation.
MASK_BITS: dict[str, int] = {
    "BADCCD": 1,  # bad pixel on the CCD
    "BADPROFILE": 2,  # bad profile in extraction
    "NOSKY": 4,  # no sky information at this wavelength
    "BRIGHTSKY": 8,  # sky level too high
    "BADCENTER": 16,  # fibre trace out of the CCD
    "NODATA": 32,  # no good data
}

#: Bits that make a pixel bad by default: all of them.
DEFAULT_MASK_BITS: int = sum(MASK_BITS.values())

#: Which per-pixel mask is applied: "and" (bad in every exposure, the default), "or" (bad in at
#: least one exposure: stricter), "both" (either mask) or "none" (only ivar = 0 marks bad pixels).
MaskPolicy = Literal["and", "or", "both", "none"]

#: Header keys of the per-band S/N, old (DR1) and new (DR2+) spelling -> normalised meta name.
SNR_KEYS: dict[str, tuple[str, str]] = {
    f"snr_{band}": (f"SNR{band.upper()}", f"SN_{band.upper()}") for band in "ugriz"
}

#: LAMOST low-resolution pixels: wavelength_i = 10**(COEFF0 + COEFF1 i) [A, vacuum].
LAMOST_COEFF0 = 3.5682
LAMOST_COEFF1 = 1e-4
LAMOST_N_PIXELS = 3909


def lamost_wavelength(
    start: float | None = None, stop: float | None = None, n_pixels: int | None = LAMOST_N_PIXELS
) -> np.ndarray:
    """LAMOST's own pixel grid 10**(3.5682 + 1e-4 i) [A, vacuum], optionally cut to [start, stop].

    Build emulator grids on these pixels: resampling LAMOST spectra onto them is then exact,
    while linear resampling onto a grid offset by a fraction of a pixel smooths R~1800 lines
    (errors up to ~1% of the continuum at half a pixel) and correlates the noise.
    `n_pixels=None` continues the same log-linear grid over all of [start, stop] (synthetic
    grids wider than LAMOST's 3909 pixels).
    """
    if n_pixels is None:
        if start is None or stop is None:
            raise ValueError("lamost_wavelength: n_pixels=None needs start and stop wavelengths")
        first = math.ceil((math.log10(start) - LAMOST_COEFF0) / LAMOST_COEFF1)
        last = math.floor((math.log10(stop) - LAMOST_COEFF0) / LAMOST_COEFF1)
        index = np.arange(first, last + 1)
    else:
        index = np.arange(n_pixels)
    wavelength = 10.0 ** (LAMOST_COEFF0 + LAMOST_COEFF1 * index)
    keep = np.ones(wavelength.size, dtype=bool)
    if start is not None:
        keep &= wavelength >= start
    if stop is not None:
        keep &= wavelength <= stop
    return wavelength[keep]


def lamost_pixel_offset(wavelength: np.ndarray) -> float:
    """Fractional offset (-0.5, 0.5] of a grid [A] from LAMOST pixels; NaN if not on that step.

    0 means every grid pixel sits on a LAMOST pixel (log10 step 1e-4, aligned to COEFF0).
    """
    position = (np.log10(np.asarray(wavelength, dtype=np.float64)) - LAMOST_COEFF0) / LAMOST_COEFF1
    if position.size < 2 or np.any(np.abs(np.diff(position) - 1.0) > 1e-3):
        return float("nan")
    offset = float(np.median(position - np.round(position)))
    return 0.0 if abs(offset) < 1e-6 else offset


FITS_SUFFIXES: tuple[str, ...] = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")


#: An open file: astropy's HDUList or the fast parser's list of HDUs (both have .header, .data,
#: and .columns.names on tables).
HDUs = fits.HDUList | list[_fits.HDU]


class LamostFormatError(ValueError):
    """A file that is not a usable LAMOST spectrum; the message names the file and the problem."""


@dataclass(frozen=True)
class Layout:
    """Where one LAMOST layout keeps each quantity (formats are data, not branching code)."""

    name: str
    description: str
    hdu: int  # HDU holding the arrays
    kind: Literal["image", "table"]
    #: quantity -> image row index or table column name; wavelength absent = from COEFF0/COEFF1
    fields: dict[str, int | str]


LAYOUTS: dict[str, Layout] = {
    "dr1-image": Layout(
        "dr1-image",
        "DR1-era (pipeline v2.6) primary image: flux, ivar, continuum-subtracted flux, andmask, "
        "ormask; wavelength from COEFF0/COEFF1",
        0,
        "image",
        {"flux": 0, "ivar": 1, "andmask": 3, "ormask": 4},
    ),
    "dr2-8-image": Layout(
        "dr2-8-image",
        "DR2-DR8 (pipeline v2.7-2.9) primary image: flux, ivar, wavelength, andmask, ormask",
        0,
        "image",
        {"flux": 0, "ivar": 1, "wavelength": 2, "andmask": 3, "ormask": 4},
    ),
    "dr9-table": Layout(
        "dr9-table",
        "DR9+ one-row binary table in HDU 1: FLUX, IVAR, WAVELENGTH, ANDMASK, ORMASK",
        1,
        "table",
        {
            "flux": "FLUX",
            "ivar": "IVAR",
            "wavelength": "WAVELENGTH",
            "andmask": "ANDMASK",
            "ormask": "ORMASK",
        },
    ),
}

#: Plausible observed wavelengths of an optical spectrum [Angstrom] (used to recognise a row).
_WAVELENGTH_RANGE = (3000.0, 12000.0)


def _primary_image_5rows(hdul: HDUs) -> bool:
    header = hdul[0].header
    return header.get("NAXIS") == 2 and header.get("NAXIS2") == 5 and header.get("NAXIS1", 0) > 1


def _row_is_wavelength(hdul: HDUs) -> bool:
    row = np.asarray(hdul[0].data[2], dtype=np.float64)
    return (
        bool(np.all(np.isfinite(row)))
        and bool(np.all(np.diff(row) > 0))
        and _WAVELENGTH_RANGE[0] < row[0] < row[-1] < _WAVELENGTH_RANGE[1]
    )


def identify_lamost_dr1(hdul: HDUs) -> bool:
    """DR1-era image: 5 rows, row 2 is the continuum-subtracted flux, COEFF0/COEFF1 present."""
    if not _primary_image_5rows(hdul):
        return False
    header = hdul[0].header
    if "COEFF0" not in header or "COEFF1" not in header:
        return False
    exten = str(header.get("EXTEN0", "")).lower()
    if exten:
        return "continuum" in exten and "wavelength" not in exten
    return not _row_is_wavelength(hdul)


def identify_lamost_image(hdul: HDUs) -> bool:
    """DR2-DR8 image: 5 rows, row 2 is the wavelength."""
    if not _primary_image_5rows(hdul):
        return False
    exten = str(hdul[0].header.get("EXTEN0", "")).lower()
    if exten:
        return "wavelength" in exten
    return _row_is_wavelength(hdul)


def identify_lamost_table(hdul: HDUs) -> bool:
    """DR9+ table: HDU 1 is a binary table with FLUX, IVAR and WAVELENGTH columns."""
    if len(hdul) < 2 or str(hdul[1].header.get("XTENSION", "")).strip() != "BINTABLE":
        return False
    names = {name.upper() for name in hdul[1].columns.names}
    return {"FLUX", "IVAR", "WAVELENGTH"} <= names


#: identify function -> layout name, tried in order (the first that says yes wins).
IDENTIFIERS: tuple[tuple[Callable[[HDUs], bool], str], ...] = (
    (identify_lamost_table, "dr9-table"),
    (identify_lamost_dr1, "dr1-image"),
    (identify_lamost_image, "dr2-8-image"),
)


def identify_layout(hdul: HDUs, path: str | Path = "<memory>") -> str:
    """Name of the LAMOST layout of an open file; LamostFormatError naming the file if none fits."""
    for identify, name in IDENTIFIERS:
        if identify(hdul):
            return name
    shapes = []
    for i, hdu in enumerate(hdul):
        kind = str(hdu.header.get("XTENSION", "primary")).strip().lower()
        axes = [
            str(hdu.header.get(f"NAXIS{j}")) for j in range(1, (hdu.header.get("NAXIS") or 0) + 1)
        ]
        shapes.append(f"HDU {i} {kind} {'x'.join(axes) or 'empty'}")
    raise LamostFormatError(
        f"{path}: not a LAMOST spectrum (expected a (5, P) primary image or a FLUX/IVAR/"
        f"WAVELENGTH table in HDU 1; found {', '.join(shapes)})"
    )


def _open(path: Path) -> fits.HDUList:
    """Open a FITS file fully in memory; truncated or corrupt files raise LamostFormatError."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
            for hdu in hdul:  # force reading the data so a short file fails here
                _ = hdu.data
            error = None
        except (OSError, ValueError, TypeError, EOFError, IndexError, KeyError) as exc:
            hdul, error = None, exc
    truncated = [
        str(w.message).strip()
        for w in caught
        if issubclass(w.category, AstropyUserWarning)
        and "may have been truncated" in str(w.message)
    ]
    if truncated:
        if hdul is not None:
            hdul.close()
        raise LamostFormatError(f"{path}: truncated FITS file ({truncated[0]})") from error
    if error is not None:
        raise LamostFormatError(f"{path}: not a readable FITS file ({error})") from error
    return hdul


def _arrays(hdul: HDUs, layout: Layout, path: Path) -> dict[str, np.ndarray]:
    """Quantity -> 1-d float64 array, as the layout says; wavelength from COEFF0/COEFF1 if absent."""
    hdu = hdul[layout.hdu]
    arrays: dict[str, np.ndarray] = {}
    if layout.kind == "image":
        data = np.asarray(hdu.data)
        for quantity, row in layout.fields.items():
            arrays[quantity] = np.asarray(data[row], dtype=np.float64)
    else:
        table = hdu.data
        if table is None or len(table) < 1:
            raise LamostFormatError(f"{path}: HDU {layout.hdu} table has no row")
        columns = {name.upper(): name for name in hdu.columns.names}
        for quantity, column in layout.fields.items():
            if column.upper() not in columns:
                if quantity in ("andmask", "ormask"):
                    continue
                raise LamostFormatError(f"{path}: HDU {layout.hdu} has no column {column}")
            arrays[quantity] = np.ravel(np.asarray(table[columns[column.upper()]][0])).astype(
                np.float64
            )
    if "wavelength" not in arrays:
        header = hdul[0].header
        try:
            coeff0, coeff1 = float(header["COEFF0"]), float(header["COEFF1"])
        except (KeyError, ValueError, TypeError) as exc:
            raise LamostFormatError(f"{path}: no wavelength row and no COEFF0/COEFF1") from exc
        arrays["wavelength"] = 10.0 ** (coeff0 + coeff1 * np.arange(arrays["flux"].size))
    sizes = {quantity: a.size for quantity, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise LamostFormatError(f"{path}: arrays of different lengths {sizes}")
    return arrays


def _header_value(header: fits.Header, *keys: str):
    """First present, non-empty value among `keys` (strings stripped), else None."""
    for key in keys:
        value = header.get(key)
        if isinstance(value, str):
            value = value.strip()
            if value and value.upper() not in ("NULL", "NONE", "-"):
                return value
        elif value is not None:
            return value
    return None


#: LAMOST's "not measured" value in headers and catalogues.
MISSING_VALUE = -9999.0


def _float_or_none(value) -> float | None:
    """Float, or None for missing, non-numeric, non-finite or LAMOST's -9999 sentinel."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value != MISSING_VALUE else None


def header_meta(header: fits.Header, layout: str, path: str | Path) -> dict:
    """The header quantities phdl uses, with normalised names (angles in deg, velocities in km/s)."""
    obsid = _header_value(header, "OBSID")
    try:
        obsid = int(obsid) if obsid is not None else None
    except (TypeError, ValueError):
        obsid = None
    z = _float_or_none(_header_value(header, "Z"))
    z_err = _float_or_none(_header_value(header, "Z_ERR"))
    meta = {
        "obsid": obsid,
        "designation": _header_value(header, "DESIG", "DESIGNATION"),
        "ra": _float_or_none(_header_value(header, "RA")),
        "dec": _float_or_none(_header_value(header, "DEC")),
        "z": z,
        "z_err": z_err,
        # LAMOST's Z of a star is its heliocentric radial velocity / c: the fitter's start value
        "rv_init_kms": None if z is None else z * C_KMS,
        "rv_init_err_kms": None if z_err is None else z_err * C_KMS,
        "helio_rv": _float_or_none(_header_value(header, "HELIO_RV")),
        "class": _header_value(header, "CLASS"),
        "subclass": _header_value(header, "SUBCLASS"),
        "data_release": _header_value(header, "DATA_V"),
        "pipeline": _header_value(header, "VERSPIPE"),
        "mjd": _header_value(header, "MJD"),
        "layout": layout,
        "path": str(path),
    }
    for name, keys in SNR_KEYS.items():
        meta[name] = _float_or_none(_header_value(header, *keys))
    return meta


def pixel_mask(
    andmask: np.ndarray | None,
    ormask: np.ndarray | None,
    mask_policy: MaskPolicy = "and",
    mask_bits: int = DEFAULT_MASK_BITS,
) -> np.ndarray | None:
    """Boolean bad-pixel mask from LAMOST and/or masks (stored as floats in the files)."""
    if mask_policy not in ("and", "or", "both", "none"):
        raise ValueError(f"mask_policy must be 'and', 'or', 'both' or 'none', got {mask_policy!r}")
    chosen = {"and": (andmask,), "or": (ormask,), "both": (andmask, ormask), "none": ()}
    masks = [m for m in chosen[mask_policy] if m is not None]
    if not masks:
        return None
    bad = np.zeros(masks[0].shape, dtype=bool)
    for m in masks:
        bits = np.where(np.isfinite(m), m, 0).astype(np.int64)
        bad |= (bits & int(mask_bits)) != 0
    return bad


def spectrum_from_hdul(
    hdul: HDUs,
    path: str | Path = "<memory>",
    mask_policy: MaskPolicy = "and",
    mask_bits: int = DEFAULT_MASK_BITS,
) -> ObservedSpectrum:
    """`ObservedSpectrum` from an open LAMOST file (any layout); LamostFormatError if unusable."""
    path = Path(path)
    layout_name = identify_layout(hdul, path)
    arrays = _arrays(hdul, LAYOUTS[layout_name], path)
    header = hdul[0].header
    meta = header_meta(header, layout_name, path)

    wavelength = arrays["wavelength"]
    if not np.all(np.isfinite(wavelength)):
        raise LamostFormatError(f"{path}: wavelength has non-finite values")
    if np.any(np.diff(wavelength) <= 0):
        raise LamostFormatError(f"{path}: wavelength is not strictly increasing")
    vacuum = header.get("VACUUM")
    if vacuum is False:
        wavelength = air_to_vacuum(wavelength)
        meta["converted_from_air"] = True
    meta["vacuum_keyword"] = vacuum if isinstance(vacuum, bool) else None

    flux, ivar = arrays["flux"], arrays["ivar"]
    if not np.any(np.isfinite(flux)):
        raise LamostFormatError(f"{path}: flux has no finite value")
    if not np.any(np.isfinite(ivar) & (ivar > 0)):
        raise LamostFormatError(f"{path}: ivar is zero (or not finite) everywhere")
    mask = pixel_mask(arrays.get("andmask"), arrays.get("ormask"), mask_policy, mask_bits)
    if mask is None:
        mask = np.zeros(flux.shape, dtype=bool)
    bad = ~(np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)) | mask
    meta["n_pixels"] = int(flux.size)
    meta["n_bad_pixels"] = int(bad.sum())
    meta["mask_policy"] = mask_policy

    if meta["obsid"] is not None and meta["obsid"] > 0:
        spectrum_id = str(meta["obsid"])
    elif meta["designation"]:
        spectrum_id = str(meta["designation"])
    else:
        spectrum_id = file_stem(path)
    spectrum = ObservedSpectrum(spectrum_id, wavelength, flux, ivar, bad, meta).clean()
    try:
        spectrum.validate()
    except ValueError as exc:
        raise LamostFormatError(f"{path}: {exc}") from exc
    return spectrum


def file_stem(path: str | Path) -> str:
    """File name without FITS and compression suffixes ('spec-1.fits.gz' -> 'spec-1')."""
    name = Path(path).name
    for suffix in (".gz", ".bz2", ".fz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    for suffix in (".fits", ".fit", ".fts"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def read_lamost(
    path: str | Path,
    mask_policy: MaskPolicy = "and",
    mask_bits: int = DEFAULT_MASK_BITS,
    engine: Literal["fast", "astropy"] = "fast",
) -> ObservedSpectrum:
    """Read one LAMOST low-resolution FITS file (any layout, gzip or not) [vacuum Angstrom].

    Raises LamostFormatError (a ValueError) naming the file and the problem when the file is
    truncated, corrupt, not a spectrum, or has no usable pixel. `engine="fast"` parses the file
    with `phdl.data._fits` (3-5x faster) and falls back to astropy whenever that fails, so
    astropy has the last word on every file it does not accept.
    """
    path = Path(path)
    if not path.is_file():
        raise LamostFormatError(f"{path}: no such file")
    if engine == "fast":
        try:
            return spectrum_from_hdul(_fits.read_fits(path), path, mask_policy, mask_bits)
        except Exception:  # anything unusual: astropy decides (and words the reason)
            pass
    elif engine != "astropy":
        raise ValueError(f"engine must be 'fast' or 'astropy', got {engine!r}")
    hdul = _open(path)
    try:
        return spectrum_from_hdul(hdul, path, mask_policy, mask_bits)
    except LamostFormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise LamostFormatError(f"{path}: unexpected content ({exc})") from exc
    finally:
        hdul.close()


def from_specutils(spectrum, id: str | None = None) -> ObservedSpectrum:  # noqa: A002
    """`ObservedSpectrum` from a specutils `Spectrum1D`/`Spectrum` (1-d flux) [vacuum Angstrom].

    The spectral axis is converted to Angstrom; an uncertainty of any astropy kind (inverse
    variance, standard deviation, variance) becomes ivar; no uncertainty means ivar = 1. A
    `meta["vacuum"] = False` (or `meta["medium"] == "air"`) converts air to vacuum.
    """
    import astropy.units as u

    wavelength = spectrum.spectral_axis.to_value(u.AA, equivalencies=u.spectral())
    flux = np.asarray(spectrum.flux.value, dtype=np.float64)
    if flux.ndim != 1:
        raise ValueError(f"specutils spectrum {id}: expected 1-d flux, got shape {flux.shape}")
    ivar = np.ones_like(flux)
    uncertainty = getattr(spectrum, "uncertainty", None)
    if uncertainty is not None:
        kind = getattr(uncertainty, "uncertainty_type", "")
        array = np.asarray(uncertainty.array, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            if kind == "ivar":
                ivar = array
            elif kind == "std":
                ivar = np.where(array > 0, 1.0 / array**2, 0.0)
            elif kind == "var":
                ivar = np.where(array > 0, 1.0 / array, 0.0)
            else:
                raise ValueError(f"specutils spectrum {id}: unsupported uncertainty '{kind}'")
    meta = dict(getattr(spectrum, "meta", {}) or {})
    header = meta.get("header")
    if isinstance(header, fits.Header):
        meta.update(header_meta(header, "specutils", meta.get("path", "")))
    if meta.get("vacuum") is False or str(meta.get("medium", "")).lower() == "air":
        wavelength = air_to_vacuum(wavelength)
        meta["converted_from_air"] = True
    mask = getattr(spectrum, "mask", None)
    if id is None:
        id = str(meta.get("obsid") or meta.get("designation") or meta.get("id") or "spectrum")  # noqa: A001
    order = np.argsort(wavelength)
    if np.any(order != np.arange(order.size)):
        wavelength, flux, ivar = wavelength[order], flux[order], ivar[order]
        mask = None if mask is None else np.asarray(mask)[order]
    result = ObservedSpectrum(str(id), wavelength, flux, ivar, mask, meta).clean()
    result.validate()
    return result


def register_specutils_loader() -> bool:
    """Register `Spectrum.read(path, format="lamost-lrs")` when specutils is installed.

    Returns True if registered. The loader reads through `read_lamost` (any layout) and returns
    flux with ivar uncertainty and the bad-pixel mask, wavelength in vacuum Angstrom.
    """
    try:
        import astropy.units as u
        from astropy.nddata import InverseVariance
        from specutils.io.registers import data_loader

        try:
            from specutils import Spectrum  # specutils >= 2
        except ImportError:
            from specutils import Spectrum1D as Spectrum
    except ImportError:
        return False

    def _identify(origin, *args, **kwargs) -> bool:
        path = args[0] if args else None
        if not isinstance(path, (str, Path)) or not str(path).lower().endswith(FITS_SUFFIXES):
            return False
        try:
            with fits.open(path, memmap=False) as hdul:
                identify_layout(hdul, path)
        except (OSError, ValueError):
            return False
        return True

    @data_loader(
        "lamost-lrs",
        identifier=_identify,
        dtype=Spectrum,
        extensions=["fits", "fit", "gz"],
        force=True,
        priority=10,
    )
    def _load(file, **kwargs):
        if isinstance(file, (str, Path)):
            spectrum = read_lamost(file, **kwargs)
        else:  # astropy's registry hands over an open (e.g. gzip) file object
            name = getattr(file, "name", "<file>")
            with fits.open(file, memmap=False) as hdul:
                spectrum = spectrum_from_hdul(hdul, name, **kwargs)
        return Spectrum(
            flux=spectrum.flux * u.dimensionless_unscaled,
            spectral_axis=spectrum.wavelength * u.AA,
            uncertainty=InverseVariance(spectrum.ivar),
            mask=spectrum.mask,
            meta=dict(spectrum.meta, id=spectrum.id),
        )

    return True
