"""Equation of state: Saha-Boltzmann ionisation and molecular equilibrium per depth (LTE).

The model atmosphere fixes temperature, gas pressure and electron density per depth; number
densities of every species follow from the abundances with the electron density held at the
model's value (so individual [X/Fe] labels change their own species' populations, not the
atmosphere; see docs/synth.md). H, C, N, O and Mg are solved together with the molecules H2,
CH, CN, C2, CO, OH, MgH and N2 by Newton iterations on ln(neutral atom density); the converged
solution is differentiated implicitly (one Newton step from the converged point: exact at convergence).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from phdl.synth.lines import AMU, K_B, K_B_EV

#: (2 pi m_e k / h^2)^(3/2) [cm^-3 K^-3/2]
SAHA_CONSTANT = 2.4146830e15
HYDROGEN_IONISATION_EV = 13.598434
HMINUS_BINDING_EV = 0.754195

#: Molecules in the equilibrium: MOOG code -> constituent atomic numbers.
MOLECULES: dict[float, tuple[int, ...]] = {
    101.0: (1, 1),  # H2
    106.0: (1, 6),  # CH
    607.0: (6, 7),  # CN
    606.0: (6, 6),  # C2
    608.0: (6, 8),  # CO
    108.0: (1, 8),  # OH
    112.0: (1, 12),  # MgH
    707.0: (7, 7),  # N2
}
MOLECULAR_ELEMENTS: tuple[int, ...] = (1, 6, 7, 8, 12)
NEWTON_ITERATIONS = 25

#: Partition function: (species code, temperature tensor) -> tensor.
PartitionFunction = Callable[[float, torch.Tensor], torch.Tensor]
#: Batched partition functions of atoms: (species codes, temperature (D,)) -> (codes, D).
PartitionFunctions = Callable[[Sequence[float], torch.Tensor], torch.Tensor]
#: Molecular dissociation constant K_p = p_A p_B / p_AB [dyn cm^-2]: (code, T) -> tensor.
DissociationConstant = Callable[[float, torch.Tensor], torch.Tensor]


def ionisation_ratios(
    temperature: torch.Tensor,
    electron_density: torch.Tensor,
    partition: Sequence[torch.Tensor],
    chi_ev: Sequence[float],
) -> list[torch.Tensor]:
    """Saha ratios N_{j+1}/N_j per depth for consecutive stages, given U_j(T) and chi_j [eV]."""
    ratios = []
    thermal = SAHA_CONSTANT * temperature**1.5 / electron_density
    for j, chi in enumerate(chi_ev):
        ratios.append(
            2.0
            * partition[j + 1]
            / partition[j]
            * thermal
            * torch.exp(-chi / (K_B_EV * temperature))
        )
    return ratios


def stage_fractions(ratios: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Fractions of an element in each ionisation stage from the Saha ratios."""
    terms = [torch.ones_like(ratios[0])]
    for r in ratios:
        terms.append(terms[-1] * r)
    total = sum(terms)
    return [t / total for t in terms]


def molecular_equilibrium(
    temperature: torch.Tensor,
    nuclei: dict[int, torch.Tensor],
    atomic_factor: dict[int, torch.Tensor],
    dissociation: DissociationConstant,
    iterations: int = NEWTON_ITERATIONS,
) -> tuple[dict[int, torch.Tensor], dict[float, torch.Tensor]]:
    """Neutral atom and molecule densities [cm^-3] conserving nuclei of H, C, N, O, Mg.

    `atomic_factor[Z]` = (all atomic stages) / (neutral) from Saha, so the atomic part of
    element Z is n_Z0 * atomic_factor[Z]; each molecule AB has n_AB = n_A n_B / K_n(T) with
    K_n = K_p / (k T). Newton in ln n_Z0, batched over depth.
    """
    elements = list(MOLECULAR_ELEMENTS)
    index = {z: i for i, z in enumerate(elements)}
    kt = K_B * temperature
    ln_k = {code: torch.log(dissociation(code, temperature) / kt) for code in MOLECULES}
    total = torch.stack([nuclei[z] for z in elements], dim=-1)  # (D, E)
    factor = torch.stack([atomic_factor[z] for z in elements], dim=-1)
    # stoichiometry: molecules x elements
    nu = torch.zeros(
        len(MOLECULES), len(elements), dtype=temperature.dtype, device=temperature.device
    )
    for m, parts in enumerate(MOLECULES.values()):
        for z in parts:
            nu[m, index[z]] += 1.0
    ln_k_all = torch.stack(list(ln_k.values()), dim=-1)  # (D, M)

    def newton_step(ln_n, total, factor, ln_k_all):
        atoms = torch.exp(ln_n) * factor
        n_mol = torch.exp(ln_n @ nu.T - ln_k_all)  # (D, M)
        conserved = atoms + n_mol @ nu
        jac = torch.diag_embed(atoms) + torch.einsum("dm,mi,mj->dij", n_mol, nu, nu)
        # residual in ln: ln(conserved) - ln(total); Jacobian d ln(conserved)/d ln n
        residual = torch.log(conserved) - torch.log(total)
        jac_ln = jac / conserved[..., :, None]
        return torch.linalg.solve(jac_ln, residual[..., None])[..., 0]

    # Iterate on detached values, then take one differentiable Newton step from the converged
    # point: its derivative is the implicit-function derivative -J^-1 dr/dp (exact at
    # convergence), so autograd and forward mode see one step instead of the whole iteration.
    fixed = (total.detach(), factor.detach(), ln_k_all.detach())
    ln_n = torch.log(fixed[0] / fixed[1])  # no molecules: the starting guess
    for _ in range(iterations):
        step = newton_step(ln_n, *fixed)
        ln_n = ln_n - step.clamp(-5.0, 5.0)
        if float(step.abs().max()) < 1e-13:
            break
    ln_n = ln_n - newton_step(ln_n, total, factor, ln_k_all)
    neutral = {z: torch.exp(ln_n[..., index[z]]) for z in elements}
    molecules = {
        code: torch.exp(sum(ln_n[..., index[z]] for z in parts) - ln_k[code])
        for code, parts in MOLECULES.items()
    }
    return neutral, molecules


def depth_state(
    atmosphere: dict[str, torch.Tensor],
    log_abundance: dict[int, torch.Tensor],
    masses_amu: dict[int, float],
    ionisation_ev: dict[int, tuple[float, ...]],
    partition_function: PartitionFunction,
    dissociation: DissociationConstant,
    species: Sequence[float],
    vmic_kms: torch.Tensor,
    partition_functions: PartitionFunctions | None = None,
) -> dict[str, torch.Tensor]:
    """Everything the opacities need per depth, as a dict of tensors (a torch.func pytree).

    atmosphere: temperature [K], gas_pressure [dyn cm^-2], electron_density [cm^-3],
    column_mass [g cm^-2], each (D,). log_abundance: A(X) = log10(N_X/N_H) + 12 per Z.
    species: MOOG codes whose ln(N/U) populations the line list needs, in order.
    partition_functions: optional batched U (codes, T) -> (len(codes), D) for atoms.
    """
    temperature = atmosphere["temperature"]
    pressure = atmosphere["gas_pressure"]
    ne = atmosphere["electron_density"]
    n_particles = pressure / (K_B * temperature)
    eps = {z: torch.pow(10.0, a - 12.0) for z, a in log_abundance.items()}
    eps_sum = sum(eps.values())
    n_h_total = (n_particles - ne) / eps_sum
    rho = n_h_total * AMU * sum(eps[z] * masses_amu[z] for z in eps)
    nuclei = {z: eps[z] * n_h_total for z in eps}

    # hydrogen: U = 2 (neutral), 1 (ion)
    h_u = [torch.full_like(temperature, 2.0), torch.ones_like(temperature)]
    h_frac = stage_fractions(ionisation_ratios(temperature, ne, h_u, (HYDROGEN_IONISATION_EV,)))
    # every other element at once, stages I-III: (E, 3, D) (few large ops instead of ~10^3
    # small ones, which matters most for the forward-mode Jacobian)
    elements = [z for z in eps if z != 1]
    row = {z: e for e, z in enumerate(elements)}
    codes = [z + 0.1 * j for z in elements for j in range(3)]
    if partition_functions is not None:
        u_all = partition_functions(codes, temperature)
    else:
        u_all = torch.stack([partition_function(c, temperature) for c in codes])
    u_all = u_all.reshape(len(elements), 3, -1)
    chi = torch.tensor(
        [ionisation_ev[z][:2] for z in elements], dtype=temperature.dtype, device=temperature.device
    )[:, :, None]
    thermal = SAHA_CONSTANT * temperature**1.5 / ne
    ratios = 2.0 * u_all[:, 1:] / u_all[:, :-1] * thermal * torch.exp(-chi / (K_B_EV * temperature))
    first = ratios[:, 0]
    terms = torch.stack([torch.ones_like(first), first, first * ratios[:, 1]], dim=1)
    frac = terms / terms.sum(dim=1, keepdim=True)  # (E, 3, D)

    atomic_factor = {
        z: 1.0 / (h_frac[0] if z == 1 else frac[row[z], 0]) for z in MOLECULAR_ELEMENTS if z in eps
    }
    neutral, molecules = molecular_equilibrium(
        temperature, {z: nuclei[z] for z in atomic_factor}, atomic_factor, dissociation
    )
    n0 = torch.stack(
        [neutral[z] if z in neutral else nuclei[z] * frac[e, 0] for e, z in enumerate(elements)]
    )
    ln_atomic = torch.log(n0[:, None] * frac / frac[:, :1]) - torch.log(u_all)  # (E, 3, D)
    h_n0 = neutral[1] if 1 in neutral else nuclei[1] * h_frac[0]
    density: dict[float, torch.Tensor] = {
        1.0: h_n0 * h_frac[0] / h_frac[0],
        1.1: h_n0 * h_frac[1] / h_frac[0],
    }
    density.update(molecules)

    # ln(N/U) of the line species, in order: atoms gathered from (E, 3, D), the rest one by one
    rows, atom_rows, atom_pos = [], [], []
    for k, code in enumerate(species):
        z = int(round(code)) if code < 100 else None
        if z in row:
            atom_rows.append(3 * row[z] + int(round((code - z) * 10)))
            atom_pos.append(k)
            continue
        if code not in density:
            raise KeyError(f"phdl.synth: no number density for species {code} (not in the EOS)")
        u = h_u[int(round((code - 1) * 10))] if z == 1 else partition_function(code, temperature)
        rows.append((k, torch.log(density[code]) - torch.log(u)))
    flat = ln_atomic.reshape(3 * len(elements), -1)
    pieces = [flat[torch.tensor(atom_rows, dtype=torch.long, device=flat.device)]]
    pieces += [r[None] for _, r in rows]
    order = torch.tensor(atom_pos + [k for k, _ in rows], dtype=torch.long, device=flat.device)
    ln_population = torch.cat(pieces)[torch.argsort(order)]

    n_hi = density[1.0]
    hminus = (
        n_hi
        * ne
        / (4.0 * SAHA_CONSTANT * temperature**1.5)
        * torch.exp(HMINUS_BINDING_EV / (K_B_EV * temperature))
    )
    metal_neutral = {z: n0[row[z]] / u_all[row[z], 0] for z in (6, 12, 13, 14, 20, 26) if z in row}
    return {
        "temperature": temperature,
        "column_mass": atmosphere["column_mass"],
        "rho": rho,
        "electron_density": ne,
        "n_hi": n_hi,
        "n_hii": density[1.1],
        "n_hminus": hminus,
        "n_h2": density[101.0],
        "n_hei": n0[row[2]] if 2 in row else torch.zeros_like(temperature),
        "ln_population": ln_population,
        "metal_neutral_over_u": torch.stack(
            [metal_neutral.get(z, torch.zeros_like(temperature)) for z in (6, 12, 13, 14, 20, 26)]
        ),
        "vmic": vmic_kms * 1e5,
    }


def molecular_kp_from_constants(
    d0_ev: float,
    mass_a: float,
    mass_b: float,
    u_a: float,
    u_b: float,
    b_cm: float,
    omega_cm: float,
    symmetry: int,
    g_el: float,
    temperature: torch.Tensor,
) -> torch.Tensor:
    """K_p [dyn cm^-2] from dissociation energy and rigid-rotor/harmonic constants (fallback)."""
    hc_k = 1.4387769  # cm K
    mu = mass_a * mass_b / (mass_a + mass_b) * AMU
    translational = (2.0 * math.pi * mu * K_B * temperature / 6.62607015e-27**2) ** 1.5
    u_mol = (
        g_el
        * temperature
        / (symmetry * hc_k * b_cm)
        / (-torch.expm1(-hc_k * omega_cm / temperature))
    )
    k_n = u_a * u_b / u_mol * translational * torch.exp(-d0_ev / (K_B_EV * temperature))
    return k_n * K_B * temperature
