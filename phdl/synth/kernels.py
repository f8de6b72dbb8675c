"""Fused line-opacity kernels: the Voigt profiles of ~10^4 lines x window x depth, in one pass.

The line opacity and its partials are chains of ~10^2 elementwise operations over 10^7-10^8
numbers per spectrum. Run op by op (eager torch) each one is a pass through memory, and memory
traffic, not arithmetic, set the synthesis speed. `torch.compile` fuses each function below into
one loop over its elements (C++/OpenMP on the CPU, Triton on a GPU): the Voigt function alone is
~6x faster on 2 CPU cores. The functions are plain torch and give the same numbers eagerly, so
where no compiler is available (`SynthConfig.compile = False`, or compilation fails) the
synthesis runs them uncompiled, slower, with a warning.

Shapes: Lc lines of a chunk, W pixels of their windows, D depths; `dl` are wavelength offsets
from the line centre [Angstrom], `ln_amp`, `width`, `damping` the line parameters per depth
(phdl.synth.lines.line_parameters).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch

from phdl.synth.lines import (
    SQRT_PI,
    faddeeva,
    line_parameters,
    line_tangent_coefficients,
    voigt_and_derivatives,
)
from phdl.synth.transfer import planck_flux, planck_flux_and_sensitivities


def line_profile(
    dl: torch.Tensor,
    ln_amp: torch.Tensor,
    width: torch.Tensor,
    damping: torch.Tensor,
    table: tuple[torch.Tensor, torch.Tensor],
    far: bool,
    derivatives: bool,
    voigt_dtype: torch.dtype,
    out_dtype: torch.dtype,
    faddeeva_w: tuple[torch.Tensor, torch.Tensor] | None = None,
    keep_w: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Line opacity [cm^-1] at offsets dl (Lc, W), (Lc, W, D); with `derivatives` also its
    partials by the Doppler width [cm^-1 / Angstrom] and by the damping a.

    `far`: every |v + i a| >= 6.5 (line wings: the asymptotic series alone). `faddeeva_w`:
    the Faddeeva function at these points, (real, imag) (Lc, W, D) in voigt_dtype, where an
    earlier call returned it (`keep_w`: appended to the outputs).
    """
    w = width[:, None, :]
    v = (dl[:, :, None] / w).to(voigt_dtype)
    a = damping[:, None, :].expand_as(v).to(voigt_dtype)
    if derivatives:
        # without w given, w' comes from the series where |z| is large (voigt_and_derivatives)
        h, dh_dv, dh_da = (
            x.to(out_dtype) for x in voigt_and_derivatives(v, a, far, table, w=faddeeva_w)
        )
    if faddeeva_w is None and (keep_w or not derivatives):
        faddeeva_w = faddeeva(v, a, far, table)
    if not derivatives:
        h = faddeeva_w[0].to(out_dtype)
    w = w.to(out_dtype)
    scale = torch.exp(ln_amp).to(out_dtype)[:, None, :] / (SQRT_PI * w)  # (Lc, 1, D)
    kappa = h * scale
    kept = tuple(faddeeva_w) if keep_w else ()
    if not derivatives:
        return (kappa, *kept)
    d_width = (h + v.to(out_dtype) * dh_dv) * (-scale / w)
    return kappa, d_width, dh_da * scale, *kept


def core_profile(
    dl: torch.Tensor,
    edges: torch.Tensor,
    ramps: torch.Tensor | None,
    valid: torch.Tensor,
    ln_amp: torch.Tensor,
    width: torch.Tensor,
    damping: torch.Tensor,
    table: tuple[torch.Tensor, torch.Tensor],
    far: bool,
    derivatives: bool,
    voigt_dtype: torch.dtype,
    out_dtype: torch.dtype,
    faddeeva_w: tuple[torch.Tensor, torch.Tensor] | None = None,
    keep_w: bool = False,
) -> tuple[torch.Tensor, ...]:
    """The fine-grid part of the line opacity (and partials) of lines with coarse wings.

    The profile on the core pixels dl (Lc, W), minus the two wing nodes' linear interpolation
    into the core: `edges` (Lc, 2) are the offsets of the left and right wing nodes, `ramps`
    (Lc, W, 2) their interpolation weights, or None where they are all zero (lines without
    coarse wings, pixels farther than a stride from both nodes): the edges are then not
    evaluated. `valid` (Lc, W) 1 on the pixels the line covers, else 0. Core + interpolated
    wings = the line profile.
    `far`: every pixel of dl has |v + i a| >= 6.5 (the asymptotic series alone);
    `faddeeva_w`, `keep_w`: as for line_profile, at the pixels dl.
    """
    args = (ln_amp, width, damping, table)
    at_core = line_profile(
        dl, *args, far, derivatives, voigt_dtype, out_dtype, faddeeva_w=faddeeva_w, keep_w=keep_w
    )
    kept = at_core[len(at_core) - 2 :] if keep_w else ()
    at_core = at_core[: len(at_core) - len(kept)]
    mask = valid.to(out_dtype)[:, :, None]
    if ramps is None:
        return (*(x * mask for x in at_core), *kept)
    # (Lc, 2, D) each; the wing nodes nearest the centre: not far
    at_edges = line_profile(edges, *args, False, derivatives, voigt_dtype, out_dtype)
    r_left = ramps[:, :, 0, None].to(out_dtype)
    r_right = ramps[:, :, 1, None].to(out_dtype)
    return (
        *((x - r_left * e[:, :1] - r_right * e[:, 1:]) * mask for x, e in zip(at_core, at_edges)),
        *kept,
    )


def core_gradient_terms(
    dl: torch.Tensor,
    edges: torch.Tensor,
    ramps: torch.Tensor | None,
    valid: torch.Tensor,
    ln_amp: torch.Tensor,
    width: torch.Tensor,
    damping: torch.Tensor,
    g: torch.Tensor,
    coef: dict[str, torch.Tensor],
    table: tuple[torch.Tensor, torch.Tensor],
    far: bool,
    voigt_dtype: torch.dtype,
    out_dtype: torch.dtype,
    faddeeva_w: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The line cores' share of d F / d state, before the chain rule to the labels.

    g (Lc, W, D) is d F / d kappa at the line's pixels, `coef` the partials of the line
    parameters by the state (lines.line_tangent_coefficients, (Lc, D) each). Returns
    by_state (Lc, W, 3 D + 1): the T, n_e, n_HI parts and the vmic part (to multiply by
    d (T, n_e, n_HI, vmic) / d label), and g x kappa (Lc, W, D) (to multiply by
    d ln population / d label). `far`, `faddeeva_w`: as for core_profile (the Faddeeva
    function kept by the opacity pass saves its table-Taylor branch, the costliest part).
    """
    kappa, k_width, k_damping = (
        g * x
        for x in core_profile(
            dl,
            edges,
            ramps,
            valid,
            ln_amp,
            width,
            damping,
            table,
            far,
            True,
            voigt_dtype,
            out_dtype,
            faddeeva_w=faddeeva_w,
        )
    )
    t, ne, nh, vmic = _by_state(kappa, k_width, k_damping, coef, out_dtype)
    return torch.cat([t, ne, nh, vmic.sum(dim=2, keepdim=True)], dim=2), kappa


def wing_gradient_terms(
    dl: torch.Tensor,
    valid: torch.Tensor,
    ln_amp: torch.Tensor,
    width: torch.Tensor,
    damping: torch.Tensor,
    coef: dict[str, torch.Tensor],
    voigt_dtype: torch.dtype,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The coarse wings' partials on their nodes dl (Lc, n), `valid` (Lc, n) 1 on the nodes
    inside the window: kappa (Lc, n, D) (to multiply by d ln population / d label) and
    by_state (Lc, n, 4, D), its partials by T, n_e, n_HI and vmic per depth."""
    kappa, k_width, k_damping = (
        x * valid.to(out_dtype)[:, :, None]
        for x in line_profile(
            dl,
            ln_amp,
            width,
            damping,
            table=None,
            far=True,
            derivatives=True,
            voigt_dtype=voigt_dtype,
            out_dtype=out_dtype,
        )
    )
    return torch.stack(_by_state(kappa, k_width, k_damping, coef, out_dtype), dim=2), kappa


def _by_state(kappa, k_width, k_damping, coef, out_dtype) -> tuple[torch.Tensor, ...]:
    """(partials of the line opacity) x (coefficients of line_tangent_coefficients): its parts
    along d T, d n_e, d n_HI and d vmic, (Lc, W, D) each."""
    c = {k: v[:, None, :].to(out_dtype) for k, v in coef.items()}
    return (
        kappa * c["amp_t"] + k_width * c["width_t"] + k_damping * c["damping_t"],
        k_damping * c["damping_ne"],
        k_damping * c["damping_nh"],
        k_width * c["width_vmic"] + k_damping * c["damping_vmic"],
    )


class Kernel:
    """`fn` compiled with torch.compile on first use, or `fn` itself.

    Falls back to the uncompiled function (same numbers, slower) with one warning when
    compilation is switched off or fails (no C++ compiler, an unsupported device).
    """

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self._compiled: Callable | None = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args, compile: bool = True, **kwargs):  # noqa: A002
        if not compile or self._compiled is False:
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler failure: run it uncompiled
            self._compiled = False
            # inductor wraps the cause: its first line is "backend='inductor' raised:"
            cause = getattr(error, "inner_exception", None) or error
            lines = [line for line in str(cause).splitlines() if line.strip()]
            warnings.warn(
                f"phdl.synth: torch.compile of {self.fn.__name__} failed ({type(cause).__name__}:"
                f" {lines[0] if lines else ''}); running it uncompiled"
                " (same numbers, several times slower; SynthConfig(compile=False) skips the try)",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.fn(*args, **kwargs)


#: per line and depth, (L, D): ~50 elementwise operations on every line of the plan at once
LINE_PARAMETERS = Kernel(line_parameters)
LINE_TANGENT_COEFFICIENTS = Kernel(line_tangent_coefficients)
LINE_PROFILE = Kernel(line_profile)
CORE_PROFILE = Kernel(core_profile)
CORE_GRADIENT_TERMS = Kernel(core_gradient_terms)
WING_GRADIENT_TERMS = Kernel(wing_gradient_terms)
PLANCK_FLUX = Kernel(planck_flux)
PLANCK_FLUX_AND_SENSITIVITIES = Kernel(planck_flux_and_sensitivities)
