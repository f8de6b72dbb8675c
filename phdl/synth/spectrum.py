"""The synthesis pipeline: labels -> atmosphere and EOS -> opacities -> flux -> R, LAMOST grid.

Exact gradient spectra d flux / d label cost far less than 30 forward-mode passes because the
work splits in two:
  * a small part, labels -> per-depth state (atmosphere, populations, widths), whose Jacobian
    is taken by forward mode (torch.func.jacfwd, 30 tangents on ~10^3 numbers);
  * a large part, per fine wavelength, where each wavelength's flux depends only on that
    wavelength's opacities and on the per-depth state. One reverse pass of sum(flux) with the
    per-depth inputs *expanded per wavelength* gives every d flux(lambda) / d input(lambda, d)
    at once (the Jacobian is diagonal in wavelength); line opacity sensitivities are contracted
    line by line with the exact Voigt partials. The chain rule to the labels is then a few
    matrix products. The result is the exact derivative of the computed spectrum (tested
    against central finite differences).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from phdl.data.lamost import lamost_wavelength
from phdl.labels import DEFAULT_LABELS
from phdl.synth.continuum import continuum_opacity
from phdl.synth.eos import (
    DissociationConstant,
    PartitionFunction,
    PartitionFunctions,
    depth_state,
)
from phdl.synth.hydrogen import hydrogen_opacity
from phdl.synth.kernels import (
    CORE_GRADIENT_TERMS,
    CORE_PROFILE,
    LINE_PARAMETERS,
    LINE_PROFILE,
    LINE_TANGENT_COEFFICIENTS,
    PLANCK_FLUX,
    PLANCK_FLUX_AND_SENSITIVITIES,
    WING_GRADIENT_TERMS,
)
from phdl.synth.lines import (
    ASYMPTOTIC_RADIUS,
    HC_OVER_K_ANGSTROM,
    SQRT_PI,
    LineData,
    taylor_table,
)

#: Atomic numbers of the elements with an [X/Fe] label.
ELEMENT_Z: dict[str, int] = {
    "C": 6, "N": 7, "O": 8, "Na": 11, "Mg": 12, "Al": 13, "Si": 14, "K": 19, "Ca": 20,
    "Sc": 21, "Ti": 22, "V": 23, "Cr": 24, "Mn": 25, "Co": 27, "Ni": 28, "Cu": 29, "Zn": 30,
    "Sr": 38, "Y": 39, "Zr": 40, "Ba": 56, "La": 57, "Ce": 58, "Nd": 60, "Eu": 63,
}  # fmt: skip
#: [X/Fe] labels averaged into the atmosphere's [alpha/M].
ALPHA_LABELS = ("o_fe", "mg_fe", "si_fe", "ca_fe", "ti_fe")
#: [alpha/M] span of the shipped atmospheres (Castelli-Kurucz ODFNEW and AODFNEW).
ALPHA_M_RANGE = (0.0, 0.4)


@dataclass
class SynthInputs:
    """The input data the physics needs (atmospheres, atomic data, lines), in one object.

    `atmosphere(teff, logg, m_h, alpha_m)` returns a dict of (D,) tensors temperature [K],
    gas_pressure [dyn cm^-2], electron_density [cm^-3], column_mass [g cm^-2],
    log_tau_ross, differentiable in its arguments; given (B,) label tensors it may return
    (B, D) tensors (one call for a batch; otherwise it is called once per row). `solar_abundance` A(X) and masses [amu] per
    atomic number; `ionisation_ev` the first two ionisation energies per Z.
    """

    atmosphere: Callable[..., dict[str, torch.Tensor]]
    solar_abundance: dict[int, float]
    masses_amu: dict[int, float]
    ionisation_ev: dict[int, tuple[float, float]]
    partition_function: PartitionFunction
    dissociation: DissociationConstant
    lines: LineData
    species: tuple[float, ...]  # MOOG codes; lines.species_index points into this
    description: str = "custom"
    #: optional batched U(T) of atoms, (codes, T (D,)) -> (codes, D): one op for all species
    partition_functions: PartitionFunctions | None = None


@dataclass
class SynthConfig:
    """Numerical settings of the synthesis (defaults: DESIGN section 8 accuracy targets)."""

    fine_step: float = 0.02  # Angstrom at the blue end; log-uniform internal grid
    margin: float = 20.0  # Angstrom computed beyond the output range on each side
    window_threshold: float = 1e-3  # line/continuum opacity ratio at a window edge
    min_line_strength: float = 1e-3  # lines weaker than this (peak ratio) are dropped
    min_half_width: float = 0.1  # Angstrom
    max_half_width: float = 20.0  # Angstrom; strong lines need >= 2 A (DESIGN section 8)
    strong_half_width: float = 3.0  # Angstrom, at least, for lines with peak ratio > 100
    #: fine steps per continuum node (a multiple of the hydrogen and wing strides)
    continuum_stride: int = 96
    wing_stride: int = 8  # fine steps per far-wing node (0: every line on the fine grid)
    core_half_width: int = 32  # fine steps, at least: lines with wider windows get coarse wings
    hydrogen_stride: int = 8  # fine steps per hydrogen node
    chunk: int = 8192  # fine wavelengths per transfer chunk
    log_tau_top: float = -5.5  # layers above this log tau_Rosseland are dropped
    depth_stride: int = 1
    alpha_from_labels: bool = True
    voigt_dtype: torch.dtype = torch.float32  # H rel. error 4e-6: flux changes < 1e-7
    #: line-opacity partials and their contraction with the state tangents (the gradient
    #: spectra's largest part): float32 halves its memory traffic, relative error ~1e-6
    gradient_dtype: torch.dtype = torch.float32
    #: the line opacity summed on the fine grid (N, D): float32 halves its memory traffic,
    #: the normalised flux changes by < 1e-8
    line_dtype: torch.dtype = torch.float32
    dtype: torch.dtype = torch.float64
    #: fuse the line-opacity and transfer kernels with torch.compile (phdl.synth.kernels):
    #: ~2x faster per spectrum (with or without gradients), but the first call compiles
    #: (~100 s on 2 cores with a cold cache, ~15-40 s warm): it pays for grids, not one spectrum;
    #: `phdl synth --compile auto` decides from the size of the run
    compile: bool = False


@dataclass
class LinePlan:
    """Which lines are computed and over how many fine pixels (fixed for gradients and FD).

    Lines in `buckets` are computed on the fine grid over their whole window. Lines in
    `wing_buckets` are computed on the fine grid only within about `core` pixels of the centre;
    beyond it (out to `half`) their Voigt wings are evaluated on every `wing_stride`-th fine
    pixel and linearly interpolated (Synthesizer.line_opacity): the wing is smooth on the scale
    of its distance from the centre, so far fewer profile evaluations give the same opacity.

    Beyond `inner` pixels from its centre a line has |v + i a| >= 6.5 at every depth: its
    profile there is the asymptotic Voigt series alone, several times cheaper than the
    table-Taylor branch that the pixels nearer the centre need.
    """

    lines: LineData
    centre: torch.Tensor  # (L,) fine-grid index of each line centre
    half_width: torch.Tensor  # (L,) pixels
    inner: torch.Tensor  # (L,) pixels
    #: (half width, line indices), pixels; the indices of a bucket are a contiguous range
    buckets: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    #: (core half width, window half width, line indices), pixels; contiguous likewise
    wing_buckets: list[tuple[int, int, torch.Tensor]] = field(default_factory=list)
    #: Synthesizer._line_chunks, made once per plan (they depend on nothing else)
    chunks: list | None = field(default=None, repr=False)


class Synthesizer:
    """Synthesise continuum-normalised spectra and exact gradient spectra from labels."""

    def __init__(
        self,
        inputs: SynthInputs,
        wavelength: np.ndarray | None = None,
        resolution: float = 1800.0,
        label_names: Sequence[str] = DEFAULT_LABELS,
        config: SynthConfig | None = None,
    ) -> None:
        self.inputs = inputs
        self.config = config or SynthConfig()
        self.label_names = tuple(label_names)
        unknown = [n for n in self.label_names if n not in DEFAULT_LABELS]
        if unknown:
            raise ValueError(f"phdl.synth: unknown labels {unknown}; known: {list(DEFAULT_LABELS)}")
        self.resolution = float(resolution)
        self.wavelength = np.asarray(
            lamost_wavelength(3700.0, 9100.0) if wavelength is None else wavelength,
            dtype=np.float64,
        )
        if self.wavelength.ndim != 1 or np.any(np.diff(self.wavelength) <= 0):
            raise ValueError("phdl.synth: output wavelength must be 1-d and increasing (Angstrom)")
        cfg = self.config
        sigma_ln = 1.0 / (self.resolution * 2.0 * math.sqrt(2.0 * math.log(2.0)))
        lo, self.ln_step, n = fine_grid(self.wavelength, self.resolution, cfg)
        self.ln_lambda0 = math.log(lo)
        self.fine = torch.as_tensor(lo * np.exp(self.ln_step * np.arange(n)), dtype=cfg.dtype)
        self.continuum_grid = self.fine[:: cfg.continuum_stride]
        self.hydrogen_grid = self.fine[:: cfg.hydrogen_stride]
        self._kernel = self._sampling_matrix(sigma_ln)
        self._depth_index: torch.Tensor | None = None

    # ------------------------------------------------------------------ labels and state
    def label_tensor(
        self, labels: Mapping[str, float] | torch.Tensor | Sequence[float]
    ) -> torch.Tensor:
        """Labels as a tensor in `label_names` order; missing [X/Fe] default to 0."""
        if isinstance(labels, Mapping):
            missing = [n for n in ("teff", "logg", "fe_h") if n not in labels]
            if missing:
                raise KeyError(f"phdl.synth: labels {missing} are required")
            extra = [n for n in labels if n not in self.label_names]
            if extra:
                raise KeyError(f"phdl.synth: unknown labels {extra}; expected {self.label_names}")
            defaults = {"vmic": 1.0}
            values = [float(labels.get(n, defaults.get(n, 0.0))) for n in self.label_names]
            return torch.tensor(values, dtype=self.config.dtype)
        theta = torch.as_tensor(labels, dtype=self.config.dtype)
        if theta.shape != (len(self.label_names),):
            raise ValueError(
                f"phdl.synth: expected {len(self.label_names)} labels {self.label_names}, "
                f"got shape {tuple(theta.shape)}"
            )
        return theta

    def _get(self, theta: torch.Tensor, name: str, default: float) -> torch.Tensor:
        """Label `name` of (B, K) labels as a (B,) tensor (the default where it is not a label)."""
        if name in self.label_names:
            return theta[:, self.label_names.index(name)]
        return torch.full(theta.shape[:1], default, dtype=theta.dtype)

    def state(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-depth state (atmosphere, populations) as a differentiable function of labels."""
        return {
            k: v[..., 0, :] if k != "vmic" else v[0]
            for k, v in self._batch_state(theta[None]).items()
        }

    def state_jacobian(
        self, theta: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The state and its Jacobian d state / d label, each (*shape, K).

        K copies of the labels, copy k to carry the tangent e_k: the EOS is elementwise in
        depth, so the copies ride along the depth axis. The Jacobian-vector products come from
        a double backward (y = state(X); g(u) = u . dy/dX with create_graph; J e_k = dg/du .
        e_k), not forward-mode AD: with torch 2.13 a forward-mode op that mixes a dual tensor
        with a plain one or a Python number runs a Python decomposition (~250 us each against
        ~8 us), and the EOS is ~10^3 such ops (180-250 ms forward mode, 143 ms this way, the
        same numbers to rounding).
        """
        k = theta.shape[0]
        copies = theta.expand(k, k).clone().requires_grad_(True)
        with torch.enable_grad():
            batch = self._batch_state(copies)
            keys = [key for key, value in batch.items() if value.requires_grad]
            outputs = [batch[key] for key in keys]
            dummies = [torch.zeros_like(value, requires_grad=True) for value in outputs]
            (pulled,) = torch.autograd.grad(outputs, copies, dummies, create_graph=True)
            tangents = torch.autograd.grad(
                pulled, dummies, torch.eye(k, dtype=theta.dtype), allow_unused=True
            )
        by_key = dict(zip(keys, tangents))
        state, jac = {}, {}
        for key, value in batch.items():
            value = value.detach()
            tangent = by_key.get(key)
            if tangent is None:
                tangent = torch.zeros_like(value)
            if key == "vmic":
                state[key], jac[key] = value[0], tangent
            else:
                state[key] = value[..., 0, :]
                jac[key] = torch.movedim(tangent, -2, -1)  # (..., D, K)
        return state, jac

    def _batch_state(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """State of B label vectors (B, K): per-depth entries (..., B, D), vmic (B,)."""
        teff = self._get(theta, "teff", 5777.0)
        logg = self._get(theta, "logg", 4.44)
        fe_h = self._get(theta, "fe_h", 0.0)
        vmic = self._get(theta, "vmic", 1.0)
        if self.config.alpha_from_labels:
            alpha = sum(self._get(theta, n, 0.0) for n in ALPHA_LABELS) / len(ALPHA_LABELS)
            # the Kurucz grid holds [alpha/M] = 0 and +0.4 only: beyond them the atmosphere stays
            # at the edge (zero derivative) and the labels act on line opacities alone
            alpha = alpha.clamp(ALPHA_M_RANGE[0], ALPHA_M_RANGE[1])
        else:
            alpha = torch.zeros_like(teff)
        atm = self.inputs.atmosphere(teff, logg, fe_h, alpha)  # (B, D_all) each
        if atm["temperature"].dim() != 2:  # an atmosphere callable for scalar labels only
            rows = [self.inputs.atmosphere(*x) for x in zip(teff, logg, fe_h, alpha)]
            atm = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        if self._depth_index is None:  # fixed once per synthesizer
            keep = atm["log_tau_ross"].detach()[0] >= self.config.log_tau_top
            self._depth_index = torch.nonzero(keep)[:, 0][:: self.config.depth_stride]
        n_batch, n_depth = theta.shape[0], self._depth_index.shape[0]
        # the EOS is elementwise in depth: B copies are B * D "depths"
        atm = {k: v[:, self._depth_index].reshape(-1) for k, v in atm.items()}

        def per_depth(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(n_depth)

        log_abundance = {}
        z_label = {z: f"{el.lower()}_fe" for el, z in ELEMENT_Z.items()}
        for z, a_sun in self.inputs.solar_abundance.items():
            if z == 1:
                log_abundance[z] = torch.tensor(12.0, dtype=theta.dtype)
            elif z == 2:
                log_abundance[z] = torch.tensor(a_sun, dtype=theta.dtype)
            else:
                offset = fe_h + (self._get(theta, z_label[z], 0.0) if z in z_label else 0.0)
                log_abundance[z] = per_depth(a_sun + offset)
        flat = depth_state(
            atm,
            log_abundance,
            self.inputs.masses_amu,
            self.inputs.ionisation_ev,
            self.inputs.partition_function,
            self.inputs.dissociation,
            self.inputs.species,
            per_depth(vmic),
            self.inputs.partition_functions,
        )
        out = {k: v.reshape(*v.shape[:-1], n_batch, n_depth) for k, v in flat.items()}
        out["vmic"] = out["vmic"][:, 0]
        return out

    # ------------------------------------------------------------------ opacities
    @staticmethod
    def _continuum(grid: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        absorption, scattering = continuum_opacity(grid, state)
        return absorption + scattering

    @staticmethod
    def _interp(coarse: torch.Tensor, stride: int, start: int, stop: int) -> torch.Tensor:
        """Linear interpolation (in ln lambda) of (Nc, ...) nodes to fine pixels start..stop-1."""
        first, n, pad, t = _segments(stride, start, stop, coarse.dtype)
        block = _node_block(coarse[first : first + n + 1], n)
        t = t.reshape(1, stride, *([1] * (coarse.dim() - 1)))
        out = (block[:-1, None] * (1 - t) + block[1:, None] * t).reshape(-1, *coarse.shape[1:])
        return out[pad : pad + stop - start]

    def plan(
        self,
        theta: torch.Tensor,
        state: dict[str, torch.Tensor] | None = None,
        continuum: torch.Tensor | None = None,
    ) -> LinePlan:
        """Select lines and window half-widths for these labels (reused for nearby labels);
        `state` and the `continuum` opacity on the continuum grid where already computed."""
        cfg = self.config
        with torch.no_grad():
            state = state if state is not None else self.state(theta)
            lines = self.inputs.lines
            inside = (lines.wavelength > self.fine[0] - cfg.max_half_width) & (
                lines.wavelength < self.fine[-1] + cfg.max_half_width
            )
            lines = lines.subset(inside)
            ln_amp, width, damping = LINE_PARAMETERS(state, lines, compile=cfg.compile)
            cont = (
                continuum if continuum is not None else self._continuum(self.continuum_grid, state)
            )
            pos = (torch.log(lines.wavelength) - self.ln_lambda0) / (
                self.ln_step * cfg.continuum_stride
            )
            j = pos.floor().long().clamp(0, cont.shape[0] - 2)
            t = (pos - j).clamp(0, 1)[:, None]
            cont_at = cont[j] * (1 - t) + cont[j + 1] * t
            amp_rel = torch.exp(ln_amp) / cont_at  # Angstrom
            peak = (amp_rel / (SQRT_PI * width)).max(dim=1).values
            core = width.max(dim=1).values * torch.sqrt(
                torch.log((peak / cfg.window_threshold).clamp(min=1.0))
            )
            wing = (
                torch.sqrt(amp_rel * damping * width / (math.pi * cfg.window_threshold))
                .max(dim=1)
                .values
            )
            half = torch.maximum(core, wing).clamp(cfg.min_half_width, cfg.max_half_width)
            half = torch.where(peak > 100.0, half.clamp(min=cfg.strong_half_width), half)
            keep = peak >= cfg.min_line_strength
            lines = lines.subset(keep)
            half = half[keep]
            doppler = width[keep].max(dim=1).values
            centre = torch.round(
                (torch.log(lines.wavelength) - self.ln_lambda0) / self.ln_step
            ).long()
            pixels = torch.ceil(half / (lines.wavelength * self.ln_step)).long()
            # few distinct half widths (buckets) with little padding
            size = _bucket_size(pixels.clamp(min=2))
            # |v| > 6.5 at every depth beyond `inner` pixels (one pixel of margin for labels
            # near these, which reuse the plan)
            inner = (
                torch.ceil(ASYMPTOTIC_RADIUS * doppler / (lines.wavelength * self.ln_step)).long()
                + 1
            )
            core = torch.zeros_like(size)  # 0: no coarse wings
            stride = cfg.wing_stride
            if stride:
                # the core reaches beyond `inner` (the wings then need only the asymptotic
                # Voigt series); the window (and one wing node) lies inside the grid
                core_px = _bucket_size(inner.clamp(min=cfg.core_half_width))
                wing = (
                    (size > 2 * core_px)
                    & (centre - size - 2 * stride >= 0)
                    & (centre + size + 2 * stride < self.fine.shape[0])
                )
                core = torch.where(wing, core_px, core)
            buckets, wing_buckets = [], []
            # one key per (core, size) pair: torch.unique(dim=0) compares rows one by one
            # (~90 ms for 3e4 lines)
            base = int(size.max()) + 1
            key = core * base + size
            for k in torch.unique(key).tolist():
                c, h = divmod(k, base)
                idx = torch.nonzero(key == k)[:, 0]
                # by species: the gradient contraction takes each species' lines at once
                idx = idx[torch.argsort(lines.species_index[idx], stable=True)]
                if c:
                    wing_buckets.append((int(c), int(h), idx))
                else:
                    buckets.append((int(h), idx))
            # the lines in bucket order, so that every bucket (and chunk) is a contiguous
            # range: its line parameters are then views, not gathers (~40 ms a spectrum)
            order = torch.cat([b[-1] for b in buckets + wing_buckets] + [key[:0]])
            lines = lines.subset(order)
            centre, size, inner = centre[order], size[order], inner[order]
            start, renumbered = 0, []
            for *head, idx in buckets + wing_buckets:
                renumbered.append((*head, torch.arange(start, start + len(idx))))
                start += len(idx)
            buckets, wing_buckets = renumbered[: len(buckets)], renumbered[len(buckets) :]
        return LinePlan(
            lines=lines,
            centre=centre,
            half_width=size,
            inner=inner,
            buckets=buckets,
            wing_buckets=wing_buckets,
        )

    def _line_chunks(self, plan: LinePlan) -> list[tuple[int, int, slice, tuple]]:
        """(core, half width, slice of the plan's lines, _core_inputs) chunks of ~31k line
        pixels each, which bound the (lines x pixels x depth) temporaries; made once per plan.

        core = 0: the whole window on the fine grid; else core pixels plus coarse wings.
        """
        if plan.chunks is None:
            stride = max(self.config.wing_stride, 1)
            buckets = [(0, half, idx) for half, idx in plan.buckets] + plan.wing_buckets
            plan.chunks = []
            for core, half, idx in buckets:
                first = int(idx[0]) if len(idx) else 0
                if not torch.equal(idx, torch.arange(first, first + len(idx))):
                    raise ValueError(
                        "LinePlan: every bucket must hold a contiguous range of line indices"
                        " (Synthesizer.plan orders the lines so)"
                    )
                # pixels per line: the window, or the fine core and the coarse wing nodes
                pixels = 2 * (core + stride + half // stride + 2) - 1 if core else 2 * half + 1
                per = max(1, 31_250 // pixels)
                for start in range(first, first + len(idx), per):
                    sub = slice(start, min(start + per, first + len(idx)))
                    plan.chunks.append((core, half, sub, self._core_inputs(plan, sub, core, half)))
        return plan.chunks

    def _line_windows(self, plan: LinePlan, idx: slice, core: int, half: int):
        """Fine pixels of the line cores and (with wings) the coarse wing nodes, (Lc, W) each.

        Returns (pix, valid, edges, ramps, nodes, node_valid). With wings the fine core runs
        between two wing nodes `left` and `right` (multiples of the stride, `edges` (Lc, 2)),
        and `ramps` (Lc, W, 2) are the two interpolation weights with which the wing's own
        values at `left` and `right` reach into the core; the core subtracts them, so that core
        + interpolated wings is the line profile on [left, right] and its interpolated wing
        beyond. Without wings the ramps are zero and nodes, node_valid None.
        """
        n_fine = self.fine.shape[0]
        centre = plan.centre[idx][:, None]
        if not core:
            pix = centre + torch.arange(-half, half + 1)
            valid = (pix >= 0) & (pix < n_fine)
            edges = centre.clamp(0, n_fine - 1).expand(-1, 2)
            ramps = torch.zeros(*pix.shape, 2, dtype=self.config.dtype)
            return pix.clamp(0, n_fine - 1), valid, edges, ramps, None, None
        stride = self.config.wing_stride
        left = torch.div(centre - core, stride, rounding_mode="floor") * stride
        right = -torch.div(-(centre + core), stride, rounding_mode="floor") * stride
        pix = centre + torch.arange(-(core + stride - 1), core + stride)
        valid = (pix >= left) & (pix <= right)
        ramp_left = (1.0 - (pix - left) / stride).clamp(min=0.0) * valid
        ramp_right = (1.0 - (right - pix) / stride).clamp(min=0.0) * valid
        # wing nodes outward from left and right; the outermost is always beyond the window
        steps = torch.arange(half // stride + 2)
        nodes = torch.cat([left // stride - steps, right // stride + steps], dim=1)
        node_valid = (nodes * stride >= centre - half) & (nodes * stride <= centre + half)
        nodes = nodes.clamp(0, (n_fine - 1) // stride)
        ramps = torch.stack([ramp_left, ramp_right], dim=2).to(self.config.dtype)
        return pix, valid, torch.cat([left, right], dim=1), ramps, nodes, node_valid

    def _core_inputs(self, plan: LinePlan, idx: slice, core: int, half: int):
        """(parts, edges, nodes, node_valid, wing dl) of a chunk of lines: _line_windows with
        the pixels as wavelength offsets from each line's centre [A], split in two `parts`
        (far, pix, valid, dl, ramps): the pixels within the chunk's largest `inner` of the
        centre (far False) and those beyond (far True: the asymptotic Voigt series alone);
        ramps None where no wing interpolation reaches a part (kernels.core_profile)."""
        pix, valid, edges, ramps, nodes, node_valid = self._line_windows(plan, idx, core, half)
        centre = plan.lines.wavelength[idx][:, None]
        dl, edges = _take(self.fine, pix) - centre, _take(self.fine, edges) - centre
        wing_dl = None if nodes is None else self.fine[nodes * self.config.wing_stride] - centre
        middle = pix.shape[1] // 2  # the windows are centred on the line
        n_inner = min(int(plan.inner[idx].max()), middle)
        near = torch.zeros(pix.shape[1], dtype=torch.bool)
        near[middle - n_inner : middle + n_inner + 1] = True
        parts = []
        for far, columns in ((False, near), (True, ~near)):
            if columns.any():
                part_dl = dl[:, columns]
                if far:  # pixels outside the grid (clamped there, masked out): a far stand-in
                    part_dl = torch.where(valid[:, columns], part_dl, 1e3)
                part_ramps = ramps[:, columns]
                if not bool(part_ramps.any()):  # no wing interpolation reaches these pixels
                    part_ramps = None
                parts.append((far, pix[:, columns], valid[:, columns], part_dl, part_ramps))
        return parts, edges, nodes, node_valid, wing_dl

    def _kernel_args(self, dtype: torch.dtype) -> dict:
        """Keyword arguments every line kernel takes (phdl.synth.kernels)."""
        cfg = self.config
        return {
            "table": taylor_table(cfg.voigt_dtype, str(self.fine.device)),
            "voigt_dtype": cfg.voigt_dtype,
            "out_dtype": dtype,
            "compile": cfg.compile,
        }

    def line_opacity(
        self, state: dict[str, torch.Tensor], plan: LinePlan, for_gradients: bool = False
    ):
        """Total line opacity [cm^-1] on the fine grid, (N, D), without autograd; with
        `for_gradients` also what the gradient pass (_line_gradients) reuses: the line
        parameters of plan.lines, (L, D) each, and per chunk and part of _line_chunks the
        Faddeeva function of the pixels nearest the centre ((real, imag), None for far parts):
        its table-Taylor branch is the costliest part of both passes."""
        n_depth = state["temperature"].shape[0]
        n_fine = self.fine.shape[0]
        stride = max(self.config.wing_stride, 1)
        # rows of depth values are added at once (index_add_ along dim 0 is ~4x faster than
        # the same additions as one flat scatter)
        dt = self.config.line_dtype
        kappa = torch.zeros(n_fine, n_depth, dtype=dt)
        wings = torch.zeros((n_fine - 1) // stride + 1, n_depth, dtype=dt)
        kw = self._kernel_args(dt)
        kept = []
        with torch.no_grad():
            parameters = LINE_PARAMETERS(state, plan.lines, compile=self.config.compile)
            for _, _, idx, (parts, edges, nodes, node_valid, wing_dl) in self._line_chunks(plan):
                params = tuple(x[idx] for x in parameters)
                kept.append([])
                for far, pix, valid, dl, ramps in parts:
                    keep_w = for_gradients and not far
                    k, *w = CORE_PROFILE(
                        dl,
                        edges,
                        ramps,
                        valid,
                        *params,
                        far=far,
                        derivatives=False,
                        keep_w=keep_w,
                        **kw,
                    )
                    kept[-1].append(tuple(w) if keep_w else None)
                    kappa.index_add_(0, pix.reshape(-1), k.reshape(-1, n_depth))
                if nodes is not None:
                    (wing,) = LINE_PROFILE(wing_dl, *params, far=True, derivatives=False, **kw)
                    wings.index_add_(
                        0, nodes.reshape(-1), (wing * node_valid[:, :, None]).reshape(-1, n_depth)
                    )
            if plan.wing_buckets:  # chunk by chunk: no (N, D) temporaries
                for start in range(0, n_fine, self.config.chunk):
                    stop = min(start + self.config.chunk, n_fine)
                    kappa[start:stop] += self._interp(wings, stride, start, stop)
        return (kappa, parameters, kept) if for_gradients else kappa

    # ------------------------------------------------------------------ synthesis
    def synthesize(
        self,
        labels: Mapping[str, float] | torch.Tensor | Sequence[float],
        gradients: bool = True,
        plan: LinePlan | None = None,
        return_fine: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised flux (P,) at `wavelength` and gradient spectra (K, P) per unit label.

        With `return_fine`, the unconvolved flux and gradients on the internal fine grid.
        """
        theta = self.label_tensor(labels).detach()
        if gradients:
            state, jac = self.state_jacobian(theta)
            absorption, scattering, cont_partials = continuum_opacity(
                self.continuum_grid, state, partials=True
            )
            cont = absorption + scattering
        else:
            with torch.no_grad():
                state = self.state(theta)
            cont = self._continuum(self.continuum_grid, state)
        plan = plan if plan is not None else self.plan(theta, state, cont)
        if not gradients:
            kappa_line = self.line_opacity(state, plan)
            hyd = hydrogen_opacity(self.hydrogen_grid, state)
            with torch.no_grad():
                flux = self._line_flux_all(state, cont, hyd, kappa_line)
                flux = flux / self._interp_all(self._continuum_flux(state, cont))
            if return_fine:
                return flux, None
            return (self._kernel @ flux[:, None])[:, 0], None
        kappa_line, *reused = self.line_opacity(state, plan, for_gradients=True)
        return self._synthesize_with_gradients(
            theta, state, jac, plan, kappa_line, reused, cont, cont_partials, return_fine
        )

    def _interp_all(self, coarse: torch.Tensor) -> torch.Tensor:
        return self._interp(coarse, self.config.continuum_stride, 0, self.fine.shape[0])

    def _continuum_flux(self, state, cont, sensitivities: bool = False):
        """Continuum flux on the continuum grid (smooth: interpolated to the fine grid); with
        `sensitivities` also its partials by kappa, rho, column mass and T (transfer.py)."""
        return self._transfer(cont, self.continuum_grid, state, sensitivities)

    def _transfer(self, kappa, wavelength, state, sensitivities: bool, partials_dtype=None):
        """transfer.planck_flux (or planck_flux_and_sensitivities, the partials stored in
        `partials_dtype`) of opacity kappa (L, D) at `wavelength` (L,) through the compiled
        kernels."""
        args = (
            kappa,
            state["rho"],
            state["column_mass"],
            state["temperature"],
            HC_OVER_K_ANGSTROM / wavelength,
        )
        if not sensitivities:
            return PLANCK_FLUX(*args, compile=self.config.compile)
        return PLANCK_FLUX_AND_SENSITIVITIES(
            *args, partials_dtype=partials_dtype, compile=self.config.compile
        )

    def _line_flux_all(self, state, cont, hyd, kappa_line) -> torch.Tensor:
        n_fine = self.fine.shape[0]
        flux = torch.empty(n_fine, dtype=self.config.dtype)
        for start in range(0, n_fine, self.config.chunk):
            stop = min(start + self.config.chunk, n_fine)
            flux[start:stop] = self._chunk_flux(start, stop, state, cont, hyd, kappa_line)
        return flux

    def _chunk_flux(self, start, stop, state, cont, hyd, kappa_line, sensitivities=False):
        """Absolute (unnormalised) flux at fine pixels start..stop-1; with `sensitivities` also
        its partials by the total opacity, rho, column mass and T, (stop - start, D) each, in
        gradient_dtype (computed in dtype)."""
        cfg = self.config
        kappa = (
            self._interp(cont, cfg.continuum_stride, start, stop)
            + self._interp(hyd, cfg.hydrogen_stride, start, stop)
            + kappa_line[start:stop]
        )
        return self._transfer(
            kappa, self.fine[start:stop], state, sensitivities, cfg.gradient_dtype
        )

    def _synthesize_with_gradients(
        self, theta, state, jac, plan, kappa_line, reused, cont, cont_partials, return_fine
    ):
        cfg = self.config
        n_fine = self.fine.shape[0]
        n_depth = state["temperature"].shape[0]
        k_labels = theta.shape[0]
        hyd, by_key = hydrogen_opacity(self.hydrogen_grid, state, partials=True)
        hyd_partials = {(key, 0): value for key, value in by_key.items()}

        def tangent_of(key: str, row: int) -> torch.Tensor:
            t = jac[key]
            if key == "vmic":
                return t[None, :].expand(n_depth, k_labels)
            return t[row] if t.dim() == 3 else t

        structure = [
            tangent_of("rho", 0),
            tangent_of("column_mass", 0),
            tangent_of("temperature", 0),
        ]
        cont_tangents = torch.stack(structure + [tangent_of(*key) for key in cont_partials])
        hyd_tangents = torch.stack([tangent_of(*key) for key in hyd_partials])
        cont_stack = torch.stack(list(cont_partials.values()))
        hyd_stack = torch.stack(list(hyd_partials.values()))

        # continuum flux and its gradients on the continuum grid
        fc, d_kappa, *d_structure = self._continuum_flux(state, cont, sensitivities=True)
        sens = d_structure + [d_kappa * p for p in cont_partials.values()]
        dfc = torch.einsum("qcd,qdk->ck", torch.stack(sens), cont_tangents)

        # the un-normalised gradients, d F / d kappa and every product with them in
        # gradient_dtype (float32: half the memory traffic of float64, relative error ~1e-6)
        gdt = cfg.gradient_dtype
        flux = torch.empty(n_fine, dtype=cfg.dtype)
        dflux = torch.zeros(n_fine, k_labels, dtype=gdt)
        g_line = torch.empty(n_fine, n_depth, dtype=gdt)
        structure_tangents = cont_tangents[:3].reshape(-1, k_labels).to(gdt)  # (3 D, K)
        for start in range(0, n_fine, cfg.chunk):
            stop = min(start + cfg.chunk, n_fine)
            f, g, *d_structure = self._chunk_flux(
                start, stop, state, cont, hyd, kappa_line, sensitivities=True
            )
            flux[start:stop] = f
            g_line[start:stop] = g  # d F / d kappa for every opacity source
            dflux[start:stop] += torch.cat(d_structure, dim=1) @ structure_tangents
        wing_nodes = self._line_gradients(state, jac, plan, *reused, g_line, dflux)
        # every opacity interpolated from nodes (continuum, hydrogen, line wings): per node
        # (Q, nodes, D) partials by Q state entries and their (Q, D, K) tangents; the sources
        # on the same nodes are contracted with G together, each stride on its own nodes
        sources = [
            (cfg.continuum_stride, lambda a, b: (cont_stack[:, a:b], cont_tangents[3:])),
            (cfg.hydrogen_stride, lambda a, b: (hyd_stack[:, a:b], hyd_tangents)),
        ]
        if wing_nodes is not None:
            sources.append((cfg.wing_stride, wing_nodes))
        for stride in sorted({s for s, _ in sources}):
            table = _node_table([fn for s, fn in sources if s == stride], cfg.gradient_dtype)
            for start in range(0, n_fine, cfg.chunk):
                stop = min(start + cfg.chunk, n_fine)
                dflux[start:stop] += self._contract_interpolated(
                    g_line[start:stop], table, stride, start, stop
                )
        # normalise: f = F / Fc  =>  df = dF / Fc - F dFc / Fc^2, chunk by chunk (Fc and dFc
        # interpolated there) into the columns of one (N, 1 + K) array to convolve
        out = torch.empty(n_fine, 1 + k_labels, dtype=cfg.dtype)
        for start in range(0, n_fine, cfg.chunk):
            stop = min(start + cfg.chunk, n_fine)
            fc_at = self._interp(fc, cfg.continuum_stride, start, stop)
            norm = flux[start:stop] / fc_at
            out[start:stop, 0] = norm
            torch.addcmul(
                dflux[start:stop] / fc_at[:, None],
                (norm / fc_at)[:, None],
                self._interp(dfc, cfg.continuum_stride, start, stop),
                value=-1.0,
                out=out[start:stop, 1:],
            )
        if return_fine:
            return out[:, 0], out[:, 1:].T
        out = self._kernel @ out
        return out[:, 0], out[:, 1:].T.contiguous()

    @staticmethod
    def _contract_interpolated(g, nodes, stride: int, start: int, stop: int) -> torch.Tensor:
        """sum_d g(lambda, d) T(lambda, d, k) at fine pixels start..stop-1, (stop - start, K).

        T is interpolated linearly (as `_interp` does) from node values nodes(a, b) -> (b - a,
        D, K) for nodes a..b-1; grouping the fine pixels by their node pair turns this into two
        batched matmuls, without T on the fine grid.
        """
        first, n_nodes, pad, t = _segments(stride, start, stop, g.dtype)
        table = _node_block(nodes(first, first + n_nodes + 1), n_nodes)
        rows = torch.nn.functional.pad(g, (0, 0, pad, (first + n_nodes) * stride - stop))
        rows = rows.reshape(n_nodes, stride, g.shape[1])
        t = t[None, :, None]
        out = torch.bmm(rows * (1 - t), table[:n_nodes]) + torch.bmm(rows * t, table[1:])
        return out.reshape(-1, out.shape[-1])[pad : pad + stop - start]

    def _line_gradients(self, state, jac, plan, parameters, kept, g_line, dflux):
        """Add sum_d G(lambda, d) d kappa_line(lambda, d)/d label of the line cores (exact);
        return the tangents of the coarse wings on their nodes (or None without wings).

        Line cores: d F / d kappa times their partials by T, n_e, n_HI and vmic
        (kernels.core_gradient_terms), summed over lines per fine pixel and multiplied by the
        (3 D + 1, K) state tangents once; their population part per species. Coarse wings
        (line_opacity adds them to the grid by linear interpolation from the wing nodes): their
        derivative is interpolated the same way, so it is summed over all lines on the wing
        nodes first,
        sum_lines d kappa(node, d) / d label = sum_species P_s(node, d) J_s(d, k) + sum_x
        U_x(node, d) dx(d, k) (J_s = d ln population / d label, x = T, n_e, n_HI, vmic), and
        contracted with G once per fine pixel by the caller, whatever the number of lines.
        P_s is kept only on the (node, species) pairs some wing reaches (~5% of all).
        `parameters`, `kept`: what line_opacity(for_gradients=True) returned besides kappa;
        g_line (N, D) and dflux (N, K) are in gradient_dtype.
        """
        dt = self.config.gradient_dtype
        g_pad = torch.cat([g_line, torch.zeros_like(g_line[:1])])  # both in dt
        wing_dtype = self.config.dtype
        n_depth, n_fine = g_line.shape[1], g_line.shape[0]
        stride = max(self.config.wing_stride, 1)
        n_nodes = (n_fine - 1) // stride + 1
        n_species = int(plan.lines.species_index.max()) + 1
        # the (node, species) pairs of the wings, node-major: key = node * n_species + species
        keys = [
            (nodes * n_species + plan.lines.species_index[idx][:, None])[node_valid]
            for _, _, idx, (_, _, nodes, node_valid, _) in self._line_chunks(plan)
            if nodes is not None
        ]
        keys = torch.unique(torch.cat(keys)) if keys else None
        if keys is not None:
            pop_sums = torch.zeros(len(keys), n_depth, dtype=wing_dtype)
            # by T, n_e, n_HI, vmic: (nodes, 4, D), a node's 4 D values added as one row
            state_sums = torch.zeros(n_nodes, 4, n_depth, dtype=wing_dtype)
        d_pop_all = jac["ln_population"].to(dt)  # (species, D, K)
        # d (T, n_e, n_HI) / d label stacked along depth: (3 D, K)
        d_state_cat = torch.cat([jac["temperature"], jac["electron_density"], jac["n_hi"]]).to(dt)
        d_vmic = jac["vmic"].to(dt)
        k_labels = d_vmic.shape[0]
        # the cores' T, n_e, n_HI, vmic parts summed over lines on the fine grid, (N, 3 D + 1):
        # one matmul with their tangents after the loop, instead of one per line pixel
        core_sums = torch.zeros(n_fine, 3 * n_depth + 1, dtype=dt)
        kw = self._kernel_args(dt)
        # the wings need no Taylor table (asymptotic series only); their sums are float64
        wing_kw = {
            "voigt_dtype": kw["voigt_dtype"],
            "out_dtype": wing_dtype,
            "compile": kw["compile"],
        }
        coefficients = LINE_TANGENT_COEFFICIENTS(
            state, plan.lines, parameters, compile=self.config.compile
        )
        chunks = zip(self._line_chunks(plan), kept)
        for (_, _, idx, (parts, edges, nodes, node_valid, wing_dl)), kept_w in chunks:
            params = tuple(x[idx] for x in parameters)
            coef = {k: v[idx] for k, v in coefficients.items()}
            species_index = plan.lines.species_index[idx]
            runs, counts = torch.unique_consecutive(species_index, return_counts=True)
            runs, counts = runs.tolist(), counts.tolist()
            for (far, pix, valid, dl, ramps), w in zip(parts, kept_w):
                g = _take(g_pad, torch.where(valid, pix, n_fine))  # (Lc, W, D); 0 where invalid
                # the line-parameter tangents, never formed per line (coefficients of
                # line_tangent_coefficients): the T, n_e, n_HI, vmic parts into core_sums ...
                by_state, kappa = CORE_GRADIENT_TERMS(
                    dl, edges, ramps, valid, *params, g, coef, far=far, faddeeva_w=w, **kw
                )
                flat = pix.reshape(-1)
                core_sums.index_add_(0, flat, by_state.reshape(len(flat), -1))
                # ... and the population part per species (lines sorted by species in the plan)
                kappa = kappa.reshape(pix.shape[0], -1)
                contrib = torch.empty(*pix.shape, k_labels, dtype=dt)
                start = 0
                for sp, n in zip(runs, counts):
                    rows = kappa[start : start + n].reshape(-1, n_depth)
                    contrib[start : start + n] = (rows @ d_pop_all[sp]).reshape(n, -1, k_labels)
                    start += n
                dflux.index_add_(0, flat, contrib.reshape(-1, k_labels))
            if nodes is None:
                continue
            by_state, kappa = WING_GRADIENT_TERMS(
                wing_dl, node_valid, *params, coef, **wing_kw
            )  # (Lc, nodes, 4, D), (Lc, nodes, D)
            pair = torch.searchsorted(keys, nodes * n_species + species_index[:, None])
            pop_sums.index_add_(
                0, pair[node_valid], kappa[node_valid]
            )  # invalid nodes: kappa is 0 and the key may not exist
            state_sums.view(n_nodes, -1).index_add_(
                0, nodes.reshape(-1), by_state.reshape(-1, 4 * n_depth)
            )
        d_core = torch.cat([d_state_cat, d_vmic[None]])  # (3 D + 1, K)
        for start in range(0, n_fine, self.config.chunk):
            stop = min(start + self.config.chunk, n_fine)
            dflux[start:stop] += core_sums[start:stop] @ d_core
        if keys is None:
            return None
        d_pop = jac["ln_population"]  # (species, D, K)
        d_state = torch.stack(
            [jac["temperature"], jac["electron_density"], jac["n_hi"]]
            + [jac["vmic"][None, :].expand(n_depth, -1)]
        )

        def node_partials(first: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            """The wings on nodes first..stop-1 as (Q, nodes, D) partials by Q = 4 state
            entries and the ln populations of the species they reach there, and the (Q, D, K)
            tangents of those entries (the wing part of _node_table)."""
            stop = min(stop, n_nodes)
            lo, hi = torch.searchsorted(
                keys, torch.tensor([first * n_species, stop * n_species])
            ).tolist()
            pairs = keys[lo:hi]
            species, local = torch.unique(pairs % n_species, return_inverse=True)
            values = torch.zeros(4 + len(species), stop - first, n_depth, dtype=pop_sums.dtype)
            values[:4] = state_sums[first:stop].transpose(0, 1)
            node = torch.div(pairs, n_species, rounding_mode="floor") - first
            values[4 + local, node] = pop_sums[lo:hi]
            return values, torch.cat([d_state, d_pop[species]])

        return node_partials

    # ------------------------------------------------------------------ instrument
    def _sampling_matrix(self, sigma_ln: float) -> torch.Tensor:
        """Sparse (P, N) Gaussian convolution (constant R) evaluated at output wavelengths."""
        ln_fine = np.log(self.fine.numpy())
        ln_out = np.log(self.wavelength)
        half = int(math.ceil(4.0 * sigma_ln / self.ln_step))
        centre = np.round((ln_out - self.ln_lambda0) / self.ln_step).astype(np.int64)
        cols = centre[:, None] + np.arange(-half, half + 1)[None, :]
        if cols.min() < 0 or cols.max() >= ln_fine.size:
            raise ValueError("phdl.synth: output wavelengths too close to the internal grid edge")
        weights = np.exp(-0.5 * ((ln_fine[cols] - ln_out[:, None]) / sigma_ln) ** 2)
        weights /= weights.sum(axis=1, keepdims=True)
        # CSR built directly (rows are consecutive, each with the same number of taps)
        crow = torch.arange(0, ln_out.size * cols.shape[1] + 1, cols.shape[1])
        # silence "sparse CSR support is in beta": it serves one matrix product here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                crow,
                torch.as_tensor(cols.reshape(-1)),
                torch.as_tensor(weights.reshape(-1), dtype=self.config.dtype),
                (ln_out.size, ln_fine.size),
                check_invariants=False,
            )


def fine_grid(wavelength: np.ndarray, resolution: float, config: SynthConfig):
    """(first wavelength [A], ln step, pixel count) of the internal log-uniform fine grid for
    output `wavelength` at resolving power `resolution`."""
    sigma_ln = 1.0 / (resolution * 2.0 * math.sqrt(2.0 * math.log(2.0)))
    lo = float(wavelength[0]) * math.exp(-5 * sigma_ln) - config.margin
    hi = float(wavelength[-1]) * math.exp(5 * sigma_ln) + config.margin
    ln_step = config.fine_step / lo
    stride = math.lcm(config.continuum_stride, config.hydrogen_stride, max(config.wing_stride, 1))
    return lo, ln_step, int(math.ceil(math.log(hi / lo) / ln_step / stride)) * stride + 1


def _segments(stride: int, start: int, stop: int, dtype: torch.dtype):
    """Fine pixels start..stop-1 grouped by the pair of nodes (every `stride`-th pixel) they
    lie between: (first node, number of segments n, pixels of the first segment before
    `start`, the (stride,) interpolation weights of each segment's right node)."""
    first = start // stride
    n = (stop - 1) // stride - first + 1
    return first, n, start - first * stride, torch.arange(stride, dtype=dtype) / stride


def _node_block(block: torch.Tensor, n: int) -> torch.Tensor:
    """The n + 1 nodes of n segments: the grid's last node (a segment of its own, weight 1 on
    its left node) gets a zero right partner."""
    if block.shape[0] < n + 1:
        block = torch.cat([block, torch.zeros_like(block[:1])])
    return block


def _node_table(sources, dtype: torch.dtype) -> Callable[[int, int], torch.Tensor]:
    """(first, stop) -> d opacity / d label on nodes first..stop-1, (nodes, D, K) in `dtype`,
    of the sources on one node grid, each (first, stop) -> ((Q, nodes, D) partials by Q state
    entries, (Q, D, K) their tangents): sum_q partial_q(node, d) tangent_q(d, k) for all
    sources in one batched product over depth."""

    def table(first: int, stop: int) -> torch.Tensor:
        values, tangents = zip(*(fn(first, stop) for fn in sources))
        # depth-major copies first: bmm on the permuted views is ~2x slower
        values = torch.cat(values).to(dtype).permute(2, 1, 0).contiguous()  # (D, nodes, Q)
        tangents = torch.cat(tangents).to(dtype).permute(1, 0, 2).contiguous()  # (D, Q, K)
        return torch.bmm(values, tangents).permute(1, 0, 2)

    return table


def _bucket_size(n: torch.Tensor) -> torch.Tensor:
    """The smallest of 2, 3, 4, 6, 8, 12, 16, 24, ... >= n (int64): few window sizes, each
    padding a line's window by at most a third."""
    power = torch.pow(2, torch.ceil(torch.log2(n.clamp(min=2).double()))).long()
    return torch.where(3 * power >= 4 * n, 3 * power // 4, power).clamp(min=2)


def _take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] along the first axis, index of any shape (index_select: faster than [])."""
    return table.index_select(0, index.reshape(-1)).reshape(*index.shape, *table.shape[1:])
