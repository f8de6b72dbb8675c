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

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Normalised flux (B, P) from scaled labels (B, L)."""
        if labels.shape[-1] != self.config.n_labels:
            raise ValueError(
                f"transformer: expected {self.config.n_labels} labels, got shape {tuple(labels.shape)}"
            )
        x = self.position[None] + self.label_embedding(labels)[:, None, :]  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        patches = self.head(self.norm(x))  # (B, T, patch_size)
        # The last patch may overhang the spectrum: drop the padding pixels.
        return patches.flatten(1)[:, : self.config.n_pixels].contiguous()
