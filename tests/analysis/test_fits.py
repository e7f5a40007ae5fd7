"""Scaling-law fits, frontiers and multipliers on synthetic points drawn from known laws."""

import dataclasses

import numpy as np
import pytest

from scaling.analysis.comparisons import Comparison
from scaling.analysis.fits import POWER, SATURATING, bootstrap_weights, fit_law, stream_rng
from scaling.analysis.multipliers import Multiplier, multiplier
from scaling.analysis.points import frontier_mask
from scaling.errors import ConfigError

FLOPS = np.geomspace(1e15, 1e18, 12)
NOISE = 0.03  # log-normal, per point


def law_error(truth: dict, flops: np.ndarray) -> np.ndarray:
    return truth.get("E_inf", 0.0) + truth["a"] * flops ** -truth["b"]


@pytest.mark.parametrize("law, truth, trials, widest", [
    (POWER, {"a": 30.0, "b": 0.12}, 30, 0.3),
    (SATURATING, {"E_inf": 0.15, "a": 400.0, "b": 0.2}, 12, 1.0),  # 3 parameters from 12 points: wider
])
def test_fits_recover_known_laws_within_their_intervals_in_most_trials(law, truth, trials, widest):
    covered, widths = dict.fromkeys(truth, 0), []
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        error = law_error(truth, FLOPS) * np.exp(rng.normal(0, NOISE, FLOPS.size))
        fit = fit_law(law, FLOPS, error, on_frontier=False, boots=200, seed=trial)
        params = fit.params()
        for name, (_, low, high) in params.items():
            covered[name] += low <= truth[name] <= high
        widths.append((params["b"][2] - params["b"][1]) / truth["b"])
    assert all(count >= 0.7 * trials for count in covered.values()), covered  # nominal 90%
    assert np.median(widths) < widest  # and the intervals of b are informative, not just wide


def test_the_multiplier_of_a_known_compute_ratio_is_recovered_within_its_interval():
    ratio, inside = 1 / 4, 0
    truth = {"a": 30.0, "b": 0.12}
    for trial in range(10):
        rng = np.random.default_rng(100 + trial)
        clip, igpt = (law_error(truth, flops) * np.exp(rng.normal(0, NOISE, FLOPS.size))
                      for flops in (FLOPS, FLOPS / 4))  # igpt at C does what clip does at C / 4
        better = fit_law(POWER, FLOPS, clip, label="clip", on_frontier=False, boots=200, seed=trial)
        reference = fit_law(POWER, FLOPS, igpt, label="igpt", on_frontier=False, boots=200, seed=trial + 1)
        middle, beyond = multiplier(better, reference, np.array([3e16, 1e19]))
        inside += middle.low <= ratio <= middle.high
        assert 0.15 < middle.ratio < 0.4 and not middle.extrapolated and beyond.extrapolated
    assert inside >= 7
    assert middle.headline("probe error", 0.9).startswith("clip reaches igpt's probe error at 1/")


def test_each_objective_draws_its_own_bootstrap_stream():
    """Replicate i of two objectives must not resample the same positions (that couples their errors and
    narrows every multiplier's interval)."""
    clip, igpt = (bootstrap_weights(12, None, 50, stream_rng(0, name)) for name in ("run/clip", "run/igpt"))
    assert (clip != igpt).any(axis=1).all()
    assert (clip == bootstrap_weights(12, None, 50, stream_rng(0, "run/clip"))).all()  # reproducible
    assert (clip != bootstrap_weights(12, None, 50, stream_rng(1, "run/clip"))).any()  # --seed changes it


def test_two_objectives_from_one_law_are_rarely_called_resolved():
    """Same law, independent test-set noise on 6 points each: the 90% interval of the multiplier excludes
    parity in at most 15% of 50 trials (nominally 10%)."""
    truth, flops, resolved = {"a": 30.0, "b": 0.12}, np.geomspace(1e15, 1e17, 6), 0
    sd = 0.01 * law_error(truth, flops)  # a few hundred test examples' worth of noise at these errors
    for trial in range(50):
        rng = np.random.default_rng(1000 + trial)
        a, b = (fit_law(POWER, flops, law_error(truth, flops) + rng.normal(0, sd), label=name, error_sd=sd,
                        on_frontier=False, boots=100, seed=trial) for name in ("a", "b"))
        (m,) = multiplier(a, b, flops[-1:])
        resolved += Comparison(("a", "b"), m).status == "resolved"
    assert resolved <= 0.15 * 50, resolved


def test_a_comparison_whose_direction_flips_in_a_sensitivity_case_is_not_robust():
    m = Multiplier("clip", "igpt", "power", 1e17, 0.25, 0.1, 0.5, False, True)
    holds = Comparison(("clip", "igpt"), m, sensitivity=(("without mu", 0.3), ("without micro", 0.6)))
    assert holds.robust and holds.status == "resolved"
    flips = dataclasses.replace(holds, sensitivity=(("without mu", 0.3), ("without micro", 1.4)))
    assert not flips.robust and flips.status == "not robust"
    missing = dataclasses.replace(holds, sensitivity=(("without mu", np.nan),))
    assert not missing.robust  # a case with too few points cannot show that the direction holds
    assert dataclasses.replace(holds, multiplier=dataclasses.replace(m, high=1.2)).status == "unresolved"


def test_the_frontier_is_the_lower_envelope_and_fits_use_only_it():
    flops = np.array([1.0, 2.0, 3.0, 4.0, 5.0]) * 1e15
    error = np.array([0.5, 0.6, 0.4, 0.45, 0.3])
    assert frontier_mask(flops, error, np.ones((1, 5)))[0].tolist() == [True, False, True, False, True]
    dropped_third = np.array([[1, 1, 0, 1, 1]])  # without the 0.4 point, 0.45 joins the envelope
    assert frontier_mask(flops, error, dropped_third)[0].tolist() == [True, False, False, True, True]
    tied = frontier_mask(np.array([1.0, 1.0, 2.0]), np.array([0.5, 0.4, 0.3]), np.ones((1, 3)))[0]
    assert tied.tolist() == [False, True, True]  # at equal compute only the lower error
    fit = fit_law(POWER, flops, error, boots=20)
    assert fit.flops.tolist() == [1e15, 3e15, 5e15]


def test_too_few_points_for_a_law_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"clip: the saturating law .* has 3 parameters but only 2 frontier "
                                          r"points at distinct compute; add budgets or runs"):
        fit_law(SATURATING, [1e15, 1e16, 1e17], [0.5, 0.4, 0.45], label="clip")
    with pytest.raises(ConfigError, match="positive errors"):
        fit_law(POWER, [1e15, 1e16], [0.5, 0.0])


def test_a_law_fit_exactly_through_as_many_points_as_parameters_claims_no_interval():
    """Every bootstrap replicate of an exact fit repeats it, so its spread says nothing about uncertainty."""
    clip = fit_law(POWER, [2e12, 6e12], [0.76, 0.74], label="clip", boots=50)
    igpt = fit_law(POWER, [2e12, 6e12], [0.87, 0.86], label="igpt", boots=50)
    assert clip.usable_boots == 0 and np.isnan(clip.params()["b"][1:]).all()
    assert clip.weakness() == "only 2 frontier points for a 2-parameter law"
    (row,) = multiplier(clip, igpt, np.array([6e12]))
    assert row.span(0.9) == "90% CI not determined by these points"


def test_interval_ends_beyond_a_thousandfold_read_as_open():
    quickstart = Multiplier("clip", "diffusion", "power", 1e15, 1.13, 7.08e-81, 1.36, False, True)
    assert quickstart.headline("probe error", 0.9) == (
        "clip needs 1.13x diffusion's compute to reach its probe error, 90% CI [<1/1000, 1.36x], "
        "at C = 1e+15 FLOPs (power law)")
    never = dataclasses.replace(quickstart, ratio=0.5, low=0.4, high=np.inf)
    assert "at 1/2 of its compute, 90% CI [1/2.5, >1000x]" in never.headline("probe error", 0.9)
    both = dataclasses.replace(quickstart, high=2e5)
    assert "90% CI not determined by these points" in both.headline("probe error", 0.9)
    no_refits = dataclasses.replace(quickstart, low=np.nan, high=np.nan)
    assert "90% CI not determined by these points" in no_refits.headline("probe error", 0.9)
    below = dataclasses.replace(quickstart, ratio=1e-6, low=1e-9, high=1e-5)
    assert "at <1/1000 of its compute, 90% CI entirely below 1/1000" in below.headline("probe error", 0.9)
