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


def test_a_sweep_probe_killed_and_rerun_probes_every_run_once_and_joins_the_table(tmp_path, data_dir):
    fields = tiny_fields(data_dir, **{"eval.num_points": 1, "eval.probe_train_examples": 128,
                                      "eval.probe_test_examples": 64, "eval.val_split": "",
                                      "eval.zero_shot": False})
    sweep = Sweep("probed", grid(["clip"], ["mu"], [Budget.steps(4), Budget.steps(6)], fields=fields))
    run_sweep(sweep, tmp_path, out=lambda _: None)
    sweep_dir = tmp_path / "probed"

    def kill_after_the_first(line: str) -> None:
        raise KilledError(line)

    with pytest.raises(KilledError):
        probe_sweep(sweep_dir, PROBE_SET, out=kill_after_the_first)
    results = sorted(sweep_dir.glob("*/probes/*/result.json"))
    assert len(results) == 1 and not list(sweep_dir.rglob("probes/*/lease-*.json"))
    first = results[0].read_text()

    assert probe_sweep(sweep_dir, PROBE_SET, out=lambda _: None) == {"probed": 1, "done": 1, "held": 0}
    assert probe_sweep(sweep_dir, PROBE_SET, out=lambda _: None) == {"probed": 0, "done": 2, "held": 0}
    assert results[0].read_text() == first  # the probe done before the kill was not redone

    table = build_table(sweep_dir)
    probed = table[table[COLUMN].notna()]
    assert sorted(probed.step) == [4, 6] and set(probed.kind) == {"eval"}
    for run_dir in (tmp_path / "probed").iterdir():
        if run_dir.is_dir():
            result = json.loads((run_dir / "probes" / "scenes_32_small" / "result.json").read_text())
            assert result["train_examples"] == 128 and result["test_examples"] == 64  # as the run's probes
            row = probed[probed.run_id == run_dir.name]
            assert row[COLUMN].item() == result["probe_accuracy"] and 0 < result["probe_accuracy"] <= 1


def test_probing_a_folder_without_completed_runs_names_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no completed run; run the sweep first"):
        probe_sweep(tmp_path / "empty", PROBE_SET)
    with pytest.raises(ConfigError, match="is not a sweep folder"):
        probe_sweep(tmp_path / "absent", PROBE_SET)
