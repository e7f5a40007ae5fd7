"""The quickstart's fields in miniature (the session's tiny sweep): the sweep accounts for its wall time, and
its figure shows each probe accuracy's bootstrap interval over the raw-pixel reference of the same
examples."""

import json

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer

from scaling.analysis.figures import draw_compute
from scaling.evaluation.pixel_reference import accuracy_interval
from scaling.sweeps.results import build_table
from scaling.sweeps.summary import SUMMARY_NAME
from scaling.train import ACTIVITIES
from scaling.workdir import RunFiles


def test_summary_accounts_for_the_wall_time(tiny_sweep):
    sweep_dir, lines = tiny_sweep["dir"], tiny_sweep["lines"]
    summary = json.loads((sweep_dir / SUMMARY_NAME).read_text())
    results = [RunFiles(run).read_result() for run in tiny_sweep["runs"].values()]
    assert summary["runs_trained"] == len(results) == 3
    assert summary["training_flops"] == pytest.approx(sum(r["total_flops"] for r in results))
    for result in results:  # a run's activities cover its wall time, and each of them took part
        assert sum(result["seconds"].values()) == pytest.approx(result["wall_s"], rel=0.05)
        assert {activity for activity, seconds in result["seconds"].items() if seconds > 0} == set(ACTIVITIES)
    shares = summary["shares"]
    assert set(shares) == {"setup", "compile", "train", "eval", "checkpoint", "load", "data", "outputs"}
    assert sum(shares.values()) == pytest.approx(1, abs=0.1)  # what the sweep did is what it measured
    assert summary["flops_over_peak"] == pytest.approx(
        summary["training_flops"] / summary["wall_s"] / summary["peak_flops_per_s"])
    assert 1e9 < summary["peak_flops_per_s"] < 1e13
    assert any(line.startswith(f"trained {summary['training_flops']:.3g} FLOPs in 3 runs") for line in lines)


def test_figure_draws_intervals_and_the_raw_pixel_reference(tiny_sweep):
    table = build_table(tiny_sweep["dir"])
    evals = table[(table["kind"] == "eval") & (table["point"] != "init")]
    assert len(evals) == 9 and evals["pixel_probe_accuracy"].nunique() == 1  # one probe set: one reference
    axes = draw_compute(table).axes[0]

    reference = [line for line in axes.get_lines() if line.get_label() == "raw pixels"]
    assert len(reference) == 1
    np.testing.assert_allclose(reference[0].get_ydata(), evals["pixel_probe_accuracy"].iloc[0])
    low, high = evals[["pixel_probe_accuracy_low", "pixel_probe_accuracy_high"]].iloc[0]
    bands = [(patch.get_y(), patch.get_y() + patch.get_height()) for patch in axes.patches]
    assert any(np.allclose(band, [low, high]) for band in bands)

    bars = [c for c in axes.containers if isinstance(c, ErrorbarContainer)]
    drawn = sorted(tuple(np.asarray(segment)[:, 1]) for c in bars for segment in c.lines[2][0].get_segments())
    recorded = sorted(zip(evals["probe_accuracy_low"], evals["probe_accuracy_high"], strict=True))
    np.testing.assert_allclose(drawn, recorded)
    assert all(low < acc < high for low, acc, high in evals[["probe_accuracy_low", "probe_accuracy",
                                                              "probe_accuracy_high"]].itertuples(index=False))


def test_accuracy_interval_matches_the_binomial_spread():
    low, high = accuracy_interval(0.3, 2000)
    half_width = 1.96 * np.sqrt(0.3 * 0.7 / 2000)
    assert low == pytest.approx(0.3 - half_width, abs=0.004)
    assert high == pytest.approx(0.3 + half_width, abs=0.004)
