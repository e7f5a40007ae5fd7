"""The language-ladder table: each series at the largest compute all series share, the best size averaged
over its seeds with a Student-t interval, a single seed with its record's interval, beside its init."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from scaling.analysis.ladder import ladder, ladder_lines

SERIES = {("clip", "label"): 0.60, ("clip", "descriptive"): 0.65, ("igpt", "none"): 0.50}  # shape accuracy
SHARED, EXTRA = (1e12, 3e12), 1e13  # every series' budgets; descriptive CLIP's alone


def accuracy(base: float, size: str, flops: float, seed: int) -> float:
    return base + 0.05 * np.log10(flops / 1e12) + (0.03 if size == "micro" else 0.0) + 0.01 * seed


def synthetic_table() -> pd.DataFrame:
    """Per series, sizes mu and micro at the shared budgets (micro with three seeds at the top one), each run
    an init record and its end of schedule with shape and count probes, intervals and raw-pixel probes."""
    rows = []
    for (objective, text), base in SERIES.items():
        budgets = [*SHARED, EXTRA] if text == "descriptive" else list(SHARED)
        for size in ("mu", "micro"):
            for flops in budgets:
                for seed in (0, 1, 2) if (size, flops) == ("micro", 3e12) else (0,):
                    run = {"run_id": f"{objective}-{text}-{size}-{flops:g}-s{seed}", "objective": objective,
                           "size": size, "seed": seed, "caption_level": text, "kind": "eval",
                           "budget": f"f{flops:g}"}
                    shape, count = accuracy(base, size, flops, seed), accuracy(base - 0.2, size, flops, seed)
                    rows.append({**run, "point": "init", "step": 0, "flops": 0.0, "probe_accuracy": 0.2,
                                 "count_probe_accuracy": 0.1 + 0.01 * seed})
                    rows.append({**run, "point": "end_of_schedule", "step": 500, "flops": flops,
                                 "probe_accuracy": shape, "probe_accuracy_low": shape - 0.01,
                                 "probe_accuracy_high": shape + 0.01, "count_probe_accuracy": count,
                                 "count_probe_accuracy_low": count - 0.02,
                                 "count_probe_accuracy_high": count + 0.02,
                                 "pixel_probe_accuracy": 0.3, "count_pixel_probe_accuracy": 0.25})
    return pd.DataFrame(rows)


def test_each_series_at_the_largest_shared_compute_its_best_size_over_seeds_beside_its_init():
    rows = ladder(synthetic_table()).set_index(["series", "attribute"])
    assert sorted(set(rows.index.get_level_values(0))) == ["clip/descriptive", "clip/label", "igpt"]
    assert set(rows["flops"]) == {3e12}  # not descriptive CLIP's 1e13, which no other series reached
    label = rows.loc[("clip/label", "probe_accuracy")]
    seeds = [accuracy(0.60, "micro", 3e12, seed) for seed in (0, 1, 2)]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(seeds), scale=stats.sem(seeds))
    assert (label["size"], label["seeds"]) == ("micro", 3)
    assert (label["accuracy"], label["low"], label["high"]) == (pytest.approx(np.mean(seeds)),
                                                                pytest.approx(low), pytest.approx(high))
    count = rows.loc[("igpt", "count_probe_accuracy")]
    assert count["init"] == pytest.approx(0.11)  # the mean init of the three micro seeds' runs
    assert count["pixels"] == pytest.approx(0.25)


def test_two_points_of_one_seed_at_one_compute_level_count_as_one_seed():
    table = synthetic_table()
    end = table[(table["run_id"] == "igpt-none-micro-3e+12-s0") & (table["point"] == "end_of_schedule")]
    branch = end.assign(point="cooldown_branch", flops=2.9e12, probe_accuracy=end["probe_accuracy"] + 0.1)
    rows = ladder(pd.concat([table, branch])).set_index(["series", "attribute"])
    row = rows.loc[("igpt", "probe_accuracy")]
    seeds = [accuracy(0.50, "micro", 3e12, 0) + 0.05, *(accuracy(0.50, "micro", 3e12, s) for s in (1, 2))]
    assert (row["seeds"], row["accuracy"]) == (3, pytest.approx(np.mean(seeds)))


def test_a_single_seed_keeps_its_records_interval_and_the_report_lines_show_every_rung():
    table = synthetic_table()
    table = table[~((table["size"] == "micro") & (table["seed"] > 0))]  # one seed everywhere
    rows = ladder(table).set_index(["series", "attribute"])
    count = rows.loc[("clip/descriptive", "count_probe_accuracy")]
    expected = accuracy(0.45, "micro", 3e12, 0)
    assert (count["low"], count["high"]) == (pytest.approx(expected - 0.02), pytest.approx(expected + 0.02))
    lines = ladder_lines(table)
    assert lines[0] == "## Language ladder" and "at 3e+12 FLOPs" in lines[2]
    assert lines[4] == "| series | probe_accuracy | count_probe_accuracy |"
    shape = accuracy(0.65, "micro", 3e12, 0)
    assert lines[6].startswith(f"| clip/descriptive | {100 * shape:.1f}% [{100 * shape - 1:.1f}, "
                               f"{100 * shape + 1:.1f}] (micro, 1 seed; init 20.0%) | ")
    assert lines[9] == "| raw pixels, same examples | 30.0% | 25.0% |"


def test_no_section_when_every_objective_trained_on_one_text():
    table = synthetic_table()
    assert ladder_lines(table[table["caption_level"] != "label"]) == []
