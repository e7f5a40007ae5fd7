import json

import pytest
from helpers import tiny_fields

from scaling.errors import ConfigError
from scaling.sweeps.probes import probe_sweep
from scaling.sweeps.results import build_table
from scaling.sweeps.runner import run_sweep
from scaling.sweeps.spec import Budget, Sweep, grid

PROBE_SET = "scenes/32_small"
COLUMN = "scenes_32_small_probe_accuracy"


class KilledError(Exception):
    pass


def test_sweep_probes_at_every_point_killed_and_rerun_run_once_and_join_the_table(tmp_path, data_dir):
    fields = tiny_fields(data_dir, **{"eval.num_points": 2, "eval.probe_train_examples": 128,
                                      "eval.probe_test_examples": 64, "eval.val_split": "",
                                      "eval.zero_shot_points": "final", "keep_checkpoints": 1,
                                      "keep_eval_checkpoints": True})
    run_sweep(Sweep("probed", grid(["clip"], ["mu"], [Budget.steps(6)], fields=fields)), tmp_path,
              out=lambda _: None)
    sweep_dir = tmp_path / "probed"
    (run_dir,) = (p for p in sweep_dir.iterdir() if p.is_dir())
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()) == [1, 6]  # eval points kept

    def kill_after_the_first(line: str) -> None:
        raise KilledError(line)

    with pytest.raises(KilledError):
        probe_sweep(sweep_dir, PROBE_SET, points="all", out=kill_after_the_first)
    results = sorted(sweep_dir.glob("*/probes/*/result.json"))
    assert len(results) == 1 and not list(sweep_dir.rglob("probes/*/lease-*.json"))
    first = results[0].read_text()

    assert probe_sweep(sweep_dir, PROBE_SET, points="all", out=lambda _: None) == {"probed": 2, "done": 1,
                                                                                    "held": 0}
    assert probe_sweep(sweep_dir, PROBE_SET, out=lambda _: None) == {"probed": 0, "done": 1, "held": 0}
    assert results[0].read_text() == first  # the probe done before the kill was not redone

    table = build_table(sweep_dir)
    probed = table[table[COLUMN].notna()]
    assert list(probed.step) == [0, 1, 6]
    assert list(probed.point) == ["init", "mid_schedule", "end_of_schedule"]
    for step, row in probed.set_index("step").iterrows():
        job = "scenes_32_small" if step == 6 else f"scenes_32_small-step{step}"
        result = json.loads((run_dir / "probes" / job / "result.json").read_text())
        assert result["train_examples"] == 128 and result["test_examples"] == 64  # as the run's probes
        assert row[COLUMN] == result["probe_accuracy"] and 0 < result["probe_accuracy"] <= 1
    # on the run's own data set each point's probe is the run's own: the checkpoints of steps 1 and 6, and
    # step 0 re-created from the seed, are the parameters the run evaluated there
    assert list(probed[COLUMN]) == list(probed.probe_accuracy)
    # the run scored zero-shot at its end-of-schedule point only (eval.zero_shot_points), the same score
    # as the probe of that checkpoint; a probe job scores it at every point
    zero_shot = probed.zero_shot_accuracy
    assert zero_shot.isna().tolist() == [True, True, False]
    assert zero_shot.iloc[-1] == probed.scenes_32_small_zero_shot_accuracy.iloc[-1]
    assert probed.scenes_32_small_zero_shot_accuracy.notna().all()

    # a per-class training subset is a probe set of its own: its own job and columns
    counts = probe_sweep(sweep_dir, PROBE_SET, train_per_class=8, out=lambda _: None)
    assert counts == {"probed": 1, "done": 0, "held": 0}
    subset = json.loads((run_dir / "probes" / "scenes_32_small_8perclass" / "result.json").read_text())
    assert (subset["train_examples"], subset["train_per_class"], subset["step"]) == (64, 8, 6)  # 8 shapes
    table = build_table(sweep_dir)
    (final,) = table[table["scenes_32_small_8perclass_probe_accuracy"].notna()].itertuples()
    assert final.step == 6 and final.scenes_32_small_8perclass_probe_accuracy == subset["probe_accuracy"]
    assert getattr(final, COLUMN) == probed.set_index("step").loc[6, COLUMN]  # the full probe's kept

    (run_dir / "checkpoints" / "1").rename(run_dir / "1.aside")  # as a run trained without keeping it
    with pytest.raises(ConfigError, match="kept no checkpoint of its eval points at steps 1; probe its "
                       "final point .* --config.keep_eval_checkpoints=true"):
        probe_sweep(sweep_dir, PROBE_SET, points="all")


def test_probing_a_folder_without_completed_runs_names_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no completed run; run the sweep first"):
        probe_sweep(tmp_path / "empty", PROBE_SET)
    with pytest.raises(ConfigError, match="is not a sweep folder"):
        probe_sweep(tmp_path / "absent", PROBE_SET)
