"""The label space and the one label scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phdl.labels import DEFAULT_LABELS, LabelScaling, is_abundance, label_unit, pretty_label


def test_default_label_space_is_the_design_one():
    assert len(DEFAULT_LABELS) == 30
    assert DEFAULT_LABELS[:4] == ("teff", "logg", "vmic", "fe_h")
    assert "eu_fe" in DEFAULT_LABELS and "mg_fe" in DEFAULT_LABELS
    assert (
        label_unit("teff") == "K"
        and label_unit("vmic") == "km / s"
        and label_unit("ba_fe") == "dex"
    )
    assert is_abundance("mg_fe") and not is_abundance("fe_h")
    assert pretty_label("mg_fe") == "[Mg/Fe]" and pretty_label("fe_h") == "[Fe/H]"


def test_scaling_round_trip_and_range():
    rng = np.random.default_rng(1)
    labels = np.c_[rng.uniform(4000, 7000, 50), rng.uniform(1, 5, 50)]
    scaling = LabelScaling.fit(["teff", "logg"], labels)
    scaled = scaling.to_scaled(labels)
    assert scaled.min() == pytest.approx(-0.5) and scaled.max() == pytest.approx(0.5)
    np.testing.assert_allclose(scaling.to_physical(scaled), labels)
    t = torch.tensor(labels, dtype=torch.float64)
    torch.testing.assert_close(scaling.to_physical(scaling.to_scaled(t)), t)
    assert LabelScaling.from_dict(scaling.to_dict()) == scaling


def test_gradient_chain_rule_matches_finite_differences():
    scaling = LabelScaling(("teff", "fe_h"), (4000.0, -1.0), (7000.0, 0.5))

    def flux_of_scaled(s):  # any smooth function of the scaled labels, (L,) -> (P,)
        return torch.stack([torch.sin(3 * s[0]) * s[1], s[0] ** 2 + torch.exp(s[1])])

    physical = torch.tensor([5500.0, -0.3], dtype=torch.float64)
    d_scaled = torch.autograd.functional.jacobian(
        flux_of_scaled, scaling.to_scaled(physical)
    ).T  # (L, P)
    d_physical = scaling.gradient_to_physical(d_scaled)
    for j, step in enumerate([1.0, 1e-4]):
        e = torch.zeros(2, dtype=torch.float64)
        e[j] = step
        fd = (
            flux_of_scaled(scaling.to_scaled(physical + e))
            - flux_of_scaled(scaling.to_scaled(physical - e))
        ) / (2 * step)
        torch.testing.assert_close(d_physical[j], fd, rtol=1e-6, atol=1e-9)


def test_constant_label_and_bad_input():
    scaling = LabelScaling.fit(["teff", "vmic"], np.array([[5000.0, 1.0], [6000.0, 1.0]]))
    assert scaling.maximum[1] - scaling.minimum[1] == 1.0
    with pytest.raises(ValueError, match="duplicate"):
        LabelScaling(("teff", "teff"), (0.0, 0.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="expected labels of shape"):
        LabelScaling.fit(["teff"], np.zeros((0, 1)))
    with pytest.raises(KeyError, match="unknown label 'mg_fe'"):
        scaling.index("mg_fe")
