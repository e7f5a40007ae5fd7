"""Every pair of objectives compared, favourable or not, with what each comparison rests on.

Per series (objective, or objective/captions) the laws are fit to its trained points only (scaling.analysis
.points), each from its own bootstrap stream. A pair gets a multiplier (power law, at the largest measured
compute of the reference B, the more efficient first) only when both have at least ``MIN_FRONTIER``
trained frontier points; it is flagged "below floor" when the error B reaches there is worse than the
raw-pixel probe of the same examples, and "extrapolated" outside either objective's measured compute. Its
sensitivity: the same multiplier with each size, and each seed, left out of both fits in turn (seeds only
where two or more carry trained points). A comparison is "resolved" when its interval excludes parity and
its direction holds in every leave-one-out case, "not robust" when the interval excludes parity but a case
flips it (or cannot be computed), "unresolved" when the interval includes parity.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd

from scaling.analysis.fits import BOOTS, LAWS, LEVEL, POWER, Fit, fit_law
from scaling.analysis.multipliers import Multiplier, multiplier
from scaling.config import ConfigError

MIN_FRONTIER = 3  # trained frontier points each objective of a multiplier needs


def fit_objectives(points: pd.DataFrame, *, boots: int = BOOTS, level: float = LEVEL, seed: int = 0,
                   stream: str = "") -> tuple[dict[str, dict[str, Fit]], dict[str, dict[str, str]]]:
    """({series: {law: Fit}}, {series: {law: why not fitted}}) on each series' trained frontier, each
    bootstrapped from the stream ``<stream>/<series>`` under ``seed``."""
    fits: dict[str, dict[str, Fit]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for objective, group in points.groupby("objective"):
        trained = group[group["trained"]]
        seeds = trained["seed"].to_numpy() if trained["seed"].notna().all() else None
        for name, law in LAWS.items():
            try:
                fits.setdefault(objective, {})[name] = fit_law(
                    law, trained["flops"].to_numpy(), trained["error"].to_numpy(), label=objective,
                    seeds=seeds, error_sd=trained["error_sd"].to_numpy(), boots=boots, level=level, seed=seed,
                    stream=f"{stream}/{objective}")
            except ConfigError as error:
                skipped.setdefault(objective, {})[name] = str(error)
    return {objective: laws for objective, laws in fits.items() if laws}, skipped


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One pair of series: its multiplier (None when not computed, ``why_not`` says why), its flags and
    its leave-one-out multipliers ((case, C_A / C), NaN where a case leaves too few points)."""

    pair: tuple[str, str]
    multiplier: Multiplier | None
    why_not: str = ""
    below_floor: bool = False
    sensitivity: tuple[tuple[str, float], ...] = ()

    @property
    def robust(self) -> bool:
        """The direction (A needs less or more compute than B) holds in every leave-one-out case."""
        m = self.multiplier
        return m is not None and all(np.isfinite(ratio) and (ratio <= 1) == (m.ratio <= 1)
                                     for _, ratio in self.sensitivity)

    @property
    def status(self) -> str:
        m = self.multiplier
        if m is None:
            return "not computed"
        if not (m.high < 1 or m.low > 1):
            return "unresolved"
        return "resolved" if self.robust else "not robust"

    @property
    def flags(self) -> str:
        m = self.multiplier
        return ", ".join(flag for flag, on in (("below floor", self.below_floor),
                                               ("extrapolated", m is not None and m.extrapolated)) if on)


def _frontier_count(fit: Fit | None) -> int:
    return 0 if fit is None else len(np.unique(fit.flops))


def _point_fit(group: pd.DataFrame) -> Fit | None:
    """The power law through a series' trained points without bootstrap (None: too few frontier points)."""
    trained = group[group["trained"]]
    try:
        fit = fit_law(POWER, trained["flops"].to_numpy(), trained["error"].to_numpy(), boots=0)
    except ConfigError:
        return None
    return fit if _frontier_count(fit) >= MIN_FRONTIER else None


def point_error(fit: Fit, flops: float) -> float:
    """The error of the law's estimate at ``flops``."""
    return float(np.exp(fit.law.log_error(fit.theta, np.log([flops]) - fit.log_c_ref))[0])


def point_ratio(better: Fit, reference: Fit, flops: float) -> float:
    """C_A / C of the two laws' estimates at ``flops`` (no interval)."""
    return float(better.compute_for(np.array([point_error(reference, flops)]))[0] / flops)


def leave_out_cases(points: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """(name, mask of the points kept) for each size, and each seed where two or more carry trained
    points."""
    trained = points[points["trained"]]
    cases = [(f"without {size}", points["size"] != size) for size in sorted(set(trained["size"]))]
    seeds = sorted(set(trained["seed"].dropna()))
    if len(seeds) > 1:
        cases += [(f"without seed {seed:g}", points["seed"] != seed) for seed in seeds]
    return cases


def compare_all(points: pd.DataFrame, fits: dict[str, dict[str, Fit]],
                floors: dict[str, float]) -> list[Comparison]:
    """Every pair of series in ``points`` (alphabetical), each a Comparison; ``floors`` are the raw-pixel
    errors of each series' probe examples."""
    cases = leave_out_cases(points)
    groups = dict(tuple(points.groupby("objective")))
    left_out = {(objective, name): _point_fit(group[kept[group.index]])
                for objective, group in groups.items() for name, kept in cases}
    rows = []
    for pair in itertools.combinations(sorted(groups), 2):
        power = {label: fits.get(label, {}).get("power") for label in pair}
        counts = {label: _frontier_count(fit) for label, fit in power.items()}
        if min(counts.values()) < MIN_FRONTIER:
            have = ", ".join(f"{label} {count}" for label, count in counts.items())
            rows.append(Comparison(pair, None, f"trained frontier points {have}; {MIN_FRONTIER} needed each"))
            continue
        first, second = (power[label] for label in pair)
        middle = np.sqrt(second.flops.min() * second.flops.max())
        better, reference = (first, second) if point_ratio(first, second, middle) <= 1 else (second, first)
        (m,) = multiplier(better, reference, np.array([reference.flops.max()]))
        target = point_error(reference, m.flops)
        sensitivity = []
        for name, _ in cases:
            a, b = left_out[(better.label, name)], left_out[(reference.label, name)]
            sensitivity.append((name, point_ratio(a, b, m.flops) if a and b else np.nan))
        rows.append(Comparison(pair, m, "", target > floors.get(reference.label, np.inf), tuple(sensitivity)))
    return rows
