"""A two-run miniature of the quickstart: the sweep accounts for its wall time, and its figure shows each
probe accuracy's bootstrap interval over the raw-pixel reference of the same examples."""

import json

import numpy as np
import pytest
from helpers import ROOT
from matplotlib.container import ErrorbarContainer

from scaling.analysis.figures import draw_compute
from scaling.config import load_python_file
from scaling.evaluation.pixel_reference import accuracy_interval
from scaling.sweeps.results import build_table
from scaling.sweeps.runner import run_sweep
from scaling.sweeps.spec import Budget, Sweep, grid
from scaling.sweeps.summary import SUMMARY_NAME
from scaling.workdir import RunFiles


@pytest.fixture(scope="module")
def miniature(tmp_path_factory, data_dir):
    """The quickstart's fields on mu-sized CLIP runs of 10 and 20 steps over the small scenes set at 16
    pixels (a 768-pixel reference probe)."""
    quickstart = load_python_file(ROOT / "sweeps" / "quickstart.py")
    fields = {**quickstart.FIELDS, "data.name": "scenes/32_small", "data.data_dir": data_dir,
              "data.image_size": 16, "batch_size": 16, "optim.warmup_steps": 2,
              "eval.probe_train_examples": 300, "eval.probe_test_examples": 200}
    sweep = Sweep("mini", grid(["clip"], ["mu"], [Budget.steps(10), Budget.steps(20)], fields=fields))
    root = tmp_path_factory.mktemp("runs")
    lines = []
    run_sweep(sweep, root, out=lines.append)
    return root / "mini", lines


def test_summary_accounts_for_the_wall_time(miniature):
    sweep_dir, lines = miniature
    summary = json.loads((sweep_dir / SUMMARY_NAME).read_text())
    results = [RunFiles(run).read_result() for run in sweep_dir.iterdir() if (run / "result.json").exists()]
    assert summary["runs_trained"] == len(results) == 2
    assert summary["training_flops"] == pytest.approx(sum(r["total_flops"] for r in results))
    for result in results:  # a run's activities cover its wall time
        assert sum(result["seconds"].values()) == pytest.approx(result["wall_s"], rel=0.05)
        assert result["seconds"]["train"] > 0 and result["seconds"]["compile"] > 0
    shares = summary["shares"]
    assert set(shares) == {"setup", "compile", "train", "eval", "checkpoint", "load", "data", "outputs"}
    assert sum(shares.values()) == pytest.approx(1, abs=0.1)  # what the sweep did is what it measured
    assert summary["flops_over_peak"] == pytest.approx(
        summary["training_flops"] / summary["wall_s"] / summary["peak_flops_per_s"])
    assert 1e9 < summary["peak_flops_per_s"] < 1e13
    assert any(line.startswith(f"trained {summary['training_flops']:.3g} FLOPs in 2 runs") for line in lines)


def test_figure_draws_intervals_and_the_raw_pixel_reference(miniature):
    sweep_dir, _ = miniature
    table = build_table(sweep_dir)
    evals = table[table["kind"] == "eval"]
    assert len(evals) == 2 and evals["pixel_probe_accuracy"].nunique() == 1
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
