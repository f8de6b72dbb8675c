"""The shipped input data (Kurucz atmospheres, MOOG atomic data, linemake lines) as SynthInputs.

Adapts phdl.synth.atmosphere / atomic / linelist (docs/synth_data.md) to what the physics
modules take, in one place, so the physics can also run on other inputs (tests use a stand-in).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from phdl.synth.eos import MOLECULES
from phdl.synth.lines import AMU, LineData
from phdl.synth.spectrum import SynthInputs

#: Elements always in the EOS (mass, electrons, molecules, continuum edges) besides line species.
BASE_ELEMENTS = (1, 2, 6, 7, 8, 10, 11, 12, 13, 14, 16, 19, 20, 26)


def _species_code(element: np.ndarray, ion: np.ndarray, molecule: np.ndarray) -> np.ndarray:
    return np.where(molecule > 0, molecule.astype(np.float64), element + 0.1 * ion)


@functools.lru_cache(maxsize=4)
def default_inputs(min_log_strength: float = 0.2) -> SynthInputs:
    """Kurucz ODFNEW atmospheres, Asplund 2009 abundances, MOOG U(T) and K_p, linemake lines."""
    from phdl.synth import atomic
    from phdl.synth.atmosphere import KuruczGrid
    from phdl.synth.linelist import load_linelist

    grid = KuruczGrid.load()
    raw = load_linelist(min_log_strength=min_log_strength)
    codes = _species_code(raw.element, raw.ion, raw.molecule)
    known = np.isin(codes.round(1), [float(c) for c in MOLECULES]) | (raw.molecule == 0)
    raw = raw.subset(known)
    codes = codes[known].round(1)
    species = tuple(float(c) for c in np.unique(codes))
    index = np.searchsorted(np.array(species), codes)

    def t(values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.float64))

    lines = LineData(
        wavelength=t(raw.wavelength_vacuum),
        species_index=torch.as_tensor(index, dtype=torch.long),
        chi_lower=t(raw.chi_lower),
        log_gf=t(raw.log_gf),
        mass=t(raw.mass_amu) * AMU,
        gamma_rad=t(raw.gamma_rad),
        log_gamma_stark=t(raw.log_gamma_stark),
        vdw_sigma=t(raw.vdw_sigma),
        vdw_alpha=t(raw.vdw_alpha),
        log_gamma_vdw=t(raw.log_gamma_vdw),
    )
    elements = sorted(set(BASE_ELEMENTS) | {int(c) for c in species if c < 100})
    elements = [z for z in elements if atomic.solar_log_eps(z) > -4.9 or z == 1]

    def atmosphere(teff, logg, m_h, alpha_m) -> dict[str, torch.Tensor]:
        return grid.interpolate(teff, logg, m_h, alpha_m).as_dict()

    def partition_function(code: float, temperature: torch.Tensor) -> torch.Tensor:
        if code >= 100:
            return 10.0 ** atomic.molecular_log10_partition_function(code, temperature)
        return atomic.partition_function(code, temperature)

    def partition_functions(codes, temperature: torch.Tensor) -> torch.Tensor:
        """U(T) of atoms/ions (codes Z.stage), (codes, D): atomic.partition_function, batched."""
        ln_grid, table = atomic._log_u_table(str(temperature.device), temperature.dtype)
        z = torch.tensor([int(round(c)) - 1 for c in codes], device=temperature.device)
        stage = torch.tensor([int(round((c - round(c)) * 10)) for c in codes], device=z.device)
        y = table[z, stage]  # (C, G) log10 U on the ln T grid
        x = torch.clamp(torch.log(temperature), float(ln_grid[0]), float(ln_grid[-1]))
        i = torch.clamp(torch.searchsorted(ln_grid, x.detach()), 1, len(ln_grid) - 1)
        x0, x1 = ln_grid[i - 1], ln_grid[i]
        return 10.0 ** (y[:, i - 1] + (y[:, i] - y[:, i - 1]) * (x - x0) / (x1 - x0))

    def dissociation(code: float, temperature: torch.Tensor) -> torch.Tensor:
        return atomic.molecular_kp(code, temperature)

    return SynthInputs(
        atmosphere=atmosphere,
        solar_abundance={z: (12.0 if z == 1 else atomic.solar_log_eps(z)) for z in elements},
        masses_amu={z: atomic.atomic_mass(z) for z in elements},
        ionisation_ev={
            z: (atomic.ionisation_energy(z, 0), atomic.ionisation_energy(z, 1)) for z in elements
        },
        partition_function=partition_function,
        partition_functions=partition_functions,
        dissociation=dissociation,
        lines=lines,
        species=species,
        description=f"Kurucz ODFNEW + MOOG atomic data + linemake ({len(raw)} lines)",
    )
