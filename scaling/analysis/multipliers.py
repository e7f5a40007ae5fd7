"""Compute-efficiency multipliers between objectives, from their fitted laws.

The multiplier of A over B at compute C is C_A / C, where C_A is the compute at which A's law reaches the
error B's law gives at C: below 1, A gets there with less compute. Its interval pairs the bootstrap
replicates of the two fits; a value is an extrapolation when C lies outside B's measured compute or C_A
outside A's. Interval ends beyond 1000x either way (replicates whose exponent is near 0 never reach the
error, or reach it absurdly early) read as open ends, not as numbers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from scaling.analysis.fits import Fit, percentile_interval

OPEN = 1e3  # a multiplier beyond 1/OPEN or OPEN x is not determined by the points, only bounded by them


@dataclasses.dataclass(frozen=True)
class Multiplier:
    better: str  # A
    reference: str  # B
    law: str
    flops: float  # C
    ratio: float  # C_A / C
    low: float
    high: float
    extrapolated: bool  # C outside B's measured compute, or C_A outside A's
    measured_reference: bool  # C inside B's measured compute

    @property
    def open_ends(self) -> tuple[bool, bool]:
        """Whether the interval's low and high ends lie beyond 1/OPEN and OPEN x (or are missing)."""
        return not self.low >= 1 / OPEN, not self.high <= OPEN

    def span(self, level: float) -> str:
        """"90% CI [1/5, 1.2x]"; an end beyond 1/OPEN or OPEN x reads "<1/1000" or ">1000x", an interval
        beyond them on both sides (or without usable refits) "not determined by these points"."""
        ci = f"{100 * level:.0f}% CI"
        if all(self.open_ends):
            return f"{ci} not determined by these points"
        if self.high < 1 / OPEN:
            return f"{ci} entirely below 1/{OPEN:g}"
        if self.low > OPEN:
            return f"{ci} entirely above {OPEN:g}x"
        return f"{ci} [{ratio_text(self.low)}, {ratio_text(self.high)}]"

    def headline(self, metric: str, level: float) -> str:
        note = "; extrapolated" if self.extrapolated else ""
        where = f"at C = {self.flops:.2g} FLOPs ({self.law} law{note})"
        if self.ratio <= 1:
            return f"{self.better} reaches {self.reference}'s {metric} at {ratio_text(self.ratio)} of its " \
                   f"compute, {self.span(level)}, {where}"
        return f"{self.better} needs {ratio_text(self.ratio)} {self.reference}'s compute to reach its " \
               f"{metric}, {self.span(level)}, {where}"


def ratio_text(ratio: float) -> str:
    """0.25 -> "1/4", 3 -> "3x"; beyond 1/OPEN or OPEN x -> "<1/1000" or ">1000x"; NaN -> "?"."""
    if np.isnan(ratio):
        return "?"
    if ratio > OPEN:
        return f">{OPEN:g}x"
    if ratio < 1 / OPEN:
        return f"<1/{OPEN:g}"
    return f"{ratio:.3g}x" if ratio >= 1 else f"1/{1 / ratio:.3g}"


def multiplier(fit_a: Fit, fit_b: Fit, flops: np.ndarray) -> list[Multiplier]:
    """A's multiplier over B at each compute in ``flops``, with intervals from paired replicates."""
    flops = np.asarray(flops, float)
    target = np.exp(fit_b.law.log_error(fit_b.theta, np.log(flops) - fit_b.log_c_ref))
    needed = fit_a.compute_for(target)
    pairs = min(len(fit_a.boots), len(fit_b.boots))
    target_boots = np.exp(fit_b.law.log_error(fit_b.boots[:pairs], np.log(flops) - fit_b.log_c_ref))  # [B, M]
    needed_boots = fit_a.compute_for(target_boots, fit_a.boots[:pairs, None, :]) / flops
    low, high = percentile_interval(needed_boots[~np.isnan(needed_boots).any(axis=1)], fit_a.level)
    a_range, b_range = (fit_a.flops.min(), fit_a.flops.max()), (fit_b.flops.min(), fit_b.flops.max())
    rows = []
    for c, n, lo, hi in zip(flops, needed, low, high, strict=True):
        measured = bool(b_range[0] <= c <= b_range[1])
        rows.append(Multiplier(fit_a.label, fit_b.label, fit_a.law.name, float(c), float(n / c), float(lo),
                               float(hi), not measured or not a_range[0] <= n <= a_range[1], measured))
    return rows


def multiplier_grid(fit_b: Fit, extrapolate: float = 10.0) -> np.ndarray:
    """Computes to compare at: B's measured range (ends and geometric middle) and ``extrapolate`` x beyond."""
    low, high = fit_b.flops.min(), fit_b.flops.max()
    return np.array([low, np.sqrt(low * high), high, high * extrapolate])


def oriented(fit_a: Fit, fit_b: Fit) -> tuple[Fit, Fit]:
    """The pair ordered so the first is the more compute-efficient at the geometric middle of the
    second's measured range."""
    middle = multiplier_grid(fit_b)[1:2]
    return (fit_a, fit_b) if multiplier(fit_a, fit_b, middle)[0].ratio <= 1 else (fit_b, fit_a)
