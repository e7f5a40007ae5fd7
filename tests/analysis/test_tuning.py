"""The tuning section on synthetic tables: a quadratic's optimum and its interval, the grid-edge rule, the
report lines and the transfer figure (no training)."""

import numpy as np
import pandas as pd
import pytest

from scaling.analysis.report import analyze
from scaling.analysis.tuning import LR, PARAMETRIZATION, final_train_loss, fit_optimum, tuning
from scaling.sweeps.spec import TUNING_LEARNING_RATES, log_grid, tuning_runs
from scaling.workdir import END_OF_SCHEDULE

GRID = np.array(log_grid(1e-3, points=7))  # 1.25e-4 to 8e-3


def bowl(learning_rates, optimum: float, curvature: float = 0.05, floor: float = 1.0) -> np.ndarray:
    return floor + curvature * (np.log2(learning_rates) - np.log2(optimum)) ** 2


def test_a_tuning_sweep_gives_one_grid_its_own_rates_and_leaves_the_others_runs_as_they_were():
    narrowed = lambda *grid: (2e-3, 4e-3, 8e-3) if grid == ("igpt", "micro", "mup") else TUNING_LEARNING_RATES
    shared = tuning_runs({}, sizes=("mu", "micro"))
    own = tuning_runs({}, sizes=("mu", "micro"), rates=narrowed)
    ours = lambda run: (run.config.objective, run.config.size, run.config.model.parametrization) == \
        ("igpt", "micro", "mup")
    rates = lambda runs: sorted(run.config.optim.learning_rate for run in runs if ours(run))
    assert rates(own) == [2e-3, 4e-3, 8e-3] and rates(shared) == list(TUNING_LEARNING_RATES)
    assert [run.run_id for run in own if not ours(run)] == [run.run_id for run in shared if not ours(run)]


def test_the_optimum_of_a_noisy_bowl_lies_near_its_minimum_inside_its_interval():
    rng = np.random.default_rng(0)
    values = bowl(GRID, 1.5e-3) + rng.normal(0, 0.005, len(GRID))
    optimum = fit_optimum(GRID, values, np.full(len(GRID), 0.005))
    assert optimum.points == 5 and optimum.best_grid == pytest.approx(2e-3)
    assert optimum.low < 1.5e-3 < optimum.high
    assert optimum.learning_rate == pytest.approx(1.5e-3, rel=0.25)
    assert optimum.high / optimum.low < 2  # five points of little noise bound it within a factor of 2


@pytest.mark.parametrize("true_optimum, side", [(4e-2, "highest"), (2e-5, "lowest")])
def test_a_best_point_on_the_grid_edge_quotes_no_optimum_and_asks_to_widen_it(true_optimum, side):
    optimum = fit_optimum(GRID, bowl(GRID, true_optimum))
    assert optimum.learning_rate is None and optimum.low is None
    assert optimum.note == f"widen the grid: the best point is its {side} learning rate"


def test_a_minimum_beyond_the_fitted_rates_quotes_no_optimum_and_asks_to_widen_the_grid():
    """A probe error whose best point is inside the grid but whose quadratic bottoms out past its top."""
    rates = np.array([4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2])
    optimum = fit_optimum(rates, np.array([0.590, 0.582, 0.583, 0.545, 0.554]), np.full(5, 0.007))
    assert optimum.learning_rate is None and optimum.best_grid == 3.2e-2
    assert optimum.note.startswith("widen the grid: the quadratic's minimum, ") and "beyond" in optimum.note


def test_without_a_validation_loss_a_run_is_ranked_by_its_mean_training_loss_over_its_last_fifth():
    """Per run, the mean of the losses logged from step 80 of 100 on, not the last batch's alone."""
    steps = np.arange(10, 101, 10)
    train = pd.DataFrame({"run_id": np.repeat(["a", "b"], len(steps)), "kind": "train",
                          "step": np.tile(steps, 2), "loss": np.r_[10.0 - steps / 100, 5.0 + steps % 20]})
    eval_row = pd.DataFrame({"run_id": ["a"], "kind": ["eval"], "step": [100], "loss": [np.nan]})
    loss = final_train_loss(pd.concat([train, eval_row]))
    assert loss["a"] == pytest.approx(np.mean([9.2, 9.1, 9.0]))
    assert loss["b"] == pytest.approx(np.mean([5.0, 15.0, 5.0]))


def test_fewer_than_three_learning_rates_quote_no_optimum():
    optimum = fit_optimum(GRID[:2], bowl(GRID[:2], 1e-3))
    assert optimum.learning_rate is None and "a grid needs at least 3" in optimum.note


def tuning_table() -> pd.DataFrame:
    """End-of-schedule eval rows of a tuning sweep: µP's optimum 2e-3 at both widths, standard's
    1.6e-3 at width 32 and beyond the grid at width 64; the probe error follows the loss."""
    rows = []
    optimum = {("mup", "mu"): 2e-3, ("mup", "micro"): 2e-3, ("standard", "mu"): 1.6e-3,
               ("standard", "micro"): 3e-2}
    for (kind, size), best in optimum.items():
        for lr, loss in zip(GRID, bowl(GRID, best), strict=True):
            run = {"run_id": f"clip-{size}-{kind}-{lr:g}", "status": "completed", "objective": "clip",
                   "size": size, "seed": 0, "total_steps": 150, "budget": "steps150", PARAMETRIZATION: kind,
                   LR: lr}
            accuracy = 1.2 - loss / 2
            rows.append({**run, "kind": "eval", "point": "init", "step": 0, "flops": 0.0,
                         "probe_accuracy": 0.1, "probe_accuracy_low": 0.09, "probe_accuracy_high": 0.11})
            rows.append({**run, "kind": "eval", "point": END_OF_SCHEDULE, "step": 150, "flops": 1e12,
                         "val_loss": loss, "probe_accuracy": accuracy, "probe_accuracy_low": accuracy - 0.01,
                         "probe_accuracy_high": accuracy + 0.01})
            rows.append({**run, "kind": "train", "step": 150, "flops": 1e12, "loss": loss + 0.1})
    return pd.DataFrame(rows)


def test_the_tuning_section_lists_optima_asks_to_widen_an_edge_grid_and_draws_one_curve_per_width(tmp_path):
    files, lines = tuning(tuning_table(), tmp_path, boots=50)
    optima = pd.read_csv(tmp_path / "lr_optima.csv")
    loss = optima[optima["metric"] == "loss"].set_index(["parametrization", "width"])
    assert loss.loc[("mup", 32), "learning_rate"] == pytest.approx(2e-3, rel=1e-6)
    assert loss.loc[("mup", 64), "learning_rate"] == pytest.approx(2e-3, rel=1e-6)
    assert np.isnan(loss.loc[("standard", 64), "learning_rate"])
    edge = [line for line in lines if "| standard | 64 |" in line]
    assert len(edge) == 2 and all("widen the grid: the best point is its highest" in line for line in edge)
    assert all(line.split(" | ")[7] == "-" for line in edge)  # no optimum quoted
    moved = [line for line in lines if line.startswith("| loss | clip | mup | 32, 64 |")]
    assert moved == ["| loss | clip | mup | 32, 64 | 1x | 1x |"]
    assert "| loss | clip | standard | 32, 64 | - | - |" in lines  # width 64 has no optimum
    figures = [path for path in files if path.suffix == ".png"]
    assert sorted(path.name for path in figures) == ["lr_transfer_loss.png", "lr_transfer_probe_error.png"]


def test_a_sweep_without_a_learning_rate_grid_has_no_tuning_section(tmp_path):
    table = tuning_table()
    assert tuning(table[table[LR] == GRID[3]], tmp_path) == ([], [])


def test_analyze_on_a_tuning_sweep_writes_its_tuning_section(tmp_path):
    tuning_table().to_csv(tmp_path / "results.csv", index=False)
    report = analyze([tmp_path], boots=20).read_text()
    section = report[report.index("## Tuning: learning rate"):]
    assert "| loss | clip | mup | 32 | 7 | 0.002 |" in section
    assert (tmp_path / "analysis" / "lr_transfer_probe_error.png").is_file()
