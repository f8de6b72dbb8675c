"""The label space: names, units, default ranges and the one label scaling used everywhere.

Inside networks labels live in [-0.5, 0.5] (the training grid's min/max mapped linearly);
everything that leaves a network (fluxes' derivatives, fitted labels) is converted back to
physical units here, never anywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: Elements with an [X/Fe] label, in the default order of DESIGN section 2.
ABUNDANCE_ELEMENTS: tuple[str, ...] = (
    "C", "N", "O", "Na", "Mg", "Al", "Si", "K", "Ca", "Sc", "Ti", "V", "Cr",
    "Mn", "Co", "Ni", "Cu", "Zn", "Sr", "Y", "Zr", "Ba", "La", "Ce", "Nd", "Eu",
)  # fmt: skip

STELLAR_LABELS: tuple[str, ...] = ("teff", "logg", "vmic", "fe_h")

#: The default 30 labels: Teff, logg, vmic, [Fe/H] and 26 [X/Fe].
DEFAULT_LABELS: tuple[str, ...] = STELLAR_LABELS + tuple(
    f"{element.lower()}_fe" for element in ABUNDANCE_ELEMENTS
)

#: Physical units of each label (FITS/astropy unit strings).
LABEL_UNITS: dict[str, str] = {"teff": "K", "logg": "dex", "vmic": "km / s", "fe_h": "dex"} | {
    f"{element.lower()}_fe": "dex" for element in ABUNDANCE_ELEMENTS
}

#: Default sampling ranges (FGK dwarfs, subgiants and K giants), physical units.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "teff": (4000.0, 7000.0),
    "logg": (1.0, 5.0),
    "vmic": (0.5, 2.5),
    "fe_h": (-1.5, 0.5),
} | {f"{element.lower()}_fe": (-0.4, 0.4) for element in ABUNDANCE_ELEMENTS}


def label_unit(name: str) -> str:
    """Unit of a label; [X/Fe]-style names not in the default list are taken as dex."""
    if name in LABEL_UNITS:
        return LABEL_UNITS[name]
    if name.endswith("_fe") or name.endswith("_h"):
        return "dex"
    return ""


def is_abundance(name: str) -> bool:
    """True for [X/Fe] labels (the weak-lined ones the gradient prior is for)."""
    return name.endswith("_fe") and name != "fe_h"


def pretty_label(name: str) -> str:
    """Label name as an astronomer writes it: 'mg_fe' -> '[Mg/Fe]', 'teff' -> 'Teff'."""
    special = {"teff": "Teff", "logg": "log g", "vmic": "vmic", "fe_h": "[Fe/H]"}
    if name in special:
        return special[name]
    if is_abundance(name):
        return f"[{name[:-3].capitalize()}/Fe]"
    return name


#: Flux change across a label's whole range below which its gradient spectrum counts as noise.
GRADIENT_FLOOR = 1e-3


@dataclass(frozen=True)
class LabelScaling:
    """Linear map between physical labels and network labels in [-0.5, 0.5].

    scaled = (physical - minimum) / (maximum - minimum) - 0.5. Derivatives with respect to
    scaled labels become derivatives with respect to physical labels by dividing by `span`.
    """

    names: tuple[str, ...]
    minimum: tuple[float, ...]
    maximum: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.minimum) == len(self.maximum)):
            raise ValueError(
                f"label scaling: {len(self.names)} names but {len(self.minimum)} minima and "
                f"{len(self.maximum)} maxima"
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"label scaling: duplicate label names in {list(self.names)}")
        for name, lo, hi in zip(self.names, self.minimum, self.maximum):
            if not np.isfinite(lo) or not np.isfinite(hi):
                raise ValueError(f"label scaling: range of '{name}' is not finite: [{lo}, {hi}]")

    @classmethod
    def fit(cls, names: Sequence[str], labels: np.ndarray) -> LabelScaling:
        """Scaling from the min/max of a (N, L) array of physical labels.

        A label that does not vary in the grid gets a span of 1 (its scaled value is then
        constant and its derivative is still converted correctly).
        """
        labels = np.asarray(labels, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[1] != len(names) or labels.shape[0] == 0:
            raise ValueError(
                f"label scaling: expected labels of shape (N>0, {len(names)}), got {labels.shape}"
            )
        lo, hi = labels.min(axis=0), labels.max(axis=0)
        hi = np.where(hi > lo, hi, lo + 1.0)
        return cls(tuple(names), tuple(float(v) for v in lo), tuple(float(v) for v in hi))

    @property
    def n_labels(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Position of a label; a clear error names the labels that exist."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown label '{name}'; this model has {list(self.names)}") from None

    def gradient_floor(self, names: Sequence[str], flux: float = GRADIENT_FLOOR) -> np.ndarray:
        """Smallest |d flux / d label| per pixel that matters, for each named label: `flux`
        across the label's whole range [flux per label unit]. Gradient sizes and relative
        gradient errors are floored at it, so a label with no lines in the window is not
        measured against ~0."""
        span = self.span()
        return np.array([flux / span[self.index(name)] for name in names])

    def span(self, like: torch.Tensor | None = None) -> torch.Tensor | np.ndarray:
        """maximum - minimum per label, as a tensor like `like` or a numpy array."""
        span = np.asarray(self.maximum) - np.asarray(self.minimum)
        if like is None:
            return span
        return torch.as_tensor(span, dtype=like.dtype, device=like.device)

    def _bounds(self, like):
        if isinstance(like, torch.Tensor):
            lo = torch.as_tensor(self.minimum, dtype=like.dtype, device=like.device)
            hi = torch.as_tensor(self.maximum, dtype=like.dtype, device=like.device)
        else:
            lo, hi = np.asarray(self.minimum), np.asarray(self.maximum)
        return lo, hi

    def to_scaled(self, physical):
        """Physical labels (..., L) -> network labels in [-0.5, 0.5] inside the grid."""
        lo, hi = self._bounds(physical)
        return (physical - lo) / (hi - lo) - 0.5

    def to_physical(self, scaled):
        """Network labels (..., L) -> physical labels."""
        lo, hi = self._bounds(scaled)
        return (scaled + 0.5) * (hi - lo) + lo

    def gradient_to_physical(self, d_flux_d_scaled):
        """d flux / d scaled label (..., L, P) -> d flux / d physical label (chain rule)."""
        lo, hi = self._bounds(d_flux_d_scaled)
        return d_flux_d_scaled / (hi - lo)[..., :, None]

    def to_dict(self) -> dict:
        """Plain (JSON/YAML-safe) form stored in checkpoints."""
        return {
            "names": list(self.names),
            "minimum": list(self.minimum),
            "maximum": list(self.maximum),
        }

    @classmethod
    def from_dict(cls, state: dict) -> LabelScaling:
        return cls(
            tuple(state["names"]),
            tuple(float(v) for v in state["minimum"]),
            tuple(float(v) for v in state["maximum"]),
        )
