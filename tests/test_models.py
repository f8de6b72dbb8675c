"""Emulator networks: shapes, and the double derivative the gradient prior needs (on CPU)."""

from __future__ import annotations

import pytest
import torch
from torch.func import jvp

from phdl.models import PayneMLP, SpectrumTransformer, TransformerConfig, build_network
from phdl.models.base import network_jvp
from phdl.models.transformer import SelfAttention

TINY = dict(patch_size=16, d_model=32, n_layers=2, n_heads=4, d_ff=64, label_hidden=32)


@pytest.mark.parametrize("n_pixels", [96, 100, 3800])
def test_transformer_shapes(n_pixels):
    network = build_network("transformer", n_labels=5, n_pixels=n_pixels, **TINY)
    assert isinstance(network, SpectrumTransformer)
    assert network.config.n_tokens == -(-n_pixels // 16)
    flux = network(torch.rand(3, 5) - 0.5)
    assert flux.shape == (3, n_pixels)
    assert flux.is_contiguous()


def test_mlp_shapes_and_payne_architecture():
    network = build_network("mlp", n_labels=7, n_pixels=50, patch_size=16)  # foreign size ignored
    assert isinstance(network, PayneMLP)
    widths = [m.out_features for m in network.net if isinstance(m, torch.nn.Linear)]
    assert widths == [300, 300, 50]
    flux = network(torch.rand(4, 7) - 0.5)
    assert flux.shape == (4, 50)
    assert torch.all((flux > 0) & (flux < 1))  # sigmoid output, like normalised flux


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown emulator network 'cnn'"):
        build_network("cnn", 5, 10)
    network = build_network("transformer", n_labels=5, n_pixels=32, **TINY)
    with pytest.raises(ValueError, match="expected 5 labels"):
        network(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        SpectrumTransformer(TransformerConfig(n_labels=5, n_pixels=32, d_model=30, n_heads=4))


def test_jvp_backward_matches_finite_differences():
    """Parameter gradients of |d flux / d label|^2 (the gradient term) against finite differences.

    Guards the written-out forward mode (network_jvp) and the explicit LayerNorm: with torch
    2.13's fused F.layer_norm, backpropagating through torch.func.jvp is wrong on CPU.
    """
    torch.manual_seed(2)
    network = build_network("transformer", n_labels=4, n_pixels=40, **TINY).double()
    labels = torch.rand(3, 4, dtype=torch.float64) - 0.5
    tangent = torch.nn.functional.one_hot(torch.tensor([1, 0, 3]), 4).double()[:, None]

    def objective() -> torch.Tensor:
        return network_jvp(network, labels, tangent)[1].square().sum()

    objective().backward()
    step = 1e-6
    for parameter in (network.position, network.blocks[0].norm_ff.weight, network.norm.bias):
        # the last norm's bias cannot change d flux / d label: no gradient (None) is right
        analytic = 0.0 if parameter.grad is None else parameter.grad.flatten()[3].item()
        with torch.no_grad():
            parameter.view(-1)[3] += step
            plus = objective().item()
            parameter.view(-1)[3] -= 2 * step
            minus = objective().item()
            parameter.view(-1)[3] += step
        assert analytic == pytest.approx((plus - minus) / (2 * step), rel=1e-5, abs=1e-10)


def test_double_backward_through_attention_on_cpu():
    """d/d theta of (d flux / d label): what the gradient term needs (fused CPU SDPA lacks it)."""
    torch.manual_seed(0)
    attention = SelfAttention(TransformerConfig(d_model=16, n_heads=2))
    x = torch.randn(2, 5, 16, requires_grad=True)
    (first,) = torch.autograd.grad(attention(x).square().sum(), x, create_graph=True)
    first.square().sum().backward()
    assert attention.qkv.weight.grad is not None
    assert torch.isfinite(attention.qkv.weight.grad).all()
    assert attention.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["transformer", "mlp"])
def test_jvp_then_backward_matches_reverse_over_reverse(name):
    """Forward-mode jvp + backward gives the same parameter gradients as double backward."""
    torch.manual_seed(1)
    network = build_network(name, n_labels=4, n_pixels=40, **TINY).double()
    labels = torch.rand(3, 4, dtype=torch.float64) - 0.5
    tangent = torch.nn.functional.one_hot(torch.tensor([0, 2, 3]), 4).double()

    _, derivative = network_jvp(network, labels, tangent[:, None])
    derivative[:, 0].square().sum().backward()
    # a parameter that cannot change d flux / d label (output bias) may get None or zeros
    via_jvp = [
        torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in network.parameters()
    ]
    network.zero_grad()

    x = labels.clone().requires_grad_(True)
    flux = network(x)
    reference = torch.stack(
        [
            torch.autograd.grad(flux[:, pixel].sum(), x, create_graph=True)[0]
            for pixel in range(flux.shape[1])
        ],
        dim=1,
    )  # (B, P, L)
    (reference * tangent[:, None, :]).sum(-1).square().sum().backward()
    for a, p in zip(via_jvp, network.parameters()):
        torch.testing.assert_close(a, torch.zeros_like(p) if p.grad is None else p.grad)


class _Foreign(torch.nn.Module):
    """A network without its own jvp: network_jvp falls back to torch.func.jvp."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 40)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer(labels)) ** 2


@pytest.mark.parametrize("name", ["transformer", "mlp", "foreign"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_written_out_jvp_equals_torch_func_jvp(name, dropout):
    """network_jvp with K tangents at once == K calls of torch.func.jvp: value, derivatives and
    the parameter gradients of a loss on both (what training backpropagates)."""
    torch.manual_seed(3)
    if name == "foreign":
        network = _Foreign().double()
    else:
        network = build_network(name, n_labels=4, n_pixels=40, dropout=dropout, **TINY).double()
        network.eval()  # dropout off: the same function on both sides
    labels = torch.rand(3, 4, dtype=torch.float64) - 0.5
    tangents = torch.randn(3, 5, 4, dtype=torch.float64)

    def gradients(flux, derivatives):
        network.zero_grad()
        (flux.sin().sum() + derivatives.square().sum()).backward()
        return [
            torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in network.parameters()
        ]

    flux, derivatives = network_jvp(network, labels, tangents)
    assert flux.shape == (3, 40) and derivatives.shape == (3, 5, 40)
    mine = gradients(flux, derivatives)
    pairs = [jvp(network, (labels,), (tangents[:, k],)) for k in range(5)]
    reference_flux, reference = pairs[0][0], torch.stack([d for _, d in pairs], dim=1)
    torch.testing.assert_close(flux, reference_flux)
    # float64; torch.func's sigmoid tangent y (1 - y) loses ~1e-11 where the MLP saturates
    torch.testing.assert_close(derivatives, reference, rtol=1e-7, atol=1e-10)
    for a, b in zip(mine, gradients(reference_flux, reference)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_transformer_jvp_with_dropout_in_training_uses_one_mask():
    """In training mode the value and its derivative see the same dropout mask: the derivative
    is then that of a fixed thinned network, so it is linear in the tangent."""
    torch.manual_seed(4)
    network = build_network("transformer", n_labels=4, n_pixels=40, dropout=0.5, **TINY).double()
    network.train()
    labels = torch.rand(2, 4, dtype=torch.float64) - 0.5
    a, b = torch.randn(2, 1, 4, dtype=torch.float64), torch.randn(2, 1, 4, dtype=torch.float64)
    torch.manual_seed(5)
    _, derivatives = network_jvp(network, labels, torch.cat([a, b, a + b], dim=1))
    torch.testing.assert_close(derivatives[:, 2], derivatives[:, 0] + derivatives[:, 1])


def test_jvp_tangent_shape_error():
    network = build_network("transformer", n_labels=4, n_pixels=40, **TINY)
    with pytest.raises(ValueError, match=r"tangents must be \(B, K, L\)"):
        network.jvp(torch.zeros(2, 4), torch.zeros(2, 4))
