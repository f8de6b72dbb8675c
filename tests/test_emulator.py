"""GridDataModule batches and EmulatorModule's loss: split, scaling, units, jvp term, checkpoints."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

import phdl.emulator
from phdl.data.grid import GridDataModule, split_indices
from phdl.emulator import CombinedLoss, EmulatorModule, emulator_arguments, load_emulator
from phdl.grid import GridError
from phdl.labels import LabelScaling
from phdl.models import SpectrumEmulator

TINY = dict(patch_size=16, d_model=32, n_layers=1, n_heads=2, d_ff=64, label_hidden=32)


def _first_batch(datamodule: GridDataModule, stage: str = "train") -> dict:
    datamodule.setup("fit")
    loader = getattr(datamodule, f"{stage}_dataloader")()
    return next(iter(loader))


# -- datamodule ---------------------------------------------------------------------------------
def test_split_is_seeded_disjoint_and_complete():
    train, val, test = split_indices(100, 0.1, 0.2, seed=3)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(100))
    again = split_indices(100, 0.1, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(split_indices(100, 0.1, 0.2, seed=4)[0], train)
    with pytest.raises(ValueError, match="val_fraction=0.6 and test_fraction=0.5"):
        split_indices(10, 0.6, 0.5, seed=0)


def test_scaling_is_fitted_on_training_split_only(toy_grid):
    datamodule = GridDataModule(str(toy_grid), val_fraction=0.25, test_fraction=0.25)
    labels = datamodule.info.labels
    expected = LabelScaling.fit(datamodule.info.label_names, labels[datamodule.train_indices])
    assert datamodule.label_scaling == expected
    assert datamodule.label_scaling != LabelScaling.fit(datamodule.info.label_names, labels)


def test_batch_format(toy_grid):
    datamodule = GridDataModule(str(toy_grid), batch_size=8)
    batch = _first_batch(datamodule)
    n_labels, n_pixels = 5, 96
    assert batch["labels"].shape == (8, n_labels) and batch["labels"].dtype == torch.float32
    assert batch["flux"].shape == (8, n_pixels)
    assert batch["gradients"].shape == (8, n_labels, n_pixels)
    assert (
        batch["gradient_mask"].shape == (8, n_labels) and batch["gradient_mask"].dtype == torch.bool
    )
    assert batch["index"].dtype == torch.int64
    assert batch["labels"].abs().max() <= 0.5 + 1e-6
    # gradients are in physical units: exactly what the file holds
    with h5py.File(toy_grid) as f:
        index = int(batch["index"][0])
        np.testing.assert_array_equal(batch["gradients"][0].numpy(), f["gradients"][index])
        np.testing.assert_array_equal(batch["flux"][0].numpy(), f["flux"][index])
    assert len(datamodule.gradient_scale) == n_labels
    assert all(s > 0 for s in datamodule.gradient_scale)


def test_missing_gradients_are_masked_and_zero(toy_grid):
    with h5py.File(toy_grid, "r+") as f:
        gradients = f["gradients"][...]
        gradients[:, 1] = np.nan  # logg never computed
        f["gradients"][...] = gradients
    datamodule = GridDataModule(str(toy_grid), batch_size=16, gradient_labels=["logg", "mg_fe"])
    assert datamodule.gradient_names == ("logg", "mg_fe")
    batch = _first_batch(datamodule)
    assert batch["gradients"].shape == (16, 2, 96)
    assert not batch["gradient_mask"][:, 0].any() and batch["gradient_mask"][:, 1].all()
    assert torch.all(batch["gradients"][:, 0] == 0)
    assert torch.isfinite(batch["gradients"]).all()


def test_clear_errors_for_bad_grid_options(toy_grid, tmp_path):
    with pytest.raises(GridError, match="gradient_labels \\['vmic'\\] have no gradient spectra"):
        GridDataModule(str(toy_grid), gradient_labels=["vmic"])
    with pytest.raises(GridError, match="no such grid file"):
        GridDataModule(str(tmp_path / "missing.h5"))


def test_workers_open_their_own_file(toy_grid):
    datamodule = GridDataModule(str(toy_grid), batch_size=16, num_workers=2)
    datamodule.setup("fit")
    assert datamodule.train_dataset.reader._file is None  # nothing opened before pickling
    indices = torch.cat([b["index"] for b in datamodule.train_dataloader()])
    assert sorted(indices.tolist()) == sorted(datamodule.train_indices.tolist())


# -- the gradient term --------------------------------------------------------------------------
class ExactToyNetwork(nn.Module):
    """The conftest toy grid's flux written as a network of scaled labels (exact by design)."""

    def __init__(self, datamodule: GridDataModule, physical_lo, physical_hi) -> None:
        super().__init__()
        # flux = 1 - sum_l (0.2 + 0.3 u_l) P_l,  u = (physical - lo) / (hi - lo) in [0, 1]
        self.scaling = datamodule.label_scaling
        self.register_buffer("lo", torch.tensor(physical_lo, dtype=torch.float32))
        self.register_buffer("hi", torch.tensor(physical_hi, dtype=torch.float32))
        wavelength = torch.tensor(datamodule.wavelength, dtype=torch.float32)
        centres = torch.linspace(5005.0, 5095.0, 2 * len(physical_lo))
        profile = torch.exp(-0.5 * ((wavelength[None] - centres[:, None]) / 0.6) ** 2)
        self.register_buffer("profile", profile.view(len(physical_lo), 2, -1).sum(1))

    def forward(self, scaled: torch.Tensor) -> torch.Tensor:
        physical = self.scaling.to_physical(scaled)
        u = (physical - self.lo) / (self.hi - self.lo)
        return 1.0 - (0.2 + 0.3 * u) @ self.profile


def _module(datamodule: GridDataModule, **kwargs) -> EmulatorModule:
    return EmulatorModule.from_datamodule(datamodule, **{**TINY, **kwargs})


def test_gradient_term_is_zero_for_the_exact_emulator(toy_grid):
    """Chain rule and units end to end: the true model has no flux and no gradient error."""
    from phdl.labels import DEFAULT_RANGES

    datamodule = GridDataModule(str(toy_grid), batch_size=16)
    names = datamodule.info.label_names
    lo = [DEFAULT_RANGES[n][0] for n in names]
    hi = [DEFAULT_RANGES[n][1] for n in names]
    module = _module(datamodule, gradient_weight=1.0, gradient_directions=3)
    module.network = ExactToyNetwork(datamodule, lo, hi)
    batch = _first_batch(datamodule)
    columns = module.sample_directions(batch["gradient_mask"])
    flux, derivatives = module.directional_derivatives(batch["labels"], columns)
    torch.testing.assert_close(flux, batch["flux"], atol=1e-4, rtol=0)  # float32 round trip
    per_pair = module.gradient_errors(derivatives, batch["gradients"], columns)
    assert per_pair.shape == (16, 3)
    assert per_pair.max() < 1e-8
    # while a wrong unit (forgetting the chain rule) would be far off
    assert (
        derivatives * module.label_span[columns][..., None]
        - batch["gradients"].gather(1, columns[..., None].expand(-1, -1, 96))
    ).abs().max() > 1e-2


@pytest.mark.parametrize("normalise", ["typical", "spectrum"])
def test_dense_directions_are_zero_for_the_exact_emulator_and_average_to_one_hot(
    toy_grid, normalise
):
    """'dense' sampling: no error for the exact model; for any other model its expected loss is
    the mean of the per-label normalised errors that one-hot directions measure one at a time."""
    from phdl.labels import DEFAULT_RANGES

    datamodule = GridDataModule(str(toy_grid), batch_size=4)
    names = datamodule.info.label_names
    module = _module(datamodule, gradient_weight=1.0, gradient_sampling="dense",
                     gradient_directions=4000, gradient_normalise=normalise).double()  # fmt: skip
    batch = {
        k: v.double() if v.is_floating_point() else v for k, v in _first_batch(datamodule).items()
    }
    mask = batch["gradient_mask"]
    mask[1, 2] = False  # a spectrum without one of its gradient spectra
    _, dense = module.dense_gradient_errors(batch["labels"], batch["gradients"], mask)
    columns = torch.arange(len(names)).expand(4, -1)
    _, derivatives = module.directional_derivatives(batch["labels"], columns)
    one_hot = module.gradient_errors(derivatives, batch["gradients"], columns) * mask
    expected = one_hot.sum(1) / mask.sum(1)
    torch.testing.assert_close(dense.mean(1), expected, rtol=0.1, atol=0)

    exact = ExactToyNetwork(datamodule, [DEFAULT_RANGES[n][0] for n in names],
                            [DEFAULT_RANGES[n][1] for n in names])  # fmt: skip
    module.network = exact.double()
    _, dense = module.dense_gradient_errors(batch["labels"], batch["gradients"], mask)
    assert dense.max() < 1e-7  # float32 grid and scaling; a wrong model scores ~1


def test_spectrum_normalised_loss_is_the_squared_relative_error_that_validation_reports(toy_grid):
    """gradient_normalise='spectrum': each (spectrum, label) loss term is exactly the square of
    the floored relative error that validation logs (and phdl.report computes), so training
    minimises what is measured; 'typical' weighs every spectrum by one size per label instead."""
    datamodule = GridDataModule(str(toy_grid), batch_size=6)
    batch = {
        k: v.double() if v.is_floating_point() else v for k, v in _first_batch(datamodule).items()
    }
    gradients = batch["gradients"].clone()
    gradients[0, 1] *= 1e-3  # a spectrum where one label barely moves the flux: the floor acts
    module = _module(datamodule, gradient_weight=1.0, gradient_normalise="spectrum").double()
    k = gradients.shape[1]
    columns = torch.arange(k).expand(gradients.shape[0], -1)
    _, derivatives = module.directional_derivatives(batch["labels"], columns)
    loss = module.gradient_errors(derivatives, gradients, columns)  # (B, K)
    floor = module.gradient_floor.double() * gradients.shape[-1] ** 0.5
    relative = (derivatives - gradients).norm(dim=-1) / torch.maximum(gradients.norm(dim=-1), floor)
    torch.testing.assert_close(loss, relative.square())
    typical = _module(datamodule, gradient_weight=1.0, gradient_normalise=True).double()
    typical.network = module.network
    assert typical.hparams.gradient_normalise == "typical"
    assert not torch.allclose(typical.gradient_errors(derivatives, gradients, columns), loss)
    with pytest.raises(ValueError, match="gradient_normalise='per-pixel'"):
        _module(datamodule, gradient_normalise="per-pixel")


def test_jvp_derivatives_equal_full_jacobian_through_scaling(toy_grid):
    datamodule = GridDataModule(str(toy_grid), batch_size=4)
    module = _module(datamodule).double()
    labels = _first_batch(datamodule)["labels"].double()
    columns = torch.tensor([[0, 3], [1, 2], [4, 0], [2, 2]])
    _, derivatives = module.directional_derivatives(labels, columns)
    jacobian = torch.stack(
        [torch.func.jacrev(lambda row: module.network(row[None])[0])(row) for row in labels]
    )  # (B, P, L) w.r.t. scaled labels
    physical = datamodule.label_scaling.gradient_to_physical(jacobian.transpose(1, 2))  # (B, L, P)
    label_of = module.gradient_label_index[columns]
    expected = physical.gather(1, label_of[..., None].expand(-1, -1, physical.shape[-1]))
    torch.testing.assert_close(derivatives, expected)


def test_single_spectrum_batch(toy_grid):
    """A last batch of one spectrum (as DDP ranks get) must work too."""
    datamodule = GridDataModule(str(toy_grid), batch_size=1)
    module = _module(datamodule, gradient_weight=1.0, gradient_directions=3)
    labels = _first_batch(datamodule)["labels"]
    flux, derivatives = module.directional_derivatives(labels, torch.tensor([[0, 1, 2]]))
    assert flux.shape == (1, 96) and derivatives.shape == (1, 3, 96)


def test_emulator_derivative_in_physical_units_matches_finite_difference(toy_grid):
    """SpectrumEmulator.flux(physical) differentiated numerically == the module's jvp derivative."""
    datamodule = GridDataModule(str(toy_grid), batch_size=2)
    module = _module(datamodule).double()
    emulator = SpectrumEmulator(
        module.network, datamodule.label_scaling, datamodule.wavelength
    ).double()
    scaled = _first_batch(datamodule)["labels"].double()
    physical = datamodule.label_scaling.to_physical(scaled)
    _, derivatives = module.directional_derivatives(scaled, torch.tensor([[0], [0]]))  # Teff
    step = torch.zeros_like(physical)
    step[:, 0] = 0.5  # K
    numeric = (emulator.flux(physical + step) - emulator.flux(physical - step)) / 1.0
    torch.testing.assert_close(derivatives[:, 0], numeric, rtol=1e-5, atol=1e-9)


def test_lambda_zero_never_differentiates(toy_grid, monkeypatch):
    datamodule = GridDataModule(str(toy_grid), batch_size=8)
    module = _module(datamodule, gradient_weight=0.0)
    module.log = lambda *args, **kwargs: None

    def forbidden(*args, **kwargs):
        raise AssertionError("jvp called although gradient_weight = 0")

    monkeypatch.setattr(phdl.emulator, "network_jvp", forbidden)
    batch = _first_batch(datamodule)
    loss = module.training_step(batch, 0)
    expected = (module.network(batch["labels"]) - batch["flux"]).square().mean()
    torch.testing.assert_close(loss, expected)


def _at_step(monkeypatch, step: int) -> None:
    """Pretend every EmulatorModule is at optimiser step `step` (no Trainer attached)."""
    monkeypatch.setattr(EmulatorModule, "global_step", property(lambda self: step))


def test_gradient_weight_schedule(toy_grid, monkeypatch):
    datamodule = GridDataModule(str(toy_grid), batch_size=8)
    module = _module(
        datamodule, gradient_weight=2.0, gradient_start_step=10, gradient_warmup_steps=4,
        gradient_every=2,
    )  # fmt: skip
    weights = []
    for step in (0, 9, 10, 11, 12, 13, 14, 20, 21):
        _at_step(monkeypatch, step)
        weights.append(module.current_gradient_weight())
    assert weights == [0.0, 0.0, 0.5, 0.0, 1.5, 0.0, 2.0, 2.0, 0.0]


def test_gradient_term_enters_the_loss(toy_grid, monkeypatch):
    datamodule = GridDataModule(str(toy_grid), batch_size=8)
    module = _module(datamodule, gradient_weight=2.0)
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    _at_step(monkeypatch, 5)
    loss = module.training_step(_first_batch(datamodule), 0)
    assert logged["train/gradient_weight"] == 2.0
    assert logged["train/loss_gradient"] > 0
    torch.testing.assert_close(
        loss, logged["train/loss_flux"] + 2.0 * logged["train/loss_gradient"]
    )
    loss.backward()
    assert all(p.grad is not None for p in module.network.label_embedding.parameters())


def test_relative_balance_scales_the_gradient_term_to_the_flux_term(toy_grid, monkeypatch):
    datamodule = GridDataModule(str(toy_grid), batch_size=8)
    module = _module(datamodule, gradient_weight=0.5, gradient_balance="relative")
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    _at_step(monkeypatch, 5)
    loss = module.training_step(_first_batch(datamodule), 0)
    torch.testing.assert_close(loss, 1.5 * logged["train/loss_flux"])
    effective = logged["train/gradient_weight"]
    torch.testing.assert_close(
        effective * logged["train/loss_gradient"], 0.5 * logged["train/loss_flux"]
    )


def test_error_sampling_prefers_badly_learnt_labels(toy_grid):
    datamodule = GridDataModule(str(toy_grid), batch_size=8)
    module = _module(
        datamodule, gradient_weight=1.0, gradient_sampling="error", gradient_directions=1
    )
    module.gradient_error.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0, 50.0]))
    mask = torch.ones(4000, 5, dtype=torch.bool)
    counts = torch.bincount(module.sample_directions(mask).flatten(), minlength=5)
    assert counts[4] > 2 * counts[:4].max()
    mask[:, 4] = False  # never a label without a gradient spectrum
    assert 4 not in module.sample_directions(mask).flatten().tolist()


def test_combined_loss_names_its_parts():
    loss = CombinedLoss({"flux": 1.0, "gradient": 0.5})
    assert loss({"flux": torch.tensor(2.0), "gradient": torch.tensor(4.0)}) == 4.0
    assert loss({"flux": torch.tensor(2.0)}) == 2.0
    with pytest.raises(KeyError, match="curvature"):
        loss({"curvature": torch.tensor(1.0)})


def test_module_needs_the_grid_description():
    with pytest.raises(ValueError, match="needs the grid's label_scaling and wavelength"):
        EmulatorModule()


# -- checkpoints --------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["transformer", "mlp"])
def test_checkpoint_reloads_through_load_emulator(toy_grid, tmp_path, model):
    datamodule = GridDataModule(str(toy_grid), batch_size=16)
    module = _module(datamodule, model=model, mlp_hidden=16, gradient_weight=0.5, warmup_steps=1)
    trainer = Trainer(
        accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        num_sanity_val_steps=0, limit_val_batches=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    path = tmp_path / "emulator.ckpt"
    trainer.save_checkpoint(path)

    emulator = load_emulator(path)
    assert isinstance(emulator, SpectrumEmulator)
    assert not emulator.training
    assert not any(p.requires_grad for p in emulator.parameters())
    assert emulator.label_names == datamodule.label_scaling.names
    assert emulator.label_scaling == datamodule.label_scaling
    np.testing.assert_array_equal(emulator.wavelength, datamodule.wavelength)
    assert emulator.medium == "vacuum" and emulator.resolution == 1800.0
    physical = torch.tensor(datamodule.info.labels[:5])
    module.eval()
    with torch.no_grad():
        expected = module(datamodule.label_scaling.to_scaled(physical.double()).float())
    torch.testing.assert_close(emulator.flux(physical), expected, rtol=0, atol=1e-6)


def test_load_emulator_refuses_other_checkpoints(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1.0}}, path)
    with pytest.raises(ValueError, match="not an EmulatorModule checkpoint"):
        load_emulator(path)


def test_emulator_arguments_are_plain(toy_grid):
    arguments = emulator_arguments(GridDataModule(str(toy_grid)))
    assert isinstance(arguments["label_scaling"], dict)
    assert all(type(w) is float for w in arguments["wavelength"])
    assert arguments["gradient_names"] == ["teff", "logg", "fe_h", "mg_fe", "ca_fe"]


def test_gradient_term_on_a_subset_of_the_batch(toy_grid, monkeypatch):
    """gradient_spectra=n: derivatives of the first n spectra only, the flux term on all."""
    datamodule = GridDataModule(str(toy_grid), batch_size=8)
    module = _module(datamodule, gradient_weight=1.0, gradient_spectra=3, gradient_directions=2)
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    seen = []
    real_jvp = phdl.emulator.network_jvp

    def spy(network, labels, tangents):
        seen.append(tuple(tangents.shape[:2]))
        return real_jvp(network, labels, tangents)

    monkeypatch.setattr(phdl.emulator, "network_jvp", spy)
    _at_step(monkeypatch, 5)
    batch = _first_batch(datamodule)
    module.training_step(batch, 0)
    assert seen == [(3, 2)]  # 3 spectra x 2 directions
    expected_flux = (module.network(batch["labels"]) - batch["flux"]).square().mean()
    torch.testing.assert_close(logged["train/loss_flux"], expected_flux)
    assert logged["train/loss_gradient"] > 0
    with pytest.raises(ValueError, match="gradient_spectra must be >= 1"):
        _module(datamodule, gradient_spectra=0)


def test_checkpoint_carries_the_validation_rms_per_pixel(toy_grid, tmp_path):
    """flux_error = rms over all validation spectra per pixel, measured at the last validation."""
    datamodule = GridDataModule(str(toy_grid), batch_size=8, val_fraction=0.2)
    module = _module(datamodule, warmup_steps=1)
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, num_sanity_val_steps=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    path = tmp_path / "emulator.ckpt"
    trainer.save_checkpoint(path)
    emulator = load_emulator(path)
    labels = torch.tensor(datamodule.info.labels[datamodule.val_indices])
    with h5py.File(toy_grid, "r") as grid:
        flux = torch.tensor(grid["flux"][:][datamodule.val_indices])
    with torch.no_grad():
        predicted = emulator.flux(labels.float())
    expected = (predicted - flux.float()).square().mean(0).sqrt().numpy()
    assert emulator.flux_error.shape == (emulator.n_pixels,)
    np.testing.assert_allclose(emulator.flux_error, expected, rtol=1e-4, atol=1e-7)
    # a checkpoint saved before any validation has it unmeasured: the fitter then ignores it
    untrained = tmp_path / "untrained.ckpt"
    state = torch.load(path, weights_only=True)
    state["state_dict"]["flux_error"] = torch.full_like(state["state_dict"]["flux_error"], -1.0)
    torch.save(state, untrained)
    assert load_emulator(untrained).flux_error is None
