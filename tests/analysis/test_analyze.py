"""``scaling analyze`` and the notebooks: a synthetic results table, a tiny real sweep, and bad input."""

import runpy
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT, record_figures, scaling
from matplotlib.collections import PolyCollection

from scaling.analysis import figures
from scaling.analysis.figures import draw_compute
from scaling.analysis.points import eval_points, load_results
from scaling.analysis.report import analyze, summary
from scaling.errors import ConfigError
from scaling.models.sizes import LADDER

BUDGETS = (1e15, 1e16, 1e17)
BEST_LOG_FLOPS = {"mu": 15.5, "micro": 16.5}  # each size is compute-optimal around here
SPEEDUP = {"clip": 4.0, "igpt": 1.0}  # clip at C does what igpt does at 4 C


def true_error(objective: str, size: str, flops: float) -> float:
    penalty = 0.02 * (np.log10(flops) - BEST_LOG_FLOPS[size]) ** 2
    return 30.0 * (flops * SPEEDUP[objective]) ** -0.12 * (1 + penalty)


INIT_ACCURACY = 0.02  # every run's probe at initialisation, far below its trained points


def synthetic_table() -> pd.DataFrame:
    """Rows as scaling.sweeps.results builds them: per run its init record, a mid-schedule eval, a
    cool-down branch and the end of the schedule, with per-layer probes and a validation loss."""
    rng, rows = np.random.default_rng(0), []
    for objective in SPEEDUP:
        for size, budget in ((s, b) for s in BEST_LOG_FLOPS for b in BUDGETS):
            depth, run_id = LADDER[size].depth, f"{objective}-{size}-f{budget:.0e}"
            run = {"run_id": run_id, "status": "completed", "objective": objective, "size": size, "seed": 0,
                   "total_steps": 1000, "budget": f"f{budget:.0e}", "kind": "eval"}
            rows.append({**run, "point": "init", "step": 0, "flops": 0.0, "probe_accuracy": INIT_ACCURACY,
                         **{f"probe_accuracy/layer_{k:02d}": INIT_ACCURACY for k in range(1, depth + 1)}})
            for point, fraction in (("mid_schedule", 0.25), ("cooldown_branch", 0.3), ("end_of_schedule", 1)):
                flops = budget * fraction
                error = true_error(objective, size, flops) * np.exp(rng.normal(0, 0.02))
                layers = {f"probe_accuracy/layer_{k:02d}": (1 - error) * (1 - 0.1 * abs(k / depth - 0.6))
                          for k in range(1, depth + 1)}
                branch = {"cooldown_steps": 50, "step": 250} if point == "cooldown_branch" else {}
                rows.append({**run, "point": point, "step": int(1000 * fraction), "flops": flops, **branch,
                             "probe_accuracy": max(layers.values()), **layers, "val_loss": 2 + error})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def synthetic_sweep(tmp_path_factory):
    directory = tmp_path_factory.mktemp("synthetic")
    synthetic_table().to_csv(directory / "results.csv", index=False)
    return directory


def test_analyze_writes_laws_multipliers_and_figures(synthetic_sweep, monkeypatch):
    drawn = record_figures(monkeypatch)
    report = analyze([synthetic_sweep], boots=200).read_text()
    out = synthetic_sweep / "analysis"
    assert set(drawn) == {"frontiers", "layers", "probe_vs_loss", "isoflop"}
    for name in drawn:
        assert (out / f"{name}.png").exists() and (out / f"{name}.svg").exists()
    assert "| clip | E = a C^-b | a = " in report and "| igpt | E = E_inf + a C^-b | E_inf = " in report
    headline = next(line for line in report.splitlines() if line.startswith("| clip | igpt | 1e+17 | 1/"))
    ratio = float(headline.split(" | 1/")[1].split(" ")[0])
    assert 2.5 < ratio < 6.5, headline  # built with 4
    assert headline.endswith("| resolved | - | yes |"), headline
    assert "| clip | igpt | 1/" in report.split("## Sensitivity")[1]  # with micro, then mu, left out
    assert "extrapolated" in report and "| yes |" in report
    spent = 2 * 2 * sum(BUDGETS) * (1 + 0.3 * 5 / 30)  # each run: its budget, and a 5-step branch at 25
    assert f"Training compute spent: {spent:.3g} FLOPs, of which {spent - 4 * sum(BUDGETS):.3g} in " \
           "cool-down branches" in report
    table = synthetic_table()
    for objective in SPEEDUP:
        top = table[(table["objective"] == objective) & (table["point"] != "mid_schedule")]
        best = top[top["flops"] == top["flops"].max()]["probe_accuracy"].max()
        assert f"| {objective} | micro | {top['flops'].max():.3g} | {best:.3f} | - |" in report
    optima = report.split("(isoFLOP)")[1]
    ends = table[table["point"].isin(["cooldown_branch", "end_of_schedule"])]
    for objective, flops in ends.groupby(["objective", "flops"]).groups:  # every size at each end's compute
        best = ends[(ends["objective"] == objective) & (ends["flops"] == flops)].sort_values("probe_accuracy")
        assert f"| {objective} | {flops:.3g} | 2 | {best['size'].iloc[-1]} |" in optima

    frontier = pd.read_csv(out / "frontier.csv")
    assert set(frontier["point"]) <= {"end_of_schedule", "cooldown_branch"}  # mid-schedule never
    assert_figures_show_the_table(drawn, frontier, table)


def assert_figures_show_the_table(drawn, frontier: pd.DataFrame, table: pd.DataFrame):
    """Each figure of ``analyze`` draws what it says: frontier points with a law and two bands per fit,
    layer profiles, probe accuracy against validation loss, and each budget's isoFLOP curve."""
    axes = drawn["frontiers"].axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    laws = [label for label in lines if label.startswith(("clip ", "igpt ")) and ": E = " in label]
    assert "clip power: E = a C^-b" in laws and "igpt saturating: E = E_inf + a C^-b" in laws
    assert len([c for c in axes.collections if isinstance(c, PolyCollection)]) == 2 * len(laws)
    for objective, edge in frontier.groupby("objective"):
        np.testing.assert_allclose(lines[f"{objective} frontier"].get_xydata(), edge[["flops", "error"]])

    profiles = figures.layer_profiles(table)
    layer_lines = drawn["layers"].axes[0].get_lines()
    assert sorted(line.get_label() for line in layer_lines) == [
        "clip micro", "clip mu", "igpt micro", "igpt mu"]
    for line in layer_lines:
        objective, size = line.get_label().split()
        rows = profiles[(profiles["objective"] == objective) & (profiles["size"] == size)]
        np.testing.assert_allclose(line.get_xydata(), rows[["relative_depth", "accuracy"]])

    evals = table[(table["kind"] == "eval") & (table["point"] != "init")]  # init records hold no loss
    for panel in drawn["probe_vs_loss"].axes:
        drawn_points = np.concatenate([c.get_offsets() for c in panel.collections])
        rows = evals[evals["objective"] == panel.get_title()]
        assert sorted(map(tuple, drawn_points)) == sorted(zip(rows["val_loss"], rows["probe_accuracy"],
                                                              strict=True))

    for panel in drawn["isoflop"].axes:
        curves = [line for line in panel.get_lines() if line.get_linestyle() == "-"]
        assert [line.get_label() for line in curves] == [f"{f * b:.2g}" for b in BUDGETS for f in (0.3, 1)]
        assert all(len(line.get_xdata()) == 2 for line in curves)  # mu and micro at each compute


def test_flat_noisy_frontiers_are_never_resolved(tmp_path):
    """Probes near chance at every budget: two frontier points per objective, exponents near 0."""
    table = synthetic_table().query("size == 'mu'")
    accuracy = 0.1 + np.random.default_rng(1).normal(0, 0.02, len(table))
    table = table.assign(**{c: np.where(table["point"] == "init", INIT_ACCURACY, accuracy)
                            for c in table if c.startswith("probe_accuracy")})
    table.to_csv(tmp_path / "results.csv", index=False)
    report = analyze([tmp_path], boots=100, min_steps=0)
    lines = summary(report).splitlines()
    assert lines[2].startswith("| clip | igpt | ") and "| resolved |" not in lines[2], lines
    assert "e-" not in lines[2]  # no bound like 7e-81x


def test_points_under_min_steps_or_not_above_init_never_enter_a_fit(tmp_path):
    """Cool-down branches (300 steps) fall under --min-steps 500; clip micro's init probes as well as its
    trained points, so none of them is above its init; one igpt run has no init record."""
    table = synthetic_table()
    clip_micro_init = table["run_id"].str.startswith("clip-micro") & (table["point"] == "init")
    table.loc[clip_micro_init, "probe_accuracy"] = 0.9
    table = table[(table["run_id"] != "igpt-mu-f1e+17") | (table["point"] != "init")]
    table.to_csv(tmp_path / "results.csv", index=False)
    points = eval_points(load_results([tmp_path]), "probe_error", min_steps=500)
    trained = points[points["trained"]]
    assert set(trained["point"]) == {"end_of_schedule"} and (trained["steps"] == 1000).all()
    assert not trained["run_id"].str.startswith("clip-micro").any() and len(trained) == 8
    assert "igpt-mu-f1e+17" not in set(trained["run_id"])
    report = analyze([tmp_path], boots=20, min_steps=500).read_text()
    frontier = pd.read_csv(tmp_path / "analysis" / "frontier.csv")
    assert set(frontier["point"]) == {"end_of_schedule"} and "micro" not in set(
        frontier[frontier["objective"] == "clip"]["size"])
    untrained = report.split("## Untrained points")[1].split("##")[0]
    assert "| clip | micro | 0 | end_of_schedule | 1e+17 | 1000 | " in untrained
    assert untrained.count("not above init by its interval") == 6  # clip micro's ends and branches
    assert untrained.count("300 < 500 steps") == 12
    assert untrained.count("no init record") == 2  # igpt mu's end of schedule and its branch
    assert "at least 500 optimizer steps (`--min-steps`)" in report and "--min-steps 500" in report


def test_notebooks_run_as_scripts_through_the_library(synthetic_sweep, monkeypatch, capsys):
    monkeypatch.setenv("SWEEP_DIR", str(synthetic_sweep))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    prints = {"layers.py": "layer_01", "scaling_laws.py": "| clip | igpt | 1e+17 | 1/"}
    assert sorted(p.name for p in (ROOT / "analysis").glob("*.py")) == sorted(prints)
    for name, expected in prints.items():
        notebook = ROOT / "analysis" / name
        assert notebook.read_text().count("# %%") >= 2, f"{notebook} is not a percent-format notebook"
        runpy.run_path(str(notebook), run_name="__main__")
        printed = capsys.readouterr().out
        assert expected in printed and f"figures in {synthetic_sweep / 'analysis'}" in printed


def test_bad_input_is_a_clear_error(synthetic_sweep, tmp_path):
    with pytest.raises(ConfigError, match="holds no eval results .* run a sweep into it first"):
        load_results([tmp_path])
    table = load_results([synthetic_sweep])
    with pytest.raises(ConfigError, match="--metric top5_error: not in the results table; choose one of "
                                          "probe_error, val_loss"):
        eval_points(table, "top5_error")
    with pytest.raises(ConfigError, match="--layer layer_07: no such probed layer .* layer_01, layer_02"):
        eval_points(table, "probe_error", "layer_07")
    with pytest.raises(ConfigError, match="--min-steps -1: a number of optimizer steps cannot be negative"):
        analyze([synthetic_sweep], min_steps=-1)
    synthetic_table().query("point != 'init'").to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(ConfigError, match=r"12 runs in .* have no init record \(e.g. clip-micro-f1e\+15\), "
                                          "so no point can be shown to be trained; .* `python -m "
                                          r"scaling.sweeps.init_probes <sweep file> <sweep dir>` re-creates"):
        analyze([tmp_path])
    few = synthetic_table().query("budget == 'f1e+15' and point in ('end_of_schedule', 'init')")
    few.to_csv(tmp_path / "results.csv", index=False)
    report = analyze([tmp_path], boots=20).read_text()
    assert "No pair of objectives has 3 trained frontier points each (at --min-steps 100): no multiplier " \
           "is computed." in report
    assert "| clip | E = a C^-b | not fitted: clip: the power law (E = a C^-b) has 2 parameters but only 1 " \
           "frontier points" in report


def test_analyze_command_on_a_tiny_real_sweep(tiny_sweep, tmp_path, capsys):
    """Three CLIP runs, one with WSD cool-down branches at its first two eval points: five honest points."""
    sweep_dir = tmp_path / "tiny"
    shutil.copytree(tiny_sweep["dir"], sweep_dir, ignore=shutil.ignore_patterns("checkpoints"))
    table = load_results([sweep_dir])
    evals = table[table["run_id"] == tiny_sweep["runs"]["branched"].name].query("kind == 'eval'")
    assert list(zip(evals["point"], evals["step"], strict=True)) == [
        ("init", 0), ("mid_schedule", 5), ("cooldown_branch", 5), ("mid_schedule", 10),
        ("cooldown_branch", 10), ("end_of_schedule", 20)]
    assert scaling("analyze", sweep_dir, "--metric", "val_loss", "--boots", "50", "--min-steps", "0") == 0
    report = (sweep_dir / "analysis" / "report.md").read_text()
    assert "| clip | E = a C^-b | a = " in report and "(needs two objectives with 3 trained" in report
    assert "9 eval points (2 cooldown_branch, 3 end_of_schedule, 4 mid_schedule)" in report
    assert "(not checked: the init records carry no val_loss)" in report  # probes only, at step 0
    assert f"report and figures: {sweep_dir / 'analysis'}" in capsys.readouterr().out

    assert scaling("analyze", sweep_dir, "--metric", "top5_error") == 2
    printed = capsys.readouterr()
    errors = [line for line in printed.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in printed.err, printed.err[-2000:]
    assert errors[0].startswith("error: --metric top5_error: not in the results table; choose one of ")
    assert "probe_error" in errors[0] and "val_loss" in errors[0]


def test_caption_levels_of_one_objective_are_series_of_their_own():
    table = synthetic_table().assign(caption_level="descriptive")
    table.loc[(table["objective"] == "clip") & (table["size"] == "mu"), "caption_level"] = "short"
    counts = eval_points(table, "probe_error")["objective"].value_counts().to_dict()
    assert counts == {"igpt": 18, "clip/short": 9, "clip/descriptive": 9}  # init records apart


def test_an_extra_label_is_analysed_over_its_own_pixel_floor(tmp_path):
    floors = {"pixel_probe_accuracy": 0.1, "count_pixel_probe_accuracy": 0.3}
    table = synthetic_table().assign(**{f"{column}{suffix}": value + shift for column, value in floors.items()
                                        for suffix, shift in (("", 0), ("_low", -0.02), ("_high", 0.02))})
    table["count_probe_accuracy"] = 0.5 * table["probe_accuracy"]
    table.to_csv(tmp_path / "results.csv", index=False)
    report = analyze([tmp_path], metric="count_probe_error", boots=20).read_text()
    assert "Metric: **count_probe_error**" in report and (tmp_path / "analysis" / "compute.png").exists()
    axes = draw_compute(table, "count_probe_accuracy").axes[0]
    references = {line.get_ydata()[0] for line in axes.get_lines() if line.get_linestyle() == "--"}
    assert references == {0.3}
    assert "(count)" in axes.get_title()


def test_layer_profiles_keep_each_feature_variant_on_its_own_depth_axis():
    """Diffusion probes layers at several timesteps ("layer_02/t30"): each timestep is its own profile."""
    base = {"status": "completed", "size": "mu", "seed": 0, "kind": "eval", "point": "end_of_schedule",
            "flops": 1e15}
    diffusion = {f"probe_accuracy/layer_0{k}/t{t}": 0.1 * k + 0.01 * t for k in (1, 2) for t in (0, 30)}
    table = pd.DataFrame([{**base, "objective": "clip", "probe_accuracy/layer_01": 0.5,
                           "probe_accuracy/layer_02": 0.6},
                          {**base, "objective": "diffusion", **diffusion}])
    profiles = figures.layer_profiles(table).set_index(["objective", "variant", "layer"])
    assert len(profiles) == 6
    assert profiles.loc[("clip", "", "layer_02"), "relative_depth"] == 1.0
    assert profiles.loc[("diffusion", "t30", "layer_01"), "relative_depth"] == 0.5
    assert profiles.loc[("diffusion", "t30", "layer_02"), "accuracy"] == pytest.approx(0.5)
    assert profiles.loc[("diffusion", "t0", "layer_02"), "accuracy"] == pytest.approx(0.2)


def test_a_stated_reference_is_drawn_named_and_kept_in_the_command(synthetic_sweep, tmp_path, capsys):
    floor = {"raw pixels, 2x2-pooled (data README)": 0.415}
    report = analyze([synthetic_sweep], boots=20, out=tmp_path / "out", references=floor).read_text()
    assert "--reference 'raw pixels, 2x2-pooled (data README)=0.415'`" in report
    assert "not measured by these sweeps): raw pixels, 2x2-pooled (data README), accuracy 0.415." in report
    axes = draw_compute(synthetic_table(), references=floor).axes[0]
    dotted = [line for line in axes.get_lines() if line.get_linestyle() == ":"]
    assert [(line.get_ydata()[0], line.get_label()) for line in dotted] == [
        (0.415, "raw pixels, 2x2-pooled (data README): 0.415")]
    with pytest.raises(ConfigError, match="--reference: val_loss is not 1 - an accuracy"):
        analyze([synthetic_sweep], metric="val_loss", boots=20, out=tmp_path / "x", references=floor)
    assert scaling("analyze", synthetic_sweep, "--out", tmp_path / "y", "--reference", "pixels 0.4") == 2
    assert "--reference 'pixels 0.4': write LABEL=ACCURACY" in capsys.readouterr().err


def test_the_pixel_floor_of_each_probe_seed_is_one_reference_line():
    """Probe seeds pick C on different validation splits, so the floor differs by seed; it is one floor."""
    table = synthetic_table()
    seed_one = table["run_id"].str.endswith("f1e+15")
    floors = np.where(seed_one, 0.392, 0.380)
    table = table.assign(pixel_probe_accuracy=floors, pixel_probe_accuracy_low=floors - 0.01,
                         pixel_probe_accuracy_high=floors + 0.01)
    axes = draw_compute(table).axes[0]
    dashed = [line for line in axes.get_lines() if line.get_linestyle() == "--"]
    assert [(line.get_ydata()[0], line.get_label()) for line in dashed] == [
        (pytest.approx(0.386), "raw pixels")]
    [band] = axes.patches
    assert band.get_y() == pytest.approx(0.370) and band.get_height() == pytest.approx(0.032)
