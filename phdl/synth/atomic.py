"""Atomic and molecular constants for phdl.synth, from MOOG's source data (Sneden et al.; MIT).

- Solar abundances log eps (Asplund et al. 2009, ARA&A 47, 481), atomic masses [amu], ionisation
  energies [eV] (MOOG's Batom.f: NIST / CRC values).
- Partition functions U(T) of stages I, II, III for Z = 1..95, tabulated on 256 log-spaced
  temperatures 1000-20000 K from MOOG's own recipe (ATLAS9's packed Kurucz data, replaced by
  MOOG's Irwin-form polynomial fits for Cr II, Rb I, Mo II and several rare earths), interpolated
  linearly in log T of log U (differentiable; clamped outside the table).
- Molecular equilibrium constants K_p(T) and dissociation energies D0 (MOOG's Bmolec.f: fits to
  the Phoenix/NextGen equation of state, 1500 < T < 10000 K), and the molecular partition
  functions those K_p imply (so that n_mol / U_mol is MOOG's molecular-line population).

Species codes follow MOOG: Z + stage/10 for atoms (26.0 = Fe I, 26.1 = Fe II), and the atomic
numbers of the constituents, smallest first, for molecules (106.0 = CH, 607.0 = CN, 606.0 = C2,
112.0 = MgH, 822.0 = TiO, 608.0 = CO, 101.0 = H2, 108.0 = OH, 707.0 = N2, 10108.0 = H2O).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATA_FILE = Path(__file__).resolve().parent / "data" / "atomic.npz"

#: Diatomic and triatomic molecules phdl.synth needs, by MOOG code: constituents and a name.
MOLECULES: dict[int, tuple[tuple[int, ...], str]] = {
    101: ((1, 1), "H2"),
    106: ((1, 6), "CH"),
    107: ((1, 7), "NH"),
    108: ((1, 8), "OH"),
    112: ((1, 12), "MgH"),
    606: ((6, 6), "C2"),
    607: ((6, 7), "CN"),
    608: ((6, 8), "CO"),
    707: ((7, 7), "N2"),
    708: ((7, 8), "NO"),
    808: ((8, 8), "O2"),
    822: ((8, 22), "TiO"),
    10108: ((1, 1, 8), "H2O"),
    60808: ((6, 8, 8), "CO2"),
}


@lru_cache(maxsize=1)
def _tables() -> dict[str, np.ndarray]:
    """Load the shipped npz once."""
    if not DATA_FILE.exists():
        raise FileNotFoundError(
            f"{DATA_FILE}: atomic data missing; run scripts/build_synth_data.py"
        )
    with np.load(DATA_FILE) as d:
        return {k: d[k] for k in d.files}


def _check_z(z: int) -> int:
    """Validate an atomic number against the tables."""
    n = len(_tables()["symbols"])
    if not 1 <= int(z) <= n:
        raise ValueError(f"atomic number {z} outside 1..{n}")
    return int(z)


def z_to_symbol(z: int) -> str:
    """Element symbol for atomic number z (e.g. 26 -> 'Fe')."""
    sym = str(_tables()["symbols"][_check_z(z) - 1])
    return "W" if sym == "Wl" else sym


def symbol_to_z(symbol: str) -> int:
    """Atomic number for an element symbol, case-insensitive ('fe' -> 26)."""
    table = {z_to_symbol(z).lower(): z for z in range(1, len(_tables()["symbols"]) + 1)}
    try:
        return table[symbol.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown element symbol {symbol!r}") from None


def solar_log_eps(z: int) -> float:
    """Solar abundance log eps = log10(N_X/N_H) + 12 (Asplund et al. 2009; -5 where unknown)."""
    return float(_tables()["solar_log_eps"][_check_z(z) - 1])


def atomic_mass(z: int) -> float:
    """Mean atomic mass [amu] of element z."""
    return float(_tables()["mass_amu"][_check_z(z) - 1])


def ionisation_energy(z: int, stage: int) -> float:
    """Energy [eV] to ionise stage `stage` (0 = neutral, I -> II; 1 = II -> III; 2 = III -> IV)."""
    if stage not in (0, 1, 2):
        raise ValueError(
            f"ionisation stage must be 0, 1 or 2 (as in species code Z.stage), got {stage}"
        )
    return float(_tables()["ionisation_ev"][_check_z(z) - 1, stage])


def solar_abundances() -> dict[int, float]:
    """{Z: log eps} for every tabulated element (Asplund et al. 2009)."""
    return {z: solar_log_eps(z) for z in range(1, len(_tables()["symbols"]) + 1)}


def atomic_masses() -> dict[int, float]:
    """{Z: mean atomic mass [amu]} for every tabulated element."""
    return {z: atomic_mass(z) for z in range(1, len(_tables()["symbols"]) + 1)}


def ionisation_energies() -> dict[int, tuple[float, float, float]]:
    """{Z: (chi_I, chi_II, chi_III) [eV]} for every tabulated element."""
    return {
        z: tuple(float(c) for c in _tables()["ionisation_ev"][z - 1])
        for z in range(1, len(_tables()["symbols"]) + 1)
    }


def parse_species(code: float) -> tuple[tuple[int, ...], int]:
    """Split a MOOG species code into (constituent atomic numbers, ionisation stage)."""
    head = int(math.floor(code + 1e-6))
    stage = int(round((code - head) * 10)) if head < 100 else 0
    if head < 100:
        return (head,), stage
    if head not in MOLECULES:
        raise ValueError(f"molecule code {code} unknown; known: {sorted(MOLECULES)}")
    return MOLECULES[head][0], 0


@lru_cache(maxsize=8)
def _log_u_table(device: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(ln T grid, log10 U table (Z, stage, T)) as tensors on a device."""
    t = _tables()
    return (
        torch.as_tensor(np.log(t["log_u_temperature"]), dtype=dtype, device=device),
        torch.as_tensor(t["log10_u"], dtype=dtype, device=device),
    )


def _as_float_tensor(temperature: Tensor | float) -> Tensor:
    """Temperature as a floating tensor: python numbers and integer tensors become float64."""
    if not isinstance(temperature, Tensor):
        return torch.as_tensor(temperature, dtype=torch.float64)
    return temperature if temperature.is_floating_point() else temperature.to(torch.float64)


def log10_partition_function(species: float, temperature: Tensor | float) -> Tensor:
    """log10 U(T) of a species (26.0 = Fe I, 607.0 = CN), differentiable in temperature [K].

    Atoms: the tabulated MOOG values. Molecules: the partition function implied by MOOG's K_p
    (see `molecular_log10_partition_function`).
    """
    atoms, stage = parse_species(species)
    if len(atoms) != 1:
        return molecular_log10_partition_function(species, temperature)
    if stage > 2:
        raise ValueError(f"species {species}: only stages 0, 1, 2 are tabulated")
    z = _check_z(atoms[0])
    t = _as_float_tensor(temperature)
    ln_grid, table = _log_u_table(str(t.device), t.dtype)
    y = table[z - 1, stage]
    x = torch.clamp(torch.log(t), float(ln_grid[0]), float(ln_grid[-1]))
    i = torch.clamp(torch.searchsorted(ln_grid, x.detach().reshape(-1)), 1, len(ln_grid) - 1)
    i = i.reshape(x.shape)
    x0, x1 = ln_grid[i - 1], ln_grid[i]
    return y[i - 1] + (y[i] - y[i - 1]) * (x - x0) / (x1 - x0)


def partition_function(species: float, temperature: Tensor | float) -> Tensor:
    """U(T) of a species code (26.0 = Fe I, 26.1 = Fe II, 106.0 = CH), differentiable in T [K]."""
    return 10.0 ** log10_partition_function(species, temperature)


#: D0 [eV] the linemake molecular lists carry (MOOG uses these, not Bmolec.f's, for line
#: populations; Nearly.f). Bmolec.f has CH 3.465, MgH 1.34, C2 6.21, CN 7.76.
LINELIST_D0_EV: dict[int, float] = {106: 3.464, 112: 1.34, 606: 6.24, 607: 7.724}
#: Main isotopes' masses [amu] for the molecular reduced masses (1H, 12C, 14N, 16O, 24Mg, 48Ti).
_MAIN_ISOTOPE_AMU = {1: 1.007825, 6: 12.0, 7: 14.003074, 8: 15.994915, 12: 23.985042, 22: 47.947946}
_K_B = 1.380649e-16  # erg/K
_H = 6.62607015e-27  # erg s
_AMU_G = 1.66053907e-24


def molecular_log10_partition_function(code: float, temperature: Tensor | float) -> Tensor:
    """log10 U(T) of a molecule as implied by MOOG's K_p, so that MOOG's line populations follow.

    From K_p = (kT)^(n-1) (2 pi k T / h^2)^(3/2 (n-1)) (prod m_i / M)^(3/2) prod U_i
    exp(-D0/kT) / U_mol with the neutral atoms' U_i and the main isotopologue's masses. With
    D0 = LINELIST_D0_EV for CH, MgH, C2, CN, n_mol / U_mol from the K_p equilibrium equals MOOG's
    molecular-line population (Nearly.f) exactly; for other molecules D0 cancels against K_p.
    """
    atoms = MOLECULES[int(code)][0] if int(code) in MOLECULES else parse_species(code)[0]
    t = _as_float_tensor(temperature)
    row = _molecule_row(code)
    d0 = LINELIST_D0_EV.get(int(code), float(_tables()["molecule_d0_ev"][row]))
    masses = [_MAIN_ISOTOPE_AMU.get(z, atomic_mass(z)) for z in atoms]
    mass_ratio = float(np.prod(masses) / np.sum(masses)) * _AMU_G ** (len(atoms) - 1)
    n_bonds = len(atoms) - 1
    log_translational = 1.5 * torch.log10(2.0 * math.pi * _K_B * t / _H**2) * n_bonds
    log_u_atoms = sum(log10_partition_function(float(z), t) for z in atoms)
    return (
        n_bonds * torch.log10(_K_B * t)
        + log_translational
        + 1.5 * math.log10(mass_ratio)
        + log_u_atoms
        - d0 * 5040.0 / t
        - molecular_log10_kp(code, t)
    )


def _molecule_row(code: float) -> int:
    """Row of a molecule in MOOG's equilibrium-constant table."""
    codes = _tables()["molecule_code"]
    hit = np.flatnonzero(np.isclose(codes, float(int(code))))
    if hit.size == 0:
        raise ValueError(
            f"no equilibrium constant for molecule {code}; available: {[int(c) for c in codes]}"
        )
    return int(hit[0])


def dissociation_energy(code: float) -> float:
    """Dissociation energy D0 [eV] of a molecule (MOOG's Bmolec.f)."""
    return float(_tables()["molecule_d0_ev"][_molecule_row(code)])


def molecular_kp(code: float, temperature: Tensor | float) -> Tensor:
    """K_p(T) = prod p(atoms) / p(molecule) [dyn cm^-2 per bond] (10 ** molecular_log10_kp)."""
    return 10.0 ** molecular_log10_kp(code, temperature)


def molecular_log10_kp(code: float, temperature: Tensor | float) -> Tensor:
    """log10 K_p(T) = log10(prod p(atoms) / p(molecule)) [dyn cm^-2 per bond], differentiable in T.

    MOOG's form: log10 K_p = sum_i c_i (log10 theta)^i - D0 theta, theta = 5040/T, fitted for
    1500 < T < 10000 K. Number densities follow n(AB) = n(A) n(B) kT / K_p for diatomics
    ((kT)^2 for triatomics).
    """
    row = _molecule_row(code)
    t = _as_float_tensor(temperature)
    coef = _tables()["molecule_kp_coef"][row]
    theta = 5040.0 / t
    lt = torch.log10(theta)
    poly = sum(float(c) * lt**j for j, c in enumerate(coef))
    return poly - float(_tables()["molecule_d0_ev"][row]) * theta
