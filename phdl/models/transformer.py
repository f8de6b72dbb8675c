"""SpectrumTransformer: scaled labels (B, L) -> normalised flux (B, P), in one short file.

The spectrum is cut into patches of `patch_size` neighbouring pixels; each patch is one token.
A token starts as "where am I" (a learned wavelength-position embedding, initialised
sinusoidally) plus "which star is this" (an MLP embedding of the labels, the same for every
token); encoder blocks let tokens exchange information (a line of one species in the blue can
inform its lines in the red); a linear head turns each token back into its patch's fluxes.

Attention and layer norm are written out (matmul, softmax, mean, variance) on purpose: the
gradient prior differentiates d flux / d label once more during training; torch's fused
scaled-dot-product attention on CPU has no double-backward (DESIGN section 7), and
backpropagating through the jvp of the fused layer norm gives wrong gradients (measured here,
torch 2.13 CPU). The explicit forms are also the readable ones.

Every layer also has a `jvp(x, dx)`: its output and its forward-mode derivative along K tangents
at once (dx carries an extra K axis after the batch axis), written out with the chain rule. It
is what the gradient prior, the fitter's Jacobian and the report use instead of
`torch.func.jvp`, whose per-operation overhead made a derivative of 4 spectra cost 8x their
forward pass here (torch 2.13 CPU, 334 pixels); tests/test_models.py holds it equal to
`torch.func.jvp`, parameter gradients through it included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class TransformerConfig:
    """Sizes of a SpectrumTransformer; defaults suit ~4000 pixels and ~30 labels."""

    n_labels: int = 30
    n_pixels: int = 4000
    patch_size: int = 32  # pixels per token: 4000 px -> 125 tokens
    d_model: int = 128  # token width
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512  # feed-forward hidden width
    label_hidden: int = 256  # hidden width of the label embedding MLP
    dropout: float = 0.0

    @property
    def n_tokens(self) -> int:
        return math.ceil(self.n_pixels / self.patch_size)


def linear_jvp(layer: nn.Linear, x: torch.Tensor, dx: torch.Tensor):
    """A linear layer and its derivative: (x W^T + b, dx W^T)."""
    return layer(x), F.linear(dx, layer.weight)


def gelu_jvp(x: torch.Tensor, dx: torch.Tensor):
    """Exact (erf) GELU and its derivative Phi(x) + x phi(x) along dx (K axis second)."""
    cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * x.square()) * (1.0 / math.sqrt(2.0 * math.pi))
    return x * cdf, (cdf + x * pdf).unsqueeze(1) * dx


def dropout_mask(dropout: nn.Dropout, x: torch.Tensor) -> torch.Tensor | None:
    """Dropout's scaled keep mask for x (None in eval mode or with p = 0)."""
    if not dropout.training or dropout.p == 0.0:
        return None
    return torch.bernoulli(torch.full_like(x, 1.0 - dropout.p)) / (1.0 - dropout.p)


def dropout_jvp(dropout: nn.Dropout, x: torch.Tensor, dx: torch.Tensor):
    """Dropout with one mask for the value and every tangent (identity in eval mode or p = 0)."""
    keep = dropout_mask(dropout, x)
    if keep is None:
        return x, dx
    return x * keep, dx * keep.unsqueeze(1)


def sinusoidal_encoding(n_positions: int, width: int) -> torch.Tensor:
    """Classic sin/cos position encoding (n_positions, width), as in Vaswani et al. (2017)."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(1e4) / width))
    encoding = torch.zeros(n_positions, width)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)[:, : width // 2]
    return encoding


class LayerNorm(nn.Module):
    """Layer norm written out with mean and variance.

    Measured with torch 2.13 on CPU: backpropagating through the forward-mode derivative (jvp)
    of the fused `F.layer_norm` gives wrong parameter gradients (the jvp itself is right); this
    explicit form agrees with finite differences (tests/test_models.py keeps it that way).
    """

    def __init__(self, width: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=-1, keepdim=True)
        variance = centred.square().mean(dim=-1, keepdim=True)
        return centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias

    def jvp(self, x: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Value (B, ..., D) and derivative (B, K, ..., D) along tangents dx (B, K, ..., D)."""
        centred = x - x.mean(dim=-1, keepdim=True)
        inverse = torch.rsqrt(centred.square().mean(dim=-1, keepdim=True) + self.eps)
        normed = centred * inverse
        d_centred = dx - dx.mean(dim=-1, keepdim=True)
        # d rsqrt(v) = -v^(-3/2) dv / 2 with dv = 2 mean(c dc): d normed = r (dc - n mean(n dc))
        normed_k, inverse_k = normed.unsqueeze(1), inverse.unsqueeze(1)
        d_normed = inverse_k * (
            d_centred - normed_k * (normed_k * d_centred).mean(dim=-1, keepdim=True)
        )
        return normed * self.weight + self.bias, d_normed * self.weight


class SelfAttention(nn.Module):
    """Multi-head self-attention over the wavelength tokens (no causal mask: all see all)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError(
                f"transformer: d_model={config.d_model} is not divisible by n_heads={config.n_heads}"
            )
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # (B, T, D) -> (B, heads, T, D / heads)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        # Explicit attention (twice differentiable on every device, unlike fused SDPA on CPU).
        weights = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, heads, T, T)
        weights = self.dropout(F.softmax(weights, dim=-1))
        y = (weights @ v).transpose(1, 2).reshape(b, t, d)
        return self.dropout(self.proj(y))

    def jvp(self, x: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Value (B, T, D) and derivative (B, K, T, D) along tangents dx (B, K, T, D).

        The (B, K, heads, T, T) tangents of the attention weights are the big arrays here, so
        they are formed once: d scores = dq k^T + q dk^T as one matmul over the two operands
        side by side, and the softmax derivative w (ds - sum(w ds)) only as it is multiplied
        by v: (w ds) v - sum(w ds) (w v). w dv is one matmul over all K tangents, without K
        copies of w.
        """
        b, t, d = x.shape
        n_k, h = dx.shape[1], self.n_heads
        dh = d // h
        qkv, d_qkv = linear_jvp(self.qkv, x, dx)
        q, k, v = (z.view(b, t, h, dh).transpose(1, 2) for z in qkv.split(d, dim=-1))
        dq, dk, dv = (
            z.reshape(b, n_k, t, h, dh).transpose(2, 3) for z in d_qkv.split(d, dim=-1)
        )  # (B, K, heads, T, D / heads)
        scale = 1.0 / math.sqrt(dh)
        weights = F.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)  # (B, heads, T, T)
        expand = (b, n_k, h, t, dh)
        left = torch.cat([dq, q.unsqueeze(1).expand(expand)], dim=-1) * scale
        right = torch.cat([k.unsqueeze(1).expand(expand), dk], dim=-1)
        weighted = weights.unsqueeze(1) * (left @ right.transpose(-2, -1))  # w ds
        row = weighted.sum(-1, keepdim=True)  # sum(w ds), (B, K, heads, T, 1)
        keep = dropout_mask(self.dropout, weights)  # one mask for w and its tangents
        if keep is not None:
            weights, weighted = weights * keep, weighted * keep.unsqueeze(1)
        out = weights @ v  # (B, heads, T, D / heads)
        # w dv for all tangents: dv as (B, heads, T, K D / heads)
        w_dv = weights @ dv.permute(0, 2, 3, 1, 4).reshape(b, h, t, n_k * dh)
        w_dv = w_dv.view(b, h, t, n_k, dh).permute(0, 3, 1, 2, 4)
        d_out = weighted @ v.unsqueeze(1) - row * out.unsqueeze(1) + w_dv
        y = out.transpose(1, 2).reshape(b, t, d)
        dy = d_out.transpose(2, 3).reshape(b, n_k, t, d)
        return dropout_jvp(self.dropout, *linear_jvp(self.proj, y, dy))


class FeedForward(nn.Module):
    """Per-token MLP: where each token turns label information into line shapes."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff),
            nn.GELU(),
            nn.Linear(config.d_ff, config.d_model),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def jvp(self, x: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Value (B, T, D) and derivative (B, K, T, D) along tangents dx (B, K, T, D)."""
        inner, outer, dropout = self.net[0], self.net[2], self.net[3]
        hidden, d_hidden = gelu_jvp(*linear_jvp(inner, x, dx))
        return dropout_jvp(dropout, *linear_jvp(outer, hidden, d_hidden))


class Block(nn.Module):
    """Pre-norm encoder block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.norm_attention = LayerNorm(config.d_model)
        self.attention = SelfAttention(config)
        self.norm_ff = LayerNorm(config.d_model)
        self.ff = FeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm_attention(x))
        return x + self.ff(self.norm_ff(x))

    def jvp(self, x: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Value (B, T, D) and derivative (B, K, T, D) along tangents dx (B, K, T, D)."""
        y, dy = self.attention.jvp(*self.norm_attention.jvp(x, dx))
        x, dx = x + y, dx + dy
        y, dy = self.ff.jvp(*self.norm_ff.jvp(x, dx))
        return x + y, dx + dy


class SpectrumTransformer(nn.Module):
    """Transformer emulator: scaled labels (B, L) in [-0.5, 0.5] -> normalised flux (B, P)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        # Wavelength encoding: one learned vector per patch, started from sin/cos so that
        # neighbouring patches begin similar.
        self.position = nn.Parameter(sinusoidal_encoding(config.n_tokens, d))
        # Parameter embedding: the labels enter every token through the same small MLP.
        self.label_embedding = nn.Sequential(
            nn.Linear(config.n_labels, config.label_hidden),
            nn.GELU(),
            nn.Linear(config.label_hidden, d),
        )
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = LayerNorm(d)
        self.head = nn.Linear(d, config.patch_size)  # token -> its patch's fluxes
        # Normalised fluxes sit near 1 (the continuum): start there, with small line depths.
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.ones_(self.head.bias)

    def _check(self, labels: torch.Tensor) -> None:
        if labels.shape[-1] != self.config.n_labels:
            raise ValueError(
                f"transformer: expected {self.config.n_labels} labels, got shape {tuple(labels.shape)}"
            )

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Normalised flux (B, P) from scaled labels (B, L)."""
        self._check(labels)
        x = self.position[None] + self.label_embedding(labels)[:, None, :]  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        patches = self.head(self.norm(x))  # (B, T, patch_size)
        # The last patch may overhang the spectrum: drop the padding pixels.
        return patches.flatten(1)[:, : self.config.n_pixels].contiguous()

    def jvp(
        self, labels: torch.Tensor, tangents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flux (B, P) and its derivatives (B, K, P) along K label tangents (B, K, L) per spectrum.

        Forward mode written out: the value is computed once, each tangent costs about one more
        forward pass of the linear layers, and autograd differentiates the result as usual.
        """
        self._check(labels)
        if tangents.dim() != 3 or tangents.shape[::2] != labels.shape:
            raise ValueError(
                f"transformer: tangents must be (B, K, L) = ({labels.shape[0]}, K, "
                f"{labels.shape[1]}), got {tuple(tangents.shape)}"
            )
        first, _, second = self.label_embedding  # Linear, GELU, Linear
        hidden, d_hidden = gelu_jvp(*linear_jvp(first, labels, tangents))
        embedded, d_embedded = linear_jvp(second, hidden, d_hidden)  # (B, D), (B, K, D)
        x = self.position[None] + embedded[:, None, :]  # (B, T, D)
        dx = d_embedded[:, :, None, :].expand(-1, -1, x.shape[1], -1)  # (B, K, T, D)
        for block in self.blocks:
            x, dx = block.jvp(x, dx)
        patches, d_patches = linear_jvp(self.head, *self.norm.jvp(x, dx))
        n = self.config.n_pixels
        flux = patches.flatten(1)[:, :n].contiguous()
        return flux, d_patches.flatten(2)[..., :n].contiguous()
