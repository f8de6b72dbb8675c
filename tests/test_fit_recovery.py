"""The fitter's pieces and its accuracy: Doppler shift, continuum, recovery, Fisher errors, bounds.

Spectra are made with an analytic emulator (tests/fit_toy.py), shifted, multiplied by a
continuum and given Gaussian noise; the fit must return the input labels within its errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fit_toy import FEW_LABELS, observe, random_labels, toy_emulator
from lightning.pytorch import Trainer

from phdl.data.observed import ArraySpectra, ObservedDataModule
from phdl.data.spectrum import C_KMS
from phdl.fit.continuum import chebyshev_basis, solve_continuum, template_chi2
from phdl.fit.doppler import DopplerShift
from phdl.fit.fitter import FLAG_BITS, LabelFitter


@pytest.fixture(scope="module")
def emulator():
    return toy_emulator()


def test_doppler_shift_and_its_derivative_match_analytic_line():
    wavelength = 10 ** (np.log10(5000.0) + 1e-4 * np.arange(600))
    centre, width = 5150.0, 1.2

    def line(lam):
        return 1.0 - 0.5 * np.exp(-0.5 * ((lam - centre) / width) ** 2)

    shift = DopplerShift(wavelength)
    rv = torch.tensor([-130.0, 0.0, 47.0], dtype=torch.float64)
    flux = torch.tensor(line(wavelength))[None].repeat(3, 1)
    shifted, derivative = shift(flux, rv, derivative=True)
    for k, v in enumerate(rv.tolist()):
        expected = line(wavelength / (1 + v / C_KMS))
        assert np.abs(shifted[k, 10:-10].numpy() - expected[10:-10]).max() < 2e-3
    step = 1e-3
    numerical = (shift(flux, rv + step) - shift(flux, rv - step)) / (2 * step)
    assert torch.allclose(derivative, numerical, atol=1e-6)


def test_continuum_is_solved_exactly_per_segment():
    wavelength = np.linspace(4000.0, 8000.0, 500)
    basis = chebyshev_basis(wavelength, 2, segments=[6000.0])
    assert basis.shape == (500, 6) and np.all(basis[wavelength >= 6000.0, :3] == 0)
    basis_t = torch.tensor(basis)
    model = torch.tensor(1.0 - 0.3 * np.exp(-0.5 * ((wavelength - 5000) / 5) ** 2))[None]
    truth = torch.tensor([[2.0, 0.3, -0.1, 3.0, -0.2, 0.05]], dtype=torch.float64)
    flux = model * (truth @ basis_t.T)
    ivar = torch.ones_like(flux)
    coefficients, continuum = solve_continuum(model, flux, ivar, basis_t)
    assert torch.allclose(coefficients, truth, atol=1e-8)
    templates = torch.cat([model, model**2])
    chi2 = template_chi2(flux, ivar, basis_t, templates)
    _, other = solve_continuum(templates[1:], flux, ivar, basis_t)
    direct = ((flux - templates[1:] * other) ** 2).sum()
    assert chi2[0, 0] < 1e-8 * (flux**2).sum() and torch.isclose(chi2[0, 1], direct, rtol=1e-5)
    # a break outside the grid (the LAMOST dichroic for a one-arm emulator) is ignored
    assert np.array_equal(chebyshev_basis(wavelength, 2, segments=[9000.0, 3000.0]),
                          chebyshev_basis(wavelength, 2))  # fmt: skip


def _fit(emulator, labels, snr, rv, seed=0, **options):
    flux, ivar = observe(emulator, labels, snr=snr, rv=rv, seed=seed)
    fitter = LabelFitter.from_emulator(emulator, **options)
    ids = [str(i) for i in range(len(labels))]
    return fitter, fitter.fit(torch.tensor(flux), torch.tensor(ivar), ids)


def test_noisy_emulator_spectra_come_back_to_their_labels(emulator):
    labels = random_labels(emulator, 24, seed=3)
    rv = np.random.default_rng(4).uniform(-250.0, 250.0, 24)
    _, result = _fit(emulator, labels, snr=100.0, rv=rv)
    assert np.all(result["converged"]) and np.all(result["flag"] == 0)
    for k, name in enumerate(FEW_LABELS):
        pull = (result[name] - labels[:, k]) / result[f"{name}_err"]
        assert np.all(np.abs(pull) < 5.0), (name, pull)
    assert np.abs(result["rv"] - rv).max() < 1.0  # km/s
    assert np.abs(result["teff"] - labels[:, 0]).max() < 60.0  # K at S/N 100
    assert np.abs(result["fe_h"] - labels[:, 3]).max() < 0.03  # dex
    assert np.all(np.abs(result["chi2_red"] - 1.0) < 0.2)


def test_fisher_errors_agree_with_scatter_of_noise_draws(emulator):
    truth = random_labels(emulator, 1, seed=5)
    labels = np.repeat(truth, 48, axis=0)
    _, result = _fit(emulator, labels, snr=50.0, rv=np.full(48, 30.0), seed=7)
    for k, name in enumerate(FEW_LABELS):
        scatter = np.std(result[name] - truth[0, k])
        error = np.median(result[f"{name}_err"])
        assert 0.6 < scatter / error < 1.5, (name, scatter, error)
    assert 0.6 < np.std(result["rv"]) / np.median(result["rv_err"]) < 1.5


def test_labels_outside_the_grid_stop_on_the_bound_and_are_flagged(emulator):
    """An abundance on its bound flags that abundance; a stellar parameter flags the star."""
    labels = random_labels(emulator, 3, seed=6)
    k = FEW_LABELS.index("mg_fe")
    labels[0, k] = 0.55  # the grid ends at +0.4
    edge = emulator.unscale(torch.full((1, len(FEW_LABELS)), 0.5)).numpy()[0]  # grid maximum
    labels[1, 0] = edge[0] + 100.0  # Teff beyond the grid's hot end
    _, result = _fit(emulator, labels, snr=200.0, rv=np.zeros(3))
    assert result["mg_fe"][0] == pytest.approx(0.4, abs=1e-3)
    assert result["mg_fe_flag"][0] == FLAG_BITS["AT_BOUNDARY"]
    assert not result["flag"][0] & FLAG_BITS["AT_BOUNDARY"]  # the star is still well fitted
    assert result["teff"][1] == pytest.approx(edge[0], rel=1e-4)
    assert result["flag"][1] & FLAG_BITS["AT_BOUNDARY"] and result["teff_flag"][1]
    assert not result["flag"][2] & FLAG_BITS["AT_BOUNDARY"]
    assert all(result[f"{name}_flag"][2] == 0 for name in FEW_LABELS)


def test_subset_of_labels_without_rv_and_cmaes_stage(emulator):
    labels = random_labels(emulator, 4, seed=8)
    fixed = emulator.unscale(torch.zeros(len(FEW_LABELS))).numpy()
    labels[:, 4:] = fixed[4:]  # the labels held fixed are at their defaults ([X/Fe] = 0)
    labels[:, 2] = fixed[2]
    fitter, result = _fit(
        emulator, labels, snr=100.0, rv=None, fit_labels=["teff", "logg", "fe_h"], fit_rv=False,
        global_search="cmaes", cmaes_iterations=5, cmaes_popsize=8, return_model=True,
    )  # fmt: skip
    assert fitter.label_names == ("teff", "logg", "fe_h") and "mg_fe" not in result
    assert np.all(np.abs(result["fe_h"] - labels[:, 3]) < 0.03)
    assert np.all(np.isnan(result["rv_err"])) and np.all(result["rv"] == 0.0)
    assert result["model_flux"].shape == (4, emulator.n_pixels)
    assert np.all(np.isfinite(result["continuum"][:, 10:-10]))


def test_posterior_samples_with_emcee(emulator, tmp_path):
    labels = random_labels(emulator, 2, seed=9)
    fitter, result = _fit(
        emulator, labels, snr=50.0, rv=np.zeros(2), mcmc_ids=["1"], mcmc_walkers=24,
        mcmc_steps=60, mcmc_dir=str(tmp_path),
    )  # fmt: skip
    assert not (tmp_path / "0.npz").exists()
    chains = np.load(tmp_path / "1.npz")
    assert chains["chain"].shape == (60, 24, len(FEW_LABELS) + 1)
    assert list(chains["names"])[-1] == "rv"
    k = FEW_LABELS.index("fe_h")
    posterior = chains["chain"][30:, :, k]
    assert abs(np.median(posterior) - result["fe_h"][1]) < 3 * result["fe_h_err"][1]


@pytest.mark.parametrize("inference_mode", [False, True])
def test_single_device_trainer_predict(emulator, inference_mode, monkeypatch):
    """Trainer.predict wraps predict_step in inference mode unless told not to (DESIGN §7)."""
    kept = []  # the predict process keeps freed memory (phdl.malloc), once
    monkeypatch.setattr("phdl.fit.fitter.keep_freed_memory", lambda: kept.append(1) or True)
    labels = random_labels(emulator, 3, seed=10)
    flux, ivar = observe(emulator, labels, snr=100.0, rv=np.zeros(3))
    flux[1] = np.nan  # a malformed spectrum is flagged, the others fitted
    datamodule = ObservedDataModule(ArraySpectra(emulator.wavelength, flux, ivar), batch_size=3)
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, inference_mode=inference_mode,
    )  # fmt: skip
    (result,) = trainer.predict(LabelFitter.from_emulator(emulator), datamodule=datamodule)
    assert list(result["flag"]) == [0, FLAG_BITS["BAD_INPUT"], 0]
    assert "no usable pixel" in result["flag_reason"][1]
    assert np.abs(result["teff"][[0, 2]] - labels[[0, 2], 0]).max() < 60.0
    assert kept == [1]
    LabelFitter.from_emulator(emulator, keep_freed_memory=False).setup("predict")
    assert kept == [1]


def test_gaussian_broadening_nuisance_is_recovered(emulator):
    from phdl.fit.model import RV_SCALE, SpectrumModel

    model = SpectrumModel(emulator, fit_broadening=True)
    labels = random_labels(emulator, 6, seed=12)
    sigma_true = np.array([0.0, 30.0, 60.0, 90.0, 120.0, 60.0])  # km/s
    rv = np.linspace(-80.0, 80.0, 6)
    with torch.no_grad():
        flux = emulator.flux(torch.tensor(labels, dtype=torch.float32)).double()
    width_sq = torch.tensor((sigma_true / RV_SCALE) ** 2) * model.width_per_theta
    rv_t = torch.tensor(rv)
    broadened, _, d_width = model.doppler.broaden(flux, rv_t, width_sq, derivative=True)
    step = 1e-4
    numerical = (
        model.doppler.broaden(flux, rv_t, width_sq + step)
        - model.doppler.broaden(flux, rv_t, width_sq - step)
    ) / (2 * step)
    assert torch.allclose(d_width, numerical, atol=1e-7)
    rng = np.random.default_rng(13)
    noisy = broadened.numpy() * 50.0
    noisy = noisy + 0.5 * rng.standard_normal(noisy.shape)  # S/N ~ 100
    fitter = LabelFitter.from_emulator(emulator, fit_broadening=True)
    result = fitter.fit(torch.tensor(noisy), torch.full(noisy.shape, 4.0), list("abcdef"))
    assert np.all(result["converged"])
    assert np.all(np.abs(result["broadening"] - sigma_true)[1:] < 10.0), result["broadening"]
    assert result["broadening"][0] < 20.0
    assert np.abs(result["rv"] - rv).max() < 1.0
    assert np.abs(result["fe_h"] - labels[:, 3]).max() < 0.05
    assert "broadening_err" in fitter.column_units()


def test_exposures_of_one_star_share_labels_and_keep_their_own_rv(emulator):
    from phdl.fit.joint import fit_exposures
    from phdl.fit.model import SpectrumModel

    truth = random_labels(emulator, 3, seed=14)
    counts = [1, 2, 4]
    flux, ivar, velocities = [], [], []
    for star, count in enumerate(counts):
        rv = np.linspace(-120.0, 90.0, count) + 10.0 * star
        f, w = observe(emulator, np.repeat(truth[star : star + 1], count, 0), snr=50.0, rv=rv,
                       seed=20 + star)  # fmt: skip
        flux.append(torch.tensor(f))
        ivar.append(torch.tensor(w))
        velocities.append(rv)
    result = fit_exposures(SpectrumModel(emulator), flux, ivar)
    assert result["rv"].shape == (3, 4) and np.isnan(result["rv"][0, 1:]).all()
    assert np.all(result["converged"])
    for star, count in enumerate(counts):
        assert np.abs(result["rv"][star, :count] - velocities[star]).max() < 2.0
        pulls = (result["labels"][star] - truth[star]) / result["labels_err"][star]
        assert np.all(np.abs(pulls) < 5.0), pulls
    # four exposures constrain [Fe/H] about twice as well as each of them alone
    single = LabelFitter.from_emulator(emulator).fit(flux[2], ivar[2], list("abcd"))
    k = FEW_LABELS.index("fe_h")
    ratio = np.median(single["fe_h_err"]) / result["labels_err"][2, k]
    assert 1.6 < ratio < 2.5, ratio


@pytest.fixture(scope="module")
def lineless_emulator():
    """The toy emulator plus [Eu/Fe], which no line of the window responds to."""
    emulator = toy_emulator((*FEW_LABELS, "eu_fe"))
    emulator.network.response[:, -1] = 0.0
    return emulator


def test_label_prior_holds_an_unconstrained_label_and_says_so(lineless_emulator):
    emulator = lineless_emulator
    labels = random_labels(emulator, 6, seed=30)
    flux, ivar = observe(emulator, labels, snr=100.0, rv=np.zeros(6), seed=31)
    flux, ivar, ids = torch.tensor(flux), torch.tensor(ivar), list("abcdef")
    free = LabelFitter.from_emulator(emulator).fit(flux, ivar, ids)
    assert np.all(free["flag"] & FLAG_BITS["SINGULAR_FISHER"])  # maximum likelihood: no [Eu/Fe]
    fitter = LabelFitter.from_emulator(emulator, label_prior={"eu_fe": [0.1, 0.2]})
    result = fitter.fit(flux, ivar, ids)
    # no information: the posterior is the prior, and the catalogue says so
    assert np.allclose(result["eu_fe"], 0.1, atol=1e-4)
    assert np.allclose(result["eu_fe_err"], 0.2, rtol=1e-3)
    assert np.all(result["eu_fe_flag"] == FLAG_BITS["PRIOR_DOMINATED"])
    assert all(np.all(result[f"{name}_flag"] == 0) for name in FEW_LABELS)
    assert np.all(result["flag"] == 0)  # an unmeasured abundance does not flag the star
    # the other labels and the spectrum's own chi2 are those of a fit without [Eu/Fe]
    held = LabelFitter.from_emulator(emulator, fit_labels=list(FEW_LABELS)).fit(flux, ivar, ids)
    for name in FEW_LABELS:
        assert np.abs(result[name] - held[name]).max() < 0.1 * held[f"{name}_err"].min(), name
    assert np.allclose(result["chi2"], held["chi2"], rtol=1e-3)
    assert fitter.header()["PRIOR"] is True


def test_label_prior_combines_with_the_likelihood_as_gaussians_do(emulator):
    """Posterior = likelihood x prior for Gaussians (linear regime: per star, prior centred one
    likelihood error away): 1/err^2 adds up, the label moves by the inverse-variance weight,
    and <label>_flag marks the label PRIOR_DOMINATED once the prior holds more information than
    the spectrum."""
    labels = random_labels(emulator, 3, seed=32)
    flux, ivar = observe(emulator, labels, snr=30.0, rv=np.zeros(3), seed=33)
    flux, ivar = torch.tensor(flux), torch.tensor(ivar)
    free = LabelFitter.from_emulator(emulator, fit_rv=False).fit(flux, ivar, list("abc"))
    for star in range(3):
        value, sigma = float(free["mg_fe"][star]), float(free["mg_fe_err"][star])
        for width in (2.0, 0.5):  # prior sigma in units of the likelihood error
            fitter = LabelFitter.from_emulator(
                emulator, fit_rv=False, label_prior={"mg_*": [value + sigma, width * sigma]}
            )
            result = fitter.fit(flux[star : star + 1], ivar[star : star + 1], ["x"])
            weight = 1 / width**2  # prior information / likelihood information
            posterior = sigma / np.sqrt(1 + weight)
            assert result["mg_fe_err"][0] == pytest.approx(posterior, rel=0.03)
            moved = value + sigma * weight / (1 + weight)
            assert result["mg_fe"][0] == pytest.approx(moved, abs=0.1 * posterior)
            prior_held = FLAG_BITS["PRIOR_DOMINATED"] if width < 1 else 0
            assert result["mg_fe_flag"][0] == prior_held


def test_joint_fit_counts_the_label_prior_once_per_star(lineless_emulator):
    from phdl.fit.joint import fit_exposures
    from phdl.fit.model import SpectrumModel

    truth = random_labels(lineless_emulator, 1, seed=34)
    flux, ivar = observe(lineless_emulator, np.repeat(truth, 3, 0), snr=50.0,
                         rv=np.array([-40.0, 0.0, 40.0]), seed=35)  # fmt: skip
    model = SpectrumModel(lineless_emulator, label_prior={"eu_fe": [0.0, 0.3]})
    result = fit_exposures(model, [torch.tensor(flux)], [torch.tensor(ivar)])
    assert result["labels_err"][0, -1] == pytest.approx(0.3, rel=1e-3)  # not 0.3 / sqrt(3)
    assert result["labels"][0, -1] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize(
    ("prior", "error", "match"),
    [
        ({"zz_fe": [0.0, 0.2]}, KeyError, "matches none of the fitted labels"),
        ({"mg_fe": [0.0, 0.0]}, ValueError, "sigma must be > 0"),
        ({"mg_fe": [0.0]}, ValueError, r"must be \(mean, sigma\)"),
    ],
)
def test_bad_label_prior_is_refused_when_the_model_is_built(emulator, prior, error, match):
    from phdl.fit.model import SpectrumModel

    with pytest.raises(error, match=match):
        SpectrumModel(emulator, label_prior=prior)


def test_emulator_error_is_added_to_the_noise():
    """An emulator error as large as the noise doubles each pixel's variance: Fisher errors grow
    by sqrt(2) and chi2_red halves; emulator_error=False (or no stored error) changes nothing."""
    emulator = toy_emulator()
    labels = random_labels(emulator, 8, seed=40)
    snr = 80.0
    flux, ivar = observe(emulator, labels, snr=snr, rv=np.zeros(8), seed=41)
    flux, ivar, ids = torch.tensor(flux), torch.tensor(ivar), [str(i) for i in range(8)]
    plain = LabelFitter.from_emulator(emulator).fit(flux, ivar, ids)
    # observe(): noise sigma = median(flux) / snr with a continuum of ~100 times a normalised
    # flux near 1, so an error of 1 / snr in normalised flux is about the noise
    emulator.flux_error = np.full(emulator.n_pixels, 1.0 / snr)
    fitter = LabelFitter.from_emulator(emulator)
    assert fitter.header()["EMUERR"] is True
    inflated = fitter.fit(flux, ivar, ids)
    for name in ("teff", "fe_h", "mg_fe"):
        ratio = np.median(inflated[f"{name}_err"] / plain[f"{name}_err"])
        assert 1.25 < ratio < 1.55, (name, ratio)
    assert 0.35 < np.median(inflated["chi2_red"]) < 0.65
    assert np.median(plain["chi2_red"]) == pytest.approx(1.0, abs=0.1)
    ignored = LabelFitter.from_emulator(emulator, emulator_error=False).fit(flux, ivar, ids)
    np.testing.assert_allclose(ignored["teff_err"], plain["teff_err"], rtol=1e-6)
