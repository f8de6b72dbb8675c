"""phdl.synth physics: Voigt accuracy, continuum, EOS, and exact gradient spectra vs finite differences.

A small self-contained stand-in (analytic grey atmosphere, constant partition functions, ~40
lines placed in 4800-5000 A around H-beta) keeps the tests fast and independent of the data
files; the same code paths run on the real Kurucz/VALD inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from phdl.labels import DEFAULT_LABELS
from phdl.synth.continuum import continuum_opacity, hminus_ff
from phdl.synth.eos import molecular_kp_from_constants
from phdl.synth.lines import AMU, LineData, voigt_and_derivatives
from phdl.synth.spectrum import SynthConfig, Synthesizer, SynthInputs
from phdl.synth.transfer import emergent_flux, expint_e1

SOLAR = {
    1: 12.0, 2: 10.93, 6: 8.43, 7: 7.83, 8: 8.69, 11: 6.24, 12: 7.60, 13: 6.45, 14: 7.51,
    19: 5.03, 20: 6.34, 21: 3.15, 22: 4.95, 23: 3.93, 24: 5.64, 25: 5.43, 26: 7.50, 27: 4.99,
    28: 6.22, 29: 4.19, 30: 4.56, 38: 2.87, 39: 2.21, 40: 2.58, 56: 2.18, 57: 1.10, 58: 1.58,
    60: 1.42, 63: 0.52,
}  # fmt: skip
MASS = {z: (1.008 if z == 1 else 4.0026 if z == 2 else 2.1 * z) for z in SOLAR}
IONISATION = {
    6: (11.26, 24.38), 7: (14.53, 29.6), 8: (13.62, 35.1), 11: (5.14, 47.3), 12: (7.65, 15.04),
    13: (5.99, 18.8), 14: (8.15, 16.3), 19: (4.34, 31.6), 20: (6.11, 11.87), 21: (6.56, 12.8),
    22: (6.83, 13.6), 23: (6.75, 14.6), 24: (6.77, 16.5), 25: (7.43, 15.6), 26: (7.90, 16.2),
    27: (7.88, 17.1), 28: (7.64, 18.2), 29: (7.73, 20.3), 30: (9.39, 18.0), 38: (5.69, 11.0),
    39: (6.22, 12.2), 40: (6.63, 13.1), 56: (5.21, 10.0), 57: (5.58, 11.1), 58: (5.54, 10.9),
    60: (5.53, 10.7), 63: (5.67, 11.2), 2: (24.59, 54.4),
}  # fmt: skip
MOLECULE_CONSTANTS = {  # D0 eV, B cm^-1, omega cm^-1, symmetry, electronic g
    101.0: (4.478, 60.85, 4401.0, 2, 1.0), 106.0: (3.465, 14.46, 2858.0, 1, 4.0),
    607.0: (7.72, 1.90, 2069.0, 1, 2.0), 606.0: (6.21, 1.82, 1855.0, 2, 1.0),
    608.0: (11.09, 1.93, 2170.0, 1, 1.0), 108.0: (4.39, 18.9, 3738.0, 1, 4.0),
    112.0: (1.34, 5.83, 1495.0, 1, 2.0), 707.0: (9.76, 2.0, 2359.0, 2, 1.0),
}  # fmt: skip
ATOM_U = {1: 2.0, 6: 9.0, 7: 4.0, 8: 9.0, 12: 1.0}
PAIRS = {101.0: (1, 1), 106.0: (1, 6), 607.0: (6, 7), 606.0: (6, 6), 608.0: (6, 8),
         108.0: (1, 8), 112.0: (1, 12), 707.0: (7, 7)}  # fmt: skip


def partition_function(code: float, temperature: torch.Tensor) -> torch.Tensor:
    """Stand-in: smooth, slowly rising partition functions."""
    base = 2.0 + (code % 1.0) * 3.0 + (code % 7.0)
    return base * (temperature / 5000.0) ** 0.3


def dissociation(code: float, temperature: torch.Tensor) -> torch.Tensor:
    d0, b, omega, sym, g = MOLECULE_CONSTANTS[code]
    za, zb = PAIRS[code]
    return molecular_kp_from_constants(
        d0, MASS[za], MASS[zb], ATOM_U[za], ATOM_U[zb], b, omega, sym, g, temperature
    )


def grey_atmosphere(teff, logg, m_h, alpha_m, n_depth: int = 40) -> dict[str, torch.Tensor]:
    """Stand-in: Eddington grey T(tau), hydrostatic P with a power-law mean opacity.

    Scalar labels give (D,) tensors, (B,) label tensors give (B, D).
    """
    teff, logg, m_h, alpha_m = (
        torch.as_tensor(x, dtype=torch.float64)[..., None] for x in (teff, logg, m_h, alpha_m)
    )
    log_tau = torch.linspace(-5.5, 1.5, n_depth, dtype=torch.float64)
    tau = 10.0**log_tau
    temperature = teff * (0.75 * (tau + 2.0 / 3.0)) ** 0.25
    g = 10.0**logg
    # kappa = k0 P^0.5 (T/5000)^6 10^(0.5 m_h): P^1.5 = 1.5 int g/(k0 f) dtau
    f = (temperature / 5000.0) ** 6 * 10.0 ** (0.5 * m_h + 0.2 * alpha_m)
    integrand = g / (3e-3 * f)
    steps = 0.5 * (integrand[..., 1:] + integrand[..., :-1]) * (tau[1:] - tau[:-1])
    cum = torch.cumsum(torch.cat([integrand[..., :1] * tau[:1], steps], dim=-1), -1)
    pressure = (1.5 * cum) ** (2.0 / 3.0)
    x_e = 1e-4 * 10.0 ** (0.8 * m_h) * (temperature / 5000.0) ** 4
    ne = pressure / (1.380649e-16 * temperature) * x_e
    return {
        "log_tau_ross": log_tau.expand_as(temperature),
        "temperature": temperature,
        "gas_pressure": pressure,
        "electron_density": ne,
        "column_mass": pressure / g,
    }


def standin_lines() -> tuple[LineData, tuple[float, ...]]:
    """~40 lines in 4800-5000 A: at least one for each element label, two molecules."""
    rng = np.random.default_rng(3)
    codes = [26.0, 26.1, 12.0, 11.0, 20.0, 20.1, 22.0, 22.1, 28.0, 56.1, 38.1, 63.1, 106.0,
             607.0, 8.0, 6.0, 7.0, 13.0, 14.0, 19.0, 21.1, 23.0, 24.0, 25.0, 27.0, 29.0,
             30.0, 39.1, 40.1, 57.1, 58.1, 60.1, 112.0, 606.0, 26.0, 26.0, 12.0]  # fmt: skip
    wav = np.sort(rng.uniform(4810.0, 4990.0, len(codes)))
    species = tuple(sorted(set(codes)))
    chi = rng.uniform(0.0, 4.0, len(codes))
    log_gf = rng.uniform(-2.5, 0.5, len(codes))
    log_gf[np.array(codes) == 12.0] = 0.3  # strong, damped lines (large wings)
    chi[np.array(codes) == 12.0] = 2.7
    for i, c in enumerate(codes):
        if c in (8.0, 6.0, 7.0):
            chi[i], log_gf[i] = 9.0 + 0.5 * (c - 6.0), 0.3
        if c > 100:
            log_gf[i] = -0.5
    mass = np.array([MASS.get(int(c), 13.0 + (c % 100)) if c < 100 else 13.0 for c in codes])
    has_abo = rng.uniform(size=len(codes)) < 0.6
    t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float64))  # noqa: E731
    lines = LineData(
        wavelength=t(wav),
        species_index=torch.as_tensor([species.index(c) for c in codes]),
        chi_lower=t(chi),
        log_gf=t(log_gf),
        mass=t(mass * AMU),
        gamma_rad=t(np.full(len(codes), 1e8)),
        log_gamma_stark=t(np.full(len(codes), -5.5)),
        vdw_sigma=t(np.where(has_abo, 300.0 * (5.29177e-9) ** 2, 0.0)),
        vdw_alpha=t(np.where(has_abo, 0.25, 0.0)),
        log_gamma_vdw=t(np.full(len(codes), -7.5)),
    )
    return lines, species


def standin_inputs(n_depth: int = 40) -> SynthInputs:
    lines, species = standin_lines()
    return SynthInputs(
        atmosphere=lambda *a: grey_atmosphere(*a, n_depth=n_depth),
        solar_abundance=SOLAR,
        masses_amu=MASS,
        ionisation_ev=IONISATION,
        partition_function=partition_function,
        dissociation=dissociation,
        lines=lines,
        species=species,
        description="test stand-in",
    )


# Mildly alpha-enhanced: [alpha/M] = 0.03 keeps central differences off the kink where the
# atmosphere's [alpha/M] is clamped to the Kurucz grid's 0..0.4 (there the one-sided
# derivatives differ and no finite difference can check the gradient).
SUN = {"teff": 5777.0, "logg": 4.44, "vmic": 1.0, "fe_h": 0.0, "mg_fe": 0.1, "si_fe": 0.05}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The stand-in's arrays are small: one thread avoids thread wake-up costs on a busy host."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthesizer() -> Synthesizer:
    wavelength = 10.0 ** (3.5682 + 1e-4 * np.arange(1250, 1420))  # ~4850-4950 A
    config = SynthConfig(margin=10.0, fine_step=0.04)
    return Synthesizer(standin_inputs(n_depth=24), wavelength=wavelength, config=config)


def test_voigt_matches_scipy_including_large_damping():
    from scipy.special import wofz

    v = torch.linspace(-60, 60, 1201, dtype=torch.float64)
    for a in (1e-4, 0.05, 2.0, 50.0):
        h, dh_dv, dh_da = voigt_and_derivatives(v, torch.full_like(v, a))
        ref = wofz(v.numpy() + 1j * a)
        assert np.allclose(h.numpy(), ref.real, rtol=5e-6, atol=0)
        eps = 1e-6
        hp = wofz(v.numpy() + 1j * (a + eps)).real
        hm = wofz(v.numpy() + 1j * (a - eps)).real
        assert np.allclose(dh_da.numpy(), (hp - hm) / (2 * eps), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("far", [False, True])
def test_voigt_partials_stay_accurate_in_float32_far_in_the_wings(far):
    """Strong lines' wings reach |v| ~ 10^3 Doppler widths; there w' = -2 z w + 2i/sqrt(pi)
    cancels to ~1/(2 v^2) of its terms, which in float32 made dH/da and dH/dv wrong by 1-10%
    (central differences of Ca II K's log g wings failed by 5x). Both come from the series now."""
    from scipy.special import wofz

    v = torch.cat([-torch.logspace(1, 3.3, 200), torch.logspace(1, 3.3, 200)])
    for a in (1e-3, 0.1, 3.0):
        z = v.numpy().astype(np.float64) + 1j * a
        derivative = -2 * z * wofz(z) + 2j / np.sqrt(np.pi)
        h, dh_dv, dh_da = voigt_and_derivatives(v.float(), torch.full_like(v, a).float(), far=far)
        assert h.dtype == torch.float32
        assert np.allclose(h.numpy(), wofz(z).real, rtol=2e-6, atol=0)
        assert np.allclose(dh_dv.numpy(), derivative.real, rtol=2e-5, atol=0)
        assert np.allclose(dh_da.numpy(), -derivative.imag, rtol=2e-5, atol=0)


def test_exponential_integral_and_flux_of_linear_source():
    from scipy.special import exp1

    x = torch.tensor([1e-6, 0.1, 0.9, 1.1, 5.0, 30.0], dtype=torch.float64)
    assert np.allclose(expint_e1(x).numpy(), exp1(x.numpy()), rtol=3e-7)
    # S = a + b tau: F/(2 pi) = a/2 + b/3 exactly (Eddington-Barbier)
    tau = torch.cat([torch.zeros(1), torch.logspace(-6, 3, 200)]).double()[1:]
    flux = emergent_flux(tau, 1.0 + 2.0 * tau)
    assert abs(float(flux) - (0.5 + 2.0 / 3.0)) < 1e-6


def _gray_bell_berrington(lam_angstrom: float, theta: float) -> float:
    """Gray (2005) eq. 8.13: polynomial fit to Bell & Berrington (1987) H- ff [cm^4 dyn^-1]."""
    x = math.log10(lam_angstrom)
    f0 = -2.2763 - 1.6850 * x + 0.76661 * x**2 - 0.053346 * x**3
    f1 = 15.2827 - 9.2846 * x + 1.99381 * x**2 - 0.142631 * x**3
    f2 = -197.789 + 190.266 * x - 67.9775 * x**2 + 10.6913 * x**3 - 0.625151 * x**4
    t = math.log10(theta)
    return 1e-26 * 10 ** (f0 + f1 * t + f2 * t * t)


def test_hminus_free_free_matches_bell_berrington():
    # John (1988) coefficients against the Bell & Berrington tables (via Gray's fit to them):
    # a typo in any one coefficient shows up as a large error somewhere in this range.
    for lam in (4000.0, 5063.0, 7000.0, 9113.0):
        for theta in (0.6, 0.8, 1.0, 1.4):
            k = hminus_ff(
                torch.tensor([lam], dtype=torch.float64),
                torch.tensor([5040.0 / theta], dtype=torch.float64),
            )
            ref = _gray_bell_berrington(lam, theta)
            assert abs(float(k) / ref - 1.0) < 0.05, (lam, theta, float(k), ref)


def test_molecular_equilibrium_conserves_nuclei(synthesizer):
    theta = synthesizer.label_tensor(SUN)
    state = synthesizer.state(theta)
    assert torch.all(torch.isfinite(state["ln_population"]))
    assert torch.all(state["n_h2"] < state["n_hi"])


@pytest.mark.parametrize("labels", [SUN, {"teff": 4000.0, "logg": 4.8, "fe_h": 0.3}])
def test_continuum_partials_match_autograd(synthesizer, labels):
    # the hand-written partials (the gradient spectra's continuum part) against autograd:
    # kappa is diagonal in depth, so d sum_d kappa(lambda, d) / d x[d] is the partial itself
    state = synthesizer.state(synthesizer.label_tensor(labels))
    state = {k: v.detach() for k, v in state.items()}
    wavelength = torch.linspace(3650.0, 9200.0, 300, dtype=torch.float64)  # past Balmer's edge
    absorption, scattering, partials = continuum_opacity(wavelength, state, partials=True)
    assert torch.allclose(sum(continuum_opacity(wavelength, state)), absorption + scattering)
    keys = {key for key, _ in partials}
    assert keys == {"temperature", "electron_density", "n_hi", "n_hii", "n_hminus", "n_h2",
                    "metal_neutral_over_u"}  # fmt: skip
    for key in keys:
        x = state[key].clone().requires_grad_(True)
        rows = range(x.shape[0]) if x.dim() == 2 else [None]
        kappa = sum(continuum_opacity(wavelength, {**state, key: x}))
        for lam in range(0, wavelength.shape[0], 37):
            (grad,) = torch.autograd.grad(kappa[lam].sum(), x, retain_graph=True)
            for row in rows:
                exact = grad if row is None else grad[row]
                ours = partials[key, 0 if row is None else row][lam]
                scale = exact.abs().max().clamp(min=1e-300)
                assert float((ours - exact).abs().max() / scale) < 1e-12, (key, row, lam)


@pytest.fixture(scope="module")
def sun_gradients(synthesizer):
    theta = synthesizer.label_tensor(SUN)
    plan = synthesizer.plan(theta)
    flux, grads = synthesizer.synthesize(theta, gradients=True, plan=plan)
    return theta, plan, flux, grads


def test_flux_is_normalised_with_lines(sun_gradients, synthesizer):
    theta, plan, flux, grads = sun_gradients
    assert flux.shape == (len(synthesizer.wavelength),)
    assert grads.shape == (len(DEFAULT_LABELS), len(synthesizer.wavelength))
    assert float(flux.max()) <= 1.0 + 1e-9
    assert float(flux.min()) < 0.9  # H-beta and strong lines
    flux_only, none = synthesizer.synthesize(theta, gradients=False, plan=plan)
    assert none is None
    assert torch.allclose(flux_only, flux, atol=1e-12)


STEPS = {"teff": 2.0, "logg": 0.005, "vmic": 0.01, "fe_h": 0.005}


def test_gradient_spectra_match_central_differences(sun_gradients, synthesizer):
    theta, plan, flux, grads = sun_gradients
    failures = []
    for k, name in enumerate(DEFAULT_LABELS):
        h = STEPS.get(name, 0.005)
        up = theta.clone()
        up[k] += h
        down = theta.clone()
        down[k] -= h
        fd = (
            synthesizer.synthesize(up, gradients=False, plan=plan)[0]
            - synthesizer.synthesize(down, gradients=False, plan=plan)[0]
        ) / (2 * h)
        err = (grads[k] - fd).abs()
        ok = err <= torch.maximum(0.01 * fd.abs(), torch.tensor(1e-4, dtype=fd.dtype))
        if not bool(ok.all()):
            failures.append((name, float(err.max()), float(fd.abs().max())))
    assert not failures, failures


def test_abundance_labels_move_their_lines(sun_gradients, synthesizer):
    from phdl.synth.spectrum import ELEMENT_Z

    _, plan, _, grads = sun_gradients
    size = grads.abs().max(dim=1).values
    species = synthesizer.inputs.species
    lam = plan.lines.wavelength
    inside = (lam > synthesizer.wavelength[0] + 3) & (lam < synthesizer.wavelength[-1] - 3)
    codes = {species[int(i)] for i in plan.lines.species_index[inside]}
    z_present = {int(c) for c in codes if c < 100}
    checked = 0
    for element, z in ELEMENT_Z.items():
        if z in z_present:
            assert float(size[DEFAULT_LABELS.index(f"{element.lower()}_fe")]) > 1e-5, element
            checked += 1
    assert checked >= 5
    for name in ("teff", "logg", "fe_h", "vmic"):
        assert float(size[DEFAULT_LABELS.index(name)]) > 1e-5, name
    assert math.isfinite(float(size.sum()))


def test_compiled_kernels_give_the_eager_numbers(sun_gradients, synthesizer):
    """torch.compile'd synthesis (what `phdl synth` uses on large runs) = the eager code."""
    theta, plan, flux, grads = sun_gradients
    config = SynthConfig(margin=10.0, fine_step=0.04, compile=True)
    compiled = Synthesizer(synthesizer.inputs, wavelength=synthesizer.wavelength, config=config)
    c_flux, c_grads = compiled.synthesize(theta, gradients=True, plan=plan)
    assert float((c_flux - flux).abs().max()) < 1e-7
    scale = grads.abs().max(dim=1, keepdim=True).values.clamp(min=1e-12)
    assert float(((c_grads - grads).abs() / scale).max()) < 1e-4


def test_a_kernel_that_cannot_compile_runs_eagerly_with_one_warning(monkeypatch):
    from phdl.synth.kernels import Kernel

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    kernel = Kernel(lambda x: 2 * x)
    x = torch.arange(3.0)
    with pytest.warns(RuntimeWarning, match="running it uncompiled"):
        assert torch.equal(kernel(x), 2 * x)
    assert torch.equal(kernel(x), 2 * x)  # no second try, no second warning


def test_a_compile_failure_warning_names_the_inner_cause(monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    from phdl.synth.kernels import Kernel

    def broken(*args, **kwargs):
        raise BackendCompilerFailed(broken, ImportError("no module named nt"), None)

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    with pytest.warns(RuntimeWarning, match="ImportError: no module named nt"):
        Kernel(lambda x: x)(torch.zeros(1))
