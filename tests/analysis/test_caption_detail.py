"""The caption-detail analysis: seeds averaged with Student-t intervals, training mixes kept apart, and the
figures and report lines drawn from a synthetic results table."""

import numpy as np
import pandas as pd
import pytest
from helpers import record_figures

from scaling.analysis.caption_detail import caption_detail, caption_points
from scaling.analysis.points import eval_points

MIXES = {"short": "short", "descriptive": "descriptive", "descriptive:0.95,short:0.05": "descriptive"}
GAIN = np.array([0.01, 0.03, 0.06, 0.10])  # grows with noise


def synthetic_table() -> pd.DataFrame:
    """Eval rows as scaling.sweeps.results builds them for diffusion and CLIP on three training mixes,
    two budgets and two seeds."""
    rows = []
    for (name, level), objective, budget, seed in pd.MultiIndex.from_product(
            [list(MIXES.items()), ["diffusion", "clip"], [1e11, 1e12], [0, 1]]):
        scale = 2.0 if name == "descriptive" else 1.0
        record = {"run_id": f"{objective}-{name}-{budget:g}-{seed}", "objective": objective, "size": "mu",
                  "seed": seed, "budget": f"f{budget:g}", "caption_level": level, "captions": name,
                  "kind": "eval", "point": "end_of_schedule", "step": 100, "flops": budget,
                  "probe_accuracy": 0.5 + 0.1 * np.log10(budget / 1e11) + 0.01 * seed}
        for eval_level in ("short", "descriptive"):
            if objective == "diffusion":
                for k, gain in enumerate(GAIN):
                    value = scale * gain + 0.002 * seed
                    record.update({f"caption_gain_t{k}/{eval_level}": value,
                                   f"caption_gain_t{k}/{eval_level}_low": value - 0.01,
                                   f"caption_gain_t{k}/{eval_level}_high": value + 0.01})
                record[f"caption_gain/{eval_level}"] = scale * GAIN.mean()
            else:
                record[f"retrieval_i2t_r1/{eval_level}"] = 0.2 * scale + 0.1 * seed
        rows.append(record)
    return pd.DataFrame(rows)


def test_seeds_average_with_a_student_t_interval_and_mixes_stay_apart():
    points = caption_points(synthetic_table())
    row = points[(points["metric"] == "retrieval_i2t_r1") & (points["level"] == "short") &
                 (points["captions"] == "descriptive:0.95,short:0.05") & (points["flops"] == 1e12)]
    (value, low, high, seeds), = row[["value", "low", "high", "seeds"]].itertuples(index=False)
    half = 12.7062 * np.std([0.2, 0.3], ddof=1) / np.sqrt(2)  # Student's t, 1 degree of freedom
    assert (value, seeds) == (pytest.approx(0.25), 2)
    assert (low, high) == (pytest.approx(0.25 - half, abs=1e-5), pytest.approx(0.25 + half, abs=1e-5))
    assert set(points["captions"]) == set(MIXES)
    series = eval_points(synthetic_table(), "probe_error")["objective"]
    assert set(series) == {f"{o}/{mix}" for o in ("clip", "diffusion") for mix in MIXES}


def test_figures_csv_and_report_say_where_captions_help(tmp_path, monkeypatch):
    figures = record_figures(monkeypatch)
    drawn, lines = caption_detail(synthetic_table(), tmp_path)
    assert set(figures) == {"caption_gain_by_noise", "caption_mix_vs_compute"}
    assert {tmp_path / f"{stem}.png" for stem in figures} <= set(drawn)
    top_row = figures["caption_gain_by_noise"].axes[:len(MIXES)]  # each mix at its largest compute
    assert [axes.get_title() for axes in top_row] == [f"trained on {mix}, 1e+12 FLOPs"
                                                      for mix in sorted(MIXES)]
    scale = {mix: 2.0 if mix == "descriptive" else 1.0 for mix in MIXES}
    for axes, mix in zip(top_row, sorted(MIXES), strict=True):
        gain = {bars.get_label(): bars.lines[0].get_ydata() for bars in axes.containers}["eval short vs none"]
        np.testing.assert_allclose(np.asarray(gain, float), scale[mix] * GAIN + 0.001)  # mean of seeds 0, 1
    [retrieval] = [axes for axes in figures["caption_mix_vs_compute"].axes
                   if axes.get_title().startswith("clip") and axes.get_title().endswith("(short)")]
    curves = {bars.get_label(): bars.lines[0].get_xydata() for bars in retrieval.containers}
    assert sorted(curves) == sorted(f"{mix} (mu)" for mix in MIXES)
    for mix in MIXES:  # recall at both budgets, the mean of seeds 0 and 1
        np.testing.assert_allclose(np.asarray(curves[f"{mix} (mu)"], float), [[1e11, 0.2 * scale[mix] + 0.05],
                                                           [1e12, 0.2 * scale[mix] + 0.05]])
    assert len(pd.read_csv(tmp_path / "caption_detail.csv"))
    helps = [line for line in lines if line.startswith("- trained on")]
    assert len(helps) == len(MIXES) * 2 and all("most at bucket 3" in line for line in helps)
    assert any("| clip | retrieval_i2t_r1 | short | short | mu | 1e+12 | 0.25 [" in line for line in lines)


def test_a_table_without_caption_metrics_gets_no_caption_section(tmp_path):
    table = synthetic_table()
    plain = table[[c for c in table if "/" not in c]]
    assert caption_detail(plain, tmp_path) == ([], [])
