"""Input data of phdl.synth: Kurucz atmospheres, atomic constants, line list (all shipped files)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from phdl.synth import atomic
from phdl.synth.atmosphere import Atmosphere, KuruczGrid
from phdl.synth.linelist import FLAG_MOLECULE, FLAG_VDW_UNSOLD, LineList, load_linelist

BENCHMARKS = Path(
    os.environ.get(
        "PHDL_SYNTH_BENCHMARKS",
        Path(__file__).resolve().parents[2] / "shared/reference/synth-benchmarks",
    )
)


@pytest.fixture(scope="module")
def grid() -> KuruczGrid:
    return KuruczGrid.load()


@pytest.fixture(scope="module")
def lines() -> LineList:
    return load_linelist()


# --------------------------------------------------------------------------- atmospheres
def test_grid_covers_the_requested_box(grid: KuruczGrid) -> None:
    assert grid.ranges() == {
        "teff": (3500.0, 8000.0),
        "logg": (0.0, 5.0),
        "m_h": (-2.5, 0.5),
        "alpha_m": (0.0, 0.4),
    }
    assert int(grid.present.sum()) == 2786
    assert torch.allclose(
        grid.log_tau_ross[[0, -1]], torch.tensor([-6.875, 2.0], dtype=torch.float64)
    )


def test_interpolation_reproduces_a_node(grid: KuruczGrid) -> None:
    node = grid.node(5750.0, 4.5, 0.0, 0.0)
    interp = grid.interpolate(5750.0, 4.5, 0.0, 0.0)
    for name in ("temperature", "gas_pressure", "electron_density", "column_mass"):
        assert torch.allclose(getattr(interp, name), getattr(node, name), rtol=1e-12, atol=0)
    # Sun-like structure: T(tau_R = 1) near 6300 K, monotonic column mass, positive kappa_Ross
    t_tau1 = float(interp.temperature[torch.argmin(interp.log_tau_ross.abs())])
    assert 5900 < t_tau1 < 6700
    assert torch.all(torch.diff(interp.column_mass) > 0)
    assert torch.all(interp.kappa_ross > 0) and torch.all(torch.isfinite(interp.kappa_ross))


@pytest.mark.parametrize(
    ("axis", "lo", "hi", "tol"),
    [
        ("teff", 5500.0, 6000.0, (30.0, 0.05, 0.03)),
        ("logg", 4.0, 5.0, (20.0, 0.01, 0.015)),
        ("m_h", -0.5, 0.5, (50.0, 0.04, 0.05)),
    ],
)
def test_leave_one_out_solar_neighbourhood(grid: KuruczGrid, axis, lo, hi, tol) -> None:
    """The 5750/4.5/0.0 model left out and interpolated from its neighbours (2x the grid step)."""
    labels = {"teff": 5750.0, "logg": 4.5, "m_h": 0.0, "alpha_m": 0.0}
    true = grid.node(**labels)
    a, b = grid.node(**{**labels, axis: lo}), grid.node(**{**labels, axis: hi})
    depth = (true.log_tau_ross >= -5.0) & (true.log_tau_ross <= 1.0)
    log_t = 0.5 * (a.temperature.log10() + b.temperature.log10())
    log_p = 0.5 * (a.gas_pressure.log10() + b.gas_pressure.log10())
    log_ne = 0.5 * (a.electron_density.log10() + b.electron_density.log10())
    assert float((10**log_t - true.temperature)[depth].abs().max()) < tol[0]
    assert float((log_p - true.gas_pressure.log10())[depth].abs().max()) < tol[1]
    assert float((log_ne - true.electron_density.log10())[depth].abs().max()) < tol[2]


@pytest.mark.skipif(
    not (BENCHMARKS / "turbospectrum2019-COM-v19.1/models/kurucz-sun.mod").exists(),
    reason=f"no Turbospectrum benchmark models under {BENCHMARKS}",
)
def test_interpolation_matches_an_independent_solar_model(grid: KuruczGrid) -> None:
    """Castelli's 5772/4.438 model (Asplund 2009 abundances, off-node) vs our interpolation."""
    text = (BENCHMARKS / "turbospectrum2019-COM-v19.1/models/kurucz-sun.mod").read_text()
    rows = text.split("\n")
    head = next(i for i, r in enumerate(rows) if r.startswith("READ DECK6"))
    cols = ((0, 15), (15, 24), (24, 34), (34, 44))
    deck = np.array([[float(r[a:b]) for a, b in cols] for r in rows[head + 1 : head + 73]])
    atm = grid.interpolate(5772.0, 4.438, 0.0, 0.0)
    depth = ((atm.log_tau_ross >= -5.0) & (atm.log_tau_ross <= 1.0)).numpy()
    assert np.abs(atm.temperature.numpy() - deck[:, 1])[depth].max() < 40.0  # measured 26 K
    assert np.abs(np.log10(atm.gas_pressure.numpy() / deck[:, 2]))[depth].max() < 0.05  # 0.031
    assert np.abs(np.log10(atm.electron_density.numpy() / deck[:, 3]))[depth].max() < 0.03


def test_autograd_flows_through_every_label(grid: KuruczGrid) -> None:
    labels = [
        torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (5777.0, 4.44, -0.1, 0.1)
    ]
    atm = grid.interpolate(*labels)
    atm.temperature[40].backward(retain_graph=True)
    d_t_d_teff = labels[0].grad
    assert torch.isfinite(d_t_d_teff) and 0.3 < float(d_t_d_teff) < 1.5
    for x in labels:
        x.grad = None
    atm.gas_pressure.log10()[40].backward()
    assert all(torch.isfinite(x.grad) for x in labels)
    assert float(labels[1].grad) > 0.3  # log P ~ 0.5-0.7 log g in the photosphere
    assert float(labels[2].grad) != 0.0 and float(labels[3].grad) != 0.0


def test_cubic_is_exact_at_nodes_and_has_continuous_derivatives(grid: KuruczGrid) -> None:
    node = grid.node(5750.0, 4.5, 0.0, 0.0)
    cubic = grid.interpolate(5750.0, 4.5, 0.0, 0.0, method="cubic")
    assert torch.allclose(cubic.temperature, node.temperature, rtol=1e-12, atol=0)
    slopes = {}
    for method in ("linear", "cubic"):
        for side in (-1e-3, 1e-3):
            teff = torch.tensor(5750.0 + side, dtype=torch.float64, requires_grad=True)
            atm = grid.interpolate(teff, 4.5, 0.0, 0.0, method=method)
            (slopes[method, side],) = torch.autograd.grad(atm.temperature[45], teff)
    assert abs(float(slopes["cubic", -1e-3] - slopes["cubic", 1e-3])) < 1e-5
    assert abs(float(slopes["linear", -1e-3] - slopes["linear", 1e-3])) > 1e-3
    # between nodes the two schemes agree to the leave-one-out level; the hot corner falls back
    mid_l = grid.interpolate(5625.0, 4.25, -0.25, 0.2)
    mid_c = grid.interpolate(5625.0, 4.25, -0.25, 0.2, method="cubic")
    assert float((mid_l.temperature - mid_c.temperature)[15:64].abs().max()) < 30.0
    hot_l = grid.interpolate(7800.0, 1.2, 0.0, 0.0)
    hot_c = grid.interpolate(7800.0, 1.2, 0.0, 0.0, method="cubic")
    assert torch.equal(hot_l.temperature, hot_c.temperature)
    with pytest.raises(ValueError, match="method must be"):
        grid.interpolate(5000.0, 4.0, 0.0, 0.0, method="spline")


def test_torch_func_jacobians(grid: KuruczGrid) -> None:
    """phdl.synth takes the labels -> state Jacobian with torch.func.jacfwd: it must trace."""
    theta = torch.tensor([5777.0, 4.44, -0.1, 0.1], dtype=torch.float64)
    for method in ("linear", "cubic"):
        fwd = torch.func.jacfwd(lambda t, m=method: grid.interpolate(*t, method=m).temperature)(
            theta
        )
        rev = torch.func.jacrev(lambda t, m=method: grid.interpolate(*t, method=m).temperature)(
            theta
        )
        assert fwd.shape == (72, 4) and torch.allclose(fwd, rev)
    temp = torch.tensor([4500.0, 6000.0], dtype=torch.float64)
    for code in (26.0, 607.0):
        jac = torch.func.jacfwd(lambda t, c=code: atomic.partition_function(c, t))(temp)
        assert torch.all(torch.diagonal(jac) > 0)


def test_batched_interpolation_matches_single_calls(grid: KuruczGrid) -> None:
    teff = torch.tensor([4321.0, 6543.0])
    logg = torch.tensor([2.1, 4.2])
    batch = grid.interpolate(teff, logg, torch.tensor(-0.7), torch.tensor(0.3))
    assert isinstance(batch, Atmosphere) and batch.temperature.shape == (2, 72)
    assert set(batch.as_dict()) >= {
        "temperature",
        "gas_pressure",
        "electron_density",
        "column_mass",
    }
    assert batch.temperature.dtype == torch.float32
    for k in range(2):
        one = grid.interpolate(float(teff[k]), float(logg[k]), -0.7, 0.3)
        assert torch.allclose(batch.temperature[k].double(), one.temperature, rtol=1e-6)


def test_out_of_range_errors_name_the_label(grid: KuruczGrid) -> None:
    with pytest.raises(
        ValueError, match=r"teff=9000 K is outside the Kurucz grid range \[3500, 8000\]"
    ):
        grid.interpolate(9000.0, 4.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"m_h=-3 dex is outside .* \[-2.5, 0.5\]"):
        grid.interpolate(5000.0, 4.0, -3.0, 0.0)
    with pytest.raises(ValueError, match="logg=0.5.*does not exist"):
        grid.interpolate(7900.0, 0.7, 0.0, 0.0)


# --------------------------------------------------------------------------- atomic data
def test_partition_functions_match_known_values() -> None:
    t = torch.tensor([5000.0, 6000.0], dtype=torch.float64)
    assert torch.allclose(
        atomic.partition_function(1.0, t), torch.tensor(2.0, dtype=torch.float64), atol=1e-3
    )
    assert torch.allclose(atomic.partition_function(1.1, t), torch.tensor(1.0, dtype=torch.float64))
    u_fe = atomic.partition_function(26.0, t)
    assert (
        25.5 < float(u_fe[0]) < 29.5 and 30.0 < float(u_fe[1]) < 33.0
    )  # Gray / Irwin ~27.4, ~31.4
    assert 40.0 < float(atomic.partition_function(26.1, 5000.0)) < 46.0
    assert 1.1 < float(atomic.partition_function(20.0, 5000.0)) < 1.3
    assert 2.0 < float(atomic.partition_function(11.0, 6000.0)) < 2.4
    assert 28.0 < float(atomic.partition_function(22.0, 5000.0)) < 32.0
    temp = torch.tensor(5500.0, dtype=torch.float64, requires_grad=True)
    atomic.partition_function(26.0, temp).backward()
    assert torch.isfinite(temp.grad) and float(temp.grad) > 0
    with pytest.raises(ValueError, match="stages 0, 1, 2"):
        atomic.partition_function(26.3, 5000.0)


def _irwin_table(name: str) -> dict[float, np.ndarray]:
    """Turbospectrum's Irwin-form fits ln U = sum a_i (ln T)^i, keyed by species code."""
    table = {}
    for line in (BENCHMARKS / "turbospectrum2019-COM-v19.1/DATA" / name).read_text().split("\n"):
        if line[:1] in "#*" or "'" not in line:
            continue
        parts = line.split("'")
        if name.startswith("IRWIN_atoms"):  # id code 'name' IP n a_0..a_n-1
            code, fields = round(float(parts[0].split()[1]), 2), parts[2].split()
        else:  # id 'code' 'name' -D0 n a_0..a_n-1 constituents
            code, fields = round(float(parts[1]), 2), parts[4].split()
        n = int(fields[1])
        coef = np.array([float(x.lower().replace("d", "e")) for x in fields[2 : 2 + n]])
        table.setdefault(code, coef)
    return table


@pytest.mark.skipif(
    not (BENCHMARKS / "turbospectrum2019-COM-v19.1/DATA/IRWIN_atoms_v07.3.dat").exists(),
    reason=f"no Turbospectrum DATA under {BENCHMARKS}",
)
def test_partition_functions_agree_with_irwin() -> None:
    """MOOG-derived U(T) vs Turbospectrum's Irwin (1981) / Sauval & Tatum fits, 3500-8000 K."""
    temp = np.linspace(3500.0, 8000.0, 10)
    atoms = _irwin_table("IRWIN_atoms_v07.3.dat")
    for code in (6.0, 8.0, 12.0, 14.0, 20.0, 20.1, 22.0, 22.1, 24.0, 26.0, 26.1, 28.0, 56.1):
        key = round(int(code) + round((code % 1) * 10) / 100, 2)
        irwin = sum(a * np.log(temp) ** i for i, a in enumerate(atoms[key])) / np.log(10)
        ours = atomic.log10_partition_function(code, torch.tensor(temp)).numpy()
        assert np.abs(ours - irwin).max() < 0.03, code
    molecules = _irwin_table("IRWIN_molecules_v15.1.dat")
    for code, tol in ((106.0, 0.02), (108.0, 0.03), (112.0, 0.02), (608.0, 0.04), (607.0, 0.08)):
        irwin = sum(a * np.log(temp) ** i for i, a in enumerate(molecules[code])) / np.log(10)
        ours = atomic.log10_partition_function(code, torch.tensor(temp)).numpy()
        assert np.abs(ours - irwin).max() < tol, code


def test_abundances_masses_ionisation_and_symbols() -> None:
    assert atomic.solar_log_eps(26) == pytest.approx(7.50)
    assert atomic.solar_log_eps(6) == pytest.approx(8.43)
    assert atomic.atomic_mass(26) == pytest.approx(55.85)
    assert atomic.ionisation_energy(1, 0) == pytest.approx(13.60)
    assert atomic.ionisation_energy(26, 0) == pytest.approx(7.902)
    assert atomic.ionisation_energy(26, 1) == pytest.approx(16.19)
    assert atomic.symbol_to_z("fe") == 26 and atomic.z_to_symbol(56) == "Ba"
    assert all(atomic.symbol_to_z(atomic.z_to_symbol(z)) == z for z in range(1, 93))
    assert atomic.parse_species(26.1) == ((26,), 1) and atomic.parse_species(607.0) == ((6, 7), 0)
    assert atomic.ionisation_energies()[26][:2] == (7.902, 16.19)
    assert atomic.solar_abundances()[8] == pytest.approx(8.69)
    assert atomic.atomic_masses()[12] == pytest.approx(24.31)


def test_molecular_constants_follow_moog() -> None:
    assert atomic.dissociation_energy(608) == pytest.approx(11.092)
    assert atomic.dissociation_energy(106) == pytest.approx(3.465)
    t = 5000.0
    lt = np.log10(5040.0 / t)
    coef = (13.2412, -0.8502, -0.0724, -0.2098, -0.2096)  # CO, Bmolec.f
    expected = sum(c * lt**j for j, c in enumerate(coef)) - 11.092 * 5040.0 / t
    assert float(atomic.molecular_log10_kp(608.0, t)) == pytest.approx(expected, abs=1e-9)
    for code in (101, 106, 108, 112, 606, 607, 608, 707, 822):
        kp = atomic.molecular_log10_kp(code, torch.tensor([3000.0, 5000.0, 8000.0]))
        assert torch.all(torch.diff(kp) > 0), code  # molecules dissociate as T rises


@pytest.mark.parametrize(
    ("code", "mu"), [(106, 12 * 1.007825 / 13.007825), (607, 12 * 14.003074 / 26.003074)]
)
def test_molecular_partition_function_reproduces_moog_line_populations(
    code: int, mu: float
) -> None:
    """n_AB / U_AB from the K_p equilibrium equals MOOG's Nearly.f population factor."""
    t = torch.tensor([4000.0, 5500.0], dtype=torch.float64)
    theta = 5040.0 / t
    (za, zb), _ = atomic.parse_species(float(code))
    u_a, u_b = atomic.partition_function(float(za), t), atomic.partition_function(float(zb), t)
    moog = 1.38054e-16 * t * 10 ** (atomic.LINELIST_D0_EV[code] * theta - 13.670) * theta**2.5
    moog = moog / (mu**1.5 * u_a * u_b)
    ours = (
        1.380649e-16 * t / atomic.molecular_kp(code, t) / atomic.partition_function(float(code), t)
    )
    assert torch.allclose(ours, moog, rtol=1e-3)
    assert torch.all(atomic.partition_function(float(code), t) > 100)


# --------------------------------------------------------------------------- line list
def test_linelist_sanity(lines: LineList) -> None:
    assert np.all(np.diff(lines.wavelength_vacuum) >= 0)
    assert lines.wavelength_vacuum.min() >= 3600.0 and lines.wavelength_vacuum.max() <= 9200.0
    shift = lines.wavelength_vacuum - lines.wavelength_air
    assert np.all((shift > 0.9) & (shift < 2.6))  # air -> vacuum at 3600-9200 A
    n_mol = int(lines.is_molecule.sum())
    assert 50_000 < len(lines) - n_mol < 58_000 and 55_000 < n_mol < 68_000
    assert set(np.unique(lines.molecule)) == {0, 106, 112, 606, 607}
    atoms = ~lines.is_molecule
    assert np.all(lines.element[atoms] > 1) and np.all(lines.ion[atoms] <= 1)
    assert np.all(lines.flags[lines.is_molecule] & FLAG_MOLECULE)
    assert np.all(np.isfinite(lines.log_gamma_vdw)) and np.all(lines.gamma_rad > 0)


def test_spurious_ch_lines_removed(lines: LineList) -> None:
    ch = lines.molecule == 106
    assert ch.sum() > 500
    assert lines.log_gf[ch].max() <= -0.5
    near = lines.select(5137.0, 5137.2)  # air 5135.621 (log gf +0.73) -> vacuum 5137.05
    assert not np.any((near.molecule == 106) & (near.log_gf > -1))


def test_strong_lines_have_barklem_damping(lines: LineList) -> None:
    for w_air, species in ((5172.684, 12.0), (5183.604, 12.0), (8542.091, 20.1), (5889.951, 11.0)):
        k = int(np.argmin(np.abs(lines.wavelength_air - w_air)))
        assert abs(lines.wavelength_air[k] - w_air) < 1e-3 and lines.species[k] == species
        assert not lines.flags[k] & FLAG_VDW_UNSOLD
        assert -8.0 < lines.log_gamma_vdw[k] < -7.0 and 0.2 < lines.vdw_alpha[k] < 0.3
    k = int(np.argmin(np.abs(lines.wavelength_air - 5183.604)))
    assert lines.vdw_sigma[k] / 2.8003e-17 == pytest.approx(729.0, abs=2.0)  # Barklem et al. 2000
    assert np.all(lines.vdw_sigma[lines.flags & FLAG_VDW_UNSOLD > 0] == 0)


def test_select_and_strength_cut(lines: LineList) -> None:
    codes, index = lines.species_index()
    assert np.allclose(np.asarray(codes)[index], np.round(lines.species, 1))
    assert 26.0 in codes and 607.0 in codes and 3.0 in codes
    window = lines.select(5000.0, 5100.0)
    assert len(window) > 0 and window.wavelength_vacuum.min() >= 5000.0
    assert window.wavelength_vacuum.max() <= 5100.0
    strong = load_linelist(min_log_strength=1.0)
    assert len(strong) < len(lines) and strong.log_strength.min() > 1.0
    with pytest.raises(ValueError, match="rebuild"):
        load_linelist(min_log_strength=-4.0)
