"""Plain torch emulator networks (no Lightning): scaled labels (B, L) -> normalised flux (B, P)."""

from __future__ import annotations

import dataclasses

from torch import nn

from phdl.models.base import SpectrumEmulator
from phdl.models.mlp import MLPConfig, PayneMLP
from phdl.models.transformer import SpectrumTransformer, TransformerConfig

#: Network name (as in configs: `model: transformer`) -> (network class, its config dataclass).
NETWORKS: dict[str, tuple[type[nn.Module], type]] = {
    "transformer": (SpectrumTransformer, TransformerConfig),
    "mlp": (PayneMLP, MLPConfig),
}


def build_network(name: str, n_labels: int, n_pixels: int, **sizes) -> nn.Module:
    """Build network `name` for n_labels labels and n_pixels pixels.

    `sizes` may hold options of every network (e.g. all of EmulatorModule's size arguments);
    each network takes the ones its config dataclass declares and ignores the rest.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown emulator network '{name}'; choose one of {sorted(NETWORKS)}")
    network_class, config_class = NETWORKS[name]
    fields = {f.name for f in dataclasses.fields(config_class)}
    options = {key: value for key, value in sizes.items() if key in fields}
    return network_class(config_class(n_labels=n_labels, n_pixels=n_pixels, **options))


__all__ = [
    "NETWORKS",
    "MLPConfig",
    "PayneMLP",
    "SpectrumEmulator",
    "SpectrumTransformer",
    "TransformerConfig",
    "build_network",
]
