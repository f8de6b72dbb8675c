"""Atomic and molecular line opacity: Voigt profiles (exact rational Faddeeva) in windows.

The Faddeeva function w(z) is evaluated with Weideman's (1994, SIAM J. Numer. Anal. 31, 1497)
rational approximation with N = 32 terms, valid in the whole upper half plane (relative error
< 1e-6 for the Voigt function H(a, v) = Re w(v + i a), including large damping a >> 1; DESIGN
section 8 warns against cheap series there). For |z| > 15 the asymptotic Lorentz series is used.
Its derivative is exact: dw/dz = -2 z w + 2i / sqrt(pi), so dH/dv = Re w', dH/da = -Im w'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SQRT_PI = math.sqrt(math.pi)
#: Speed of light [cm/s], Boltzmann [erg/K], atomic mass unit [g], Planck [erg s].
C_CGS = 2.99792458e10
K_B = 1.380649e-16
AMU = 1.66053907e-24
H_PLANCK = 6.62607015e-27
#: pi e^2 / (m_e c) [cm^2 Hz]: integrated cross-section per unit oscillator strength.
SIGMA_CLASSICAL = 0.026540081
#: hc/k [Angstrom K], and hc/k in eV units [eV/K]: 1/k_B [K/eV].
HC_OVER_K_ANGSTROM = 1.4387769e8
K_B_EV = 8.617333262e-5

_WEIDEMAN_N = 32


def _weideman_coefficients(n: int = _WEIDEMAN_N) -> tuple[float, np.ndarray]:
    """Weideman's L and polynomial coefficients a_n (highest power first) for Horner."""
    m = 2 * n
    m2 = 2 * m
    k = np.arange(-m + 1, m)
    length = math.sqrt(n / math.sqrt(2.0))
    theta = k * math.pi / m
    t = length * np.tan(theta / 2.0)
    f = np.concatenate([[0.0], np.exp(-(t**2)) * (length**2 + t**2)])
    a = np.real(np.fft.fft(np.fft.fftshift(f))) / m2
    a = a[1 : n + 1][::-1].copy()
    return length, a


_L, _A = _weideman_coefficients()


def faddeeva(v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w(v + i a) for a >= 0 as (real, imag) tensors: Weideman N=32, asymptotic for |z| > 15."""
    z = torch.complex(v, a)
    iz = 1j * z
    lmiz = _L - iz
    big_z = (_L + iz) / lmiz
    poly = torch.zeros_like(z)
    for coefficient in _A:
        poly = poly * big_z + float(coefficient)
    w_rational = 2.0 * poly / (lmiz * lmiz) + (1.0 / SQRT_PI) / lmiz
    inv = 1.0 / z
    inv2 = inv * inv
    w_asymptotic = (1j / SQRT_PI) * inv * (1.0 + inv2 * (0.5 + 0.75 * inv2))
    far = (v * v + a * a) > 225.0
    w = torch.where(far, w_asymptotic, w_rational)
    return w.real, w.imag


def voigt_and_derivatives(
    v: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voigt H(a, v) (normalised to sqrt(pi) over v) and its exact partials dH/dv, dH/da."""
    re, im = faddeeva(v, a)
    # w' = -2 z w + 2i/sqrt(pi), z = v + i a
    d_re = -2.0 * (v * re - a * im)
    d_im = -2.0 * (v * im + a * re) + 2.0 / SQRT_PI
    return re, d_re, -d_im


def voigt(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Voigt function H(a, v) = Re w(v + i a) (no autograd through the rational form needed)."""
    return faddeeva(v, a)[0]


@dataclass
class LineData:
    """Line list arrays as torch tensors, sorted by wavelength (vacuum Angstrom)."""

    wavelength: torch.Tensor  # (L,) Angstrom, vacuum
    species_index: torch.Tensor  # (L,) int64, row in the species table of the state
    chi_lower: torch.Tensor  # (L,) eV
    log_gf: torch.Tensor  # (L,)
    mass: torch.Tensor  # (L,) g, mass of the absorber
    gamma_rad: torch.Tensor  # (L,) s^-1 (FWHM, angular)
    log_gamma_stark: torch.Tensor  # (L,) log10 of gamma_4 / n_e [rad s^-1 cm^3] at 10^4 K
    vdw_sigma: torch.Tensor  # (L,) ABO cross-section [cm^2] (0 when Unsold is used)
    vdw_alpha: torch.Tensor  # (L,) ABO velocity exponent
    log_gamma_vdw: torch.Tensor  # (L,) Unsold-style log10(gamma_6 / n_H) at 10^4 K (ABO absent)

    def __len__(self) -> int:
        return int(self.wavelength.shape[0])

    def subset(self, index: torch.Tensor) -> LineData:
        """The lines at `index` (a boolean mask or integer index)."""
        return LineData(**{k: getattr(self, k)[index] for k in self.__dataclass_fields__})


def line_parameters(
    state: dict[str, torch.Tensor], lines: LineData
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per line and depth: ln amplitude (cm^-1 Angstrom), Doppler width (Angstrom), damping a.

    Amplitude A is the wavelength-integrated opacity per unit volume: the line opacity is
    A * H(a, v) / (sqrt(pi) * doppler_width) [cm^-1] with v = (lambda - lambda_0) / width.
    """
    temperature = state["temperature"]  # (D,)
    ln_pop = state["ln_population"][lines.species_index]  # (L, D): ln(N_species / U_species)
    lam = lines.wavelength[:, None]  # Angstrom
    lam_cm = lam * 1e-8
    stim = -torch.expm1(-HC_OVER_K_ANGSTROM / (lam * temperature[None, :]))
    ln_amplitude = (
        math.log(SIGMA_CLASSICAL)
        + lines.log_gf[:, None] * math.log(10.0)
        + ln_pop
        - lines.chi_lower[:, None] / (K_B_EV * temperature[None, :])
        + torch.log(stim)
        + torch.log(lam_cm * lam_cm / C_CGS)
        + math.log(1e8)  # per cm of wavelength -> per Angstrom
    )
    vmic = state["vmic"]  # cm/s, scalar tensor
    velocity = torch.sqrt(2.0 * K_B * temperature[None, :] / lines.mass[:, None] + vmic * vmic)
    width = lam * velocity / C_CGS  # (L, D) Angstrom
    t4 = temperature[None, :] / 1e4
    gamma_stark = torch.pow(10.0, lines.log_gamma_stark)[:, None] * state["electron_density"][
        None, :
    ] * torch.pow(t4, 1.0 / 6.0)
    n_h = state["n_hi"][None, :]
    # ABO (Anstee, Barklem & O'Mara): gamma = 2 (4/pi)^(alpha/2) Gamma((4-alpha)/2) v0 sigma
    # (vbar/v0)^(1-alpha) n_H, vbar the mean relative speed of the absorber and H.
    alpha = lines.vdw_alpha[:, None]
    reduced = 1.0 / (1.0 / (1.008 * AMU) + 1.0 / lines.mass[:, None])
    vbar = torch.sqrt(8.0 * K_B * temperature[None, :] / (math.pi * reduced))
    abo_factor = (
        2.0
        * torch.pow(torch.tensor(4.0 / math.pi, dtype=alpha.dtype), alpha / 2.0)
        * torch.exp(torch.lgamma((4.0 - alpha) / 2.0))
        * 1e6
        * lines.vdw_sigma[:, None]
    )
    gamma_abo = abo_factor * torch.pow(vbar / 1e6, 1.0 - alpha) * n_h
    gamma_unsold = torch.pow(10.0, lines.log_gamma_vdw)[:, None] * n_h * torch.pow(t4, 0.3)
    use_abo = (lines.vdw_sigma > 0)[:, None]
    gamma_vdw = torch.where(use_abo, gamma_abo, gamma_unsold)
    gamma = lines.gamma_rad[:, None] + gamma_stark + gamma_vdw  # FWHM angular frequency
    # a = gamma / (4 pi delta_nu_D), delta_nu_D = c * width / lambda^2
    doppler_nu = C_CGS * (width * 1e-8) / (lam_cm * lam_cm)
    damping = gamma / (4.0 * math.pi * doppler_nu)
    return ln_amplitude, width, damping
