"""Continuous opacity [cm^-1] per wavelength and depth (LTE, stimulated emission included).

Sources: H- bound-free (John 1988 fit to Wishart 1979), H- free-free (John 1988, lambda >
0.3645 um coefficients), H I bound-free (hydrogenic, levels n = 2..30, Gaunt factor 1) and
free-free (Gaunt 1), photoionisation of excited levels of C I, Mg I, Al I, Si I in the
hydrogenic (Kramers) approximation with effective quantum numbers, Rayleigh scattering by
H I and H2 (Dalgarno), Thomson scattering. Scattering is treated as absorption (S = B).
"""

from __future__ import annotations

import torch

from phdl.synth.lines import HC_OVER_K_ANGSTROM, K_B, K_B_EV

#: John (1988) H- bound-free coefficients C_1..C_6 (sigma in 1e-18 cm^2, lambda in um).
_HMINUS_BF = (152.519, 49.534, -118.858, 92.536, -34.194, 4.982)
_HMINUS_LAMBDA0_UM = 1.6419
#: John (1988) Table 3, lambda > 0.3645 um: rows n = 2..6 of (A, B, C, D, E, F); n = 1 is 0.
#: Checked against Bell & Berrington (1987) values (tests/test_synth_physics.py).
_HMINUS_FF = (
    (2483.346, 285.827, -2054.291, 2827.776, -1341.537, 208.952),
    (-3449.889, -1158.382, 8746.523, -11485.632, 5303.609, -812.939),
    (2200.040, 2427.719, -13651.105, 16755.524, -7510.494, 1132.738),
    (-696.271, -1841.400, 8624.970, -10051.530, 4400.067, -655.020),
    (88.283, 444.517, -1863.864, 2095.288, -901.788, 132.985),
)
#: Excited levels photoionised in the optical: (index in metal_neutral_over_u, g, E [eV],
#: ionisation energy [eV]). Order of metals: C, Mg, Al, Si, Ca, Fe (eos.depth_state).
_METAL_LEVELS = (
    (0, 9.0, 7.48, 11.2603),  # C I 2p3s 3P   edge 3280 A
    (0, 15.0, 8.64, 11.2603),  # C I 2p3p 3D   edge ~4.7 kA
    (1, 3.0, 4.346, 7.6462),  # Mg I 3s3p 1P  edge 3757 A
    (1, 3.0, 5.108, 7.6462),  # Mg I 3s4s 3S  edge 4885 A
    (1, 15.0, 5.946, 7.6462),  # Mg I 3s3d 3D  edge 7230 A
    (2, 2.0, 3.143, 5.9858),  # Al I 4s 2S    edge 4361 A
    (3, 9.0, 4.93, 8.1517),  # Si I 4s 3P    edge 3850 A
    (3, 3.0, 5.08, 8.1517),  # Si I 4s 1P    edge 4040 A
    (4, 15.0, 2.52, 6.1132),  # Ca I 4s3d 3D  edge 3454 A (wing into the range)
    (4, 9.0, 3.91, 6.1132),  # Ca I 4s5s 3S  edge 5640 A
)
THOMSON = 6.6524587e-25


def hminus_bf_cross_section(wavelength: torch.Tensor) -> torch.Tensor:
    """H- photodetachment cross-section [cm^2] (John 1988), zero beyond 1.6419 um."""
    lam = wavelength * 1e-4
    x = (1.0 / lam - 1.0 / _HMINUS_LAMBDA0_UM).clamp(min=0.0)
    root = torch.sqrt(x)
    poly = sum(c * root**k for k, c in enumerate(_HMINUS_BF))
    return 1e-18 * lam**3 * x**1.5 * poly


def hminus_ff(
    wavelength: torch.Tensor, temperature: torch.Tensor, d_temperature: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """H- free-free absorption per H atom per unit electron pressure [cm^4 dyn^-1], (W, D);
    with `d_temperature` also its partial by T [cm^4 dyn^-1 K^-1]."""
    lam = (wavelength * 1e-4)[:, None]
    theta = 5040.0 / temperature[None, :]
    total = torch.zeros_like(lam * theta)
    d_theta = torch.zeros_like(total)  # theta * d total / d theta
    for n, (a, b, c, d, e, f) in enumerate(_HMINUS_FF, start=2):
        term = theta ** ((n + 1) / 2.0) * (
            lam * lam * a + b + c / lam + d / lam**2 + e / lam**3 + f / lam**4
        )
        total = total + term
        d_theta = d_theta + (n + 1) / 2.0 * term
    if not d_temperature:
        return 1e-29 * total
    return 1e-29 * total, -1e-29 * d_theta / temperature[None, :]  # d theta / d T = -theta / T


def continuum_opacity(
    wavelength: torch.Tensor, state: dict[str, torch.Tensor], partials: bool = False
):
    """Absorption and scattering opacity [cm^-1], each (W, D), at vacuum wavelengths [A].

    With `partials`, also the partials of their sum by the state entries it depends on, a dict
    {(key, row): (W, D)} (diagonal in depth; row 0 but for the six rows of
    metal_neutral_over_u): every source is a density (or a product of two) times a function
    of wavelength and temperature, so the partials by the densities are the other factors and
    the one by temperature is written out term by term (tests/test_synth_physics.py checks
    them against autograd).
    """
    temperature = state["temperature"][None, :]
    ne = state["electron_density"][None, :]
    n_hi = state["n_hi"][None, :]
    n_hii = state["n_hii"][None, :]
    n_hminus = state["n_hminus"][None, :]
    lam = wavelength[:, None]
    stim_x = HC_OVER_K_ANGSTROM / (lam * temperature)
    stim = -torch.expm1(-stim_x)
    d_stim = -torch.exp(-stim_x) * stim_x / temperature  # d stim / d T
    kt_ev = K_B_EV * temperature
    # H- bound-free and free-free
    sigma_hminus = hminus_bf_cross_section(wavelength)[:, None]
    absorption = sigma_hminus * n_hminus * stim
    ff, d_ff = hminus_ff(wavelength, state["temperature"], d_temperature=True)
    pe_ff = ff * K_B * temperature  # per H atom and electron
    absorption = absorption + pe_ff * ne * n_hi
    nu = 2.99792458e18 / lam
    photon_ev = 12398.4198 / lam
    # H I bound-free, levels n >= 2 (n = 1 edge is at 912 A); population 2n^2 e^{-E_n/kT}/U, U=2;
    # sum over levels as one (W, levels) x (levels, D) product of cross-sections and populations
    n = torch.arange(2, 31, dtype=lam.dtype, device=lam.device)
    sigma = 2.815e29 / (n**5 * nu**3) * (photon_ev >= 13.598434 / n**2)
    boltzmann = 13.598434 * (1.0 - 1.0 / n[:, None] ** 2) / kt_ev  # E_n / kT, (levels, D)
    levels = n[:, None] ** 2 * torch.exp(-boltzmann)
    hbf = sigma @ levels
    absorption = absorption + hbf * n_hi * stim
    # H I free-free (per electron and proton)
    hff = 3.692e8 / (nu**3 * torch.sqrt(temperature))
    absorption = absorption + hff * ne * n_hii * stim
    # excited levels of metals, N_neutral / U times g e^{-E/kT} each
    metals = state["metal_neutral_over_u"]  # (6, D)
    index, g, energy, chi = (
        torch.tensor(column, dtype=lam.dtype, device=lam.device) for column in zip(*_METAL_LEVELS)
    )
    index = index.long()
    binding = chi - energy
    edge = 12398.4198 / binding
    sigma_metal = 7.91e-18 * torch.sqrt(13.598434 / binding) * (lam / edge) ** 3 * (lam <= edge)
    weight = g[:, None] * torch.exp(-energy[:, None] / kt_ev)  # (levels, D)
    population = metals[index] * weight
    metal_bf = sigma_metal @ population
    absorption = absorption + metal_bf * stim
    lam4 = lam**-4
    rayleigh_h = 5.799e-13 * lam4 + 1.422e-6 * lam4 / lam**2 + 2.784 * lam4 * lam4
    rayleigh_h2 = 8.14e-13 * lam4 + 1.28e-6 * lam4 / lam**2 + 1.61 * lam4 * lam4
    scattering = rayleigh_h * n_hi + rayleigh_h2 * state["n_h2"][None, :] + THOMSON * ne
    if not partials:
        return absorption, scattering
    # d / d T: the Boltzmann factors give (E / kT) / T, stim d_stim, T^-1/2 -1 / (2 T)
    d_hbf = sigma @ (levels * boltzmann) / temperature
    d_metal_bf = sigma_metal @ (population * energy[:, None] / kt_ev) / temperature
    d_temperature = (
        sigma_hminus * n_hminus * d_stim
        + (d_ff * temperature + ff) * K_B * ne * n_hi
        + n_hi * (d_hbf * stim + hbf * d_stim)
        + hff * ne * n_hii * (d_stim - stim / (2.0 * temperature))
        + d_metal_bf * stim
        + metal_bf * d_stim
    )
    out = {
        ("temperature", 0): d_temperature,
        ("electron_density", 0): pe_ff * n_hi + hff * n_hii * stim + THOMSON,
        ("n_hi", 0): pe_ff * ne + hbf * stim + rayleigh_h,
        ("n_hii", 0): hff * ne * stim,
        ("n_hminus", 0): sigma_hminus * stim,
        ("n_h2", 0): rayleigh_h2.expand_as(d_temperature),
    }
    for row in range(metals.shape[0]):
        mine = index == row
        out["metal_neutral_over_u", row] = (sigma_metal[:, mine] @ weight[mine]) * stim
    return absorption, scattering, out
