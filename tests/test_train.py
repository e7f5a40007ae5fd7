"""The trainer: a run's files and records against compute, probes during training and by ``scaling probe``,
exact resume after SIGKILL, refusals, divergence, cool-down branches and gradient accumulation."""

import json
import math
import shutil
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import built_once, kill_when_held, load_experiment, random_batch, read_jsonl, scaling
from tensorboardX.proto import event_pb2

from scaling.errors import ConfigError
from scaling.objectives import validate_config
from scaling.schedule import cooldown_branches
from scaling.state import CheckpointError
from scaling.step import accumulated_value_and_grad, build_training
from scaling.train import DivergedError, train
from scaling.workdir import RunFiles


def read_metrics(workdir, kind="train"):
    return [r for r in read_jsonl(workdir / "metrics.jsonl") if r["kind"] == kind]


def read_events(path) -> list[event_pb2.Event]:
    """The events of a TensorBoard event file (TFRecord framing: length, its CRC, data, its CRC)."""
    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
        offset += 12 + length + 4
    return events


def scalars(workdir, tag: str) -> list[tuple[int, float]]:
    """(step, value) of ``tag`` over a run's event files, in the order written."""
    files = sorted((workdir / "tensorboard").glob("events.out.tfevents.*"))
    return [(event.step, value.simple_value) for path in files for event in read_events(path)
            for value in event.summary.value if value.tag == tag]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    """One uninterrupted 80-step CLIP run, trained once per session (by one xdist worker) and shared by the
    tests below, which copy what they write into."""
    config = load_experiment("clip")
    config.data.name, config.data.data_dir = "scenes/32_small", data_dir
    config.batch_size, config.total_steps, config.checkpoint_every, config.log_every = 16, 80, 20, 5
    config.optim.warmup_steps, config.optim.learning_rate = 5, 3e-3
    config.data.caption_level = "medium"
    config.eval.update(num_points=2, first_fraction=0.25, batch_size=128, probe_train_examples=600,
                       probe_test_examples=300, val_batches=1)
    workdir = built_once(tmp_path_factory, "finished_run", lambda path: train(config, path))
    return config, workdir, RunFiles(workdir).read_result()


def test_run_leaves_its_files_and_the_loss_falls(finished_run):
    config, workdir, result = finished_run
    assert json.loads((workdir / "result.json").read_text()) == result
    assert result["status"] == "completed" and result["step"] == 80
    assert json.loads((workdir / "config.json").read_text()) == json.loads(config.to_json())
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(5, 81, 5))
    per_step = result["flops_per_example"] * config.batch_size
    assert all(r["flops"] == pytest.approx(r["step"] * per_step) for r in records)
    assert all(r["examples"] == r["step"] * 16 for r in records)
    assert [r["wall_s"] for r in records] == sorted(r["wall_s"] for r in records)
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-4:]) / 4
    assert last < first - 0.3
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        60, 80]


def test_tensorboard_scalars_mirror_the_metrics_records(finished_run):
    _, workdir, _ = finished_run
    train_records, eval_records = read_metrics(workdir), read_metrics(workdir, kind="eval")
    for tag, records, field in [("train/loss", train_records, "loss"),
                                ("train/learning_rate", train_records, "learning_rate"),
                                ("eval/probe_accuracy", eval_records, "probe_accuracy")]:
        assert scalars(workdir, tag) == [(r["step"], pytest.approx(r[field], rel=1e-6)) for r in records]


def test_probe_points_are_recorded_against_compute(finished_run):
    config, workdir, result = finished_run
    init, *evals = read_metrics(workdir, kind="eval")
    assert (init["point"], init["step"], init["flops"]) == ("init", 0, 0)  # the baseline, at zero compute
    assert 0 < init["probe_accuracy"] <= 1 and init["probe_C"] > 0
    assert "zero_shot_accuracy" not in init and "val_loss" not in init
    assert [r["step"] for r in evals] == [20, 80]
    assert [r["point"] for r in evals] == ["mid_schedule", "end_of_schedule"]  # cosine: no cool-downs
    assert result["total_flops"] == result["flops"] and result["cooldown_flops"] == 0
    assert evals[-1]["flops"] == result["flops"]
    for record in evals:
        layers = {key for key in record if key.startswith("probe_accuracy/")}
        assert layers == {"probe_accuracy/layer_01", "probe_accuracy/layer_02"}
        assert record["probe_accuracy"] == record[f"probe_accuracy/{record['probe_layer']}"]
        assert record["probe_C"] > 0 and 0 < record["probe_val_accuracy"] <= 1  # what validation chose
        # a fraction of the probe test examples, scored on every one of them
        tested = config.eval.probe_test_examples
        correct = record["zero_shot_accuracy"] * tested
        assert correct == pytest.approx(round(correct))
        assert {f"fewshot_{k}shot/layer_0{i}" for k in (1, 10, 25) for i in (1, 2)} <= set(record)
        assert not any(key.startswith("fewshot") and "/" not in key for key in record)
    # the contrastive loss over a validation batch starts at log(batch) and falls as the run trains
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] < math.log(config.eval.batch_size)


def test_probe_command_repeats_the_probe_of_training(finished_run, tmp_path, capsys):
    config, source, _ = finished_run
    workdir = tmp_path / "probed"
    shutil.copytree(source, workdir)
    examples = [f"--max-train={config.eval.probe_train_examples}",
                f"--max-test={config.eval.probe_test_examples}"]
    assert scaling("probe", "--workdir", workdir, "--layers=layer_02", *examples) == 0
    assert f"wrote {workdir}/probe.json" in capsys.readouterr().out
    probe = json.loads((workdir / "probe.json").read_text())
    assert probe["step"] == 80 and probe["probe_layer"] == "layer_02"
    assert (probe["train_examples"], probe["test_examples"]) == (600, 300)
    final = read_metrics(workdir, kind="eval")[-1]  # the same checkpoint, examples and protocol
    assert probe["probe_accuracy"] == final["probe_accuracy/layer_02"]
    assert probe["zero_shot_accuracy"] == final["zero_shot_accuracy"]
    # a per-class training subset: 10 of each of the 8 shapes
    assert scaling("probe", "--workdir", workdir, "--layers=layer_02", "--train-per-class=10",
                   "--max-test=300") == 0
    subset = json.loads((workdir / "probe.json").read_text())
    assert (subset["train_examples"], subset["test_examples"], subset["test_split"]) == (80, 300, "test")
    assert 0 < subset["probe_accuracy"] <= 1 and "fewshot_10shot/layer_02" in subset


def test_sigkill_then_rerun_resumes_and_matches_the_uninterrupted_run(finished_run, tmp_path):
    config, reference_dir, reference = finished_run
    workdir = tmp_path / "killed"
    command = [
        "train", "--config", "experiments/clip.py:size=mu", "--workdir", workdir,
        f"--config.data.name={config.data.name}", f"--config.data.data_dir={config.data.data_dir}",
        "--config.batch_size=16", "--config.total_steps=80", "--config.checkpoint_every=20",
        "--config.log_every=5", "--config.optim.warmup_steps=5", "--config.optim.learning_rate=0.003",
        "--config.data.caption_level=medium", "--config.eval.num_points=0",
    ]
    kill_when_held(tmp_path / "held", 45, *command)  # killed after step 45's record, checkpoint 40 on disk
    assert not (workdir / "result.json").exists()
    assert [r["step"] for r in read_metrics(workdir)] == list(range(5, 46, 5))

    assert scaling(*command) == 0  # resumes from step 40 in this process
    result = json.loads((workdir / "result.json").read_text())
    assert result["final_loss"] == pytest.approx(reference["final_loss"], rel=1e-6)
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(5, 81, 5))  # nothing twice, nothing lost
    reference_losses = [r["loss"] for r in read_metrics(reference_dir)]
    assert [r["loss"] for r in records] == pytest.approx(reference_losses, rel=1e-6)
    resumed_events = sorted((workdir / "tensorboard").glob("events.out.tfevents.*"))[-1]
    restarts = [event.step for event in read_events(resumed_events) if event.HasField("session_log")]
    assert restarts == [40]  # where TensorBoard drops the killed attempt's events (steps 45 on)


def test_a_run_resumed_at_its_last_step_keeps_its_final_loss(finished_run, tmp_path):
    config, source, reference = finished_run
    workdir = tmp_path / "resumed"
    shutil.copytree(source, workdir)
    (workdir / "result.json").unlink()  # as if killed after the last checkpoint, before result.json
    metrics = (workdir / "metrics.jsonl").read_text()
    result = train(config, workdir)
    assert result["step"] == 80 and result["final_loss"] == reference["final_loss"] is not None
    assert (workdir / "metrics.jsonl").read_text() == metrics


def test_records_of_a_run_killed_before_its_first_checkpoint_are_not_repeated(tiny_config, tmp_path):
    stale = {"kind": "train", "step": 5, "examples": 80, "flops": 1.0, "wall_s": 1.0, "loss": 9.0}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(stale) + "\n")
    result = train(tiny_config(**{"eval.num_points": 0}), tmp_path)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [5, 10, 15, 20] and records[0]["loss"] != 9.0
    assert result["final_loss"] == records[-1]["loss"]


def test_a_workdir_refuses_a_different_config(finished_run):
    config, workdir, _ = finished_run
    changed = config.copy_and_resolve_references()
    changed.optim.learning_rate = 1e-2
    with pytest.raises(ConfigError, match="different config .fields optim.learning_rate"):
        train(changed, workdir)


def test_checkpoints_all_damaged_are_reported_and_left_in_place(finished_run, tmp_path):
    """With no whole checkpoint to fall back to, nothing is moved and the newest one is named."""
    config, source, _ = finished_run
    workdir = tmp_path / "corrupt"
    shutil.copytree(source, workdir)
    (workdir / "result.json").unlink()
    damaged = 0
    for path in (workdir / "checkpoints").glob("*/params/**/*"):
        if path.is_file():
            path.write_bytes(b"\0garbage")
            damaged += 1
    assert damaged
    with pytest.raises(CheckpointError, match="checkpoints/80 cannot be restored.*move that step"):
        train(config, workdir)
    assert (workdir / "checkpoints" / "80").exists() and (workdir / "checkpoints" / "60").exists()


def test_divergence_stops_with_a_failure_record(tiny_config, tmp_path):
    config = tiny_config(total_steps=10, log_every=1, **{"optim.learning_rate": 1e9,
                                                        "optim.warmup_steps": 0,
                                                        "optim.grad_clip": 1e9})
    with pytest.raises(DivergedError, match="lower optim.learning_rate"):
        train(config, tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "diverged" and "loss became" in result["reason"]


def test_cooldown_branches_leave_the_main_run_unchanged_and_count_their_compute(tiny_config, tiny_sweep):
    fields = {"optim.schedule": "wsd", "eval.num_points": 2, "eval.first_fraction": 0.5}
    assert cooldown_branches(tiny_config(**fields)) == {10: 2}  # 0.2 x the 10 steps so far
    assert cooldown_branches(tiny_config(**{**fields, "optim.schedule": "cosine"})) == {}
    plain_dir, branched_dir = tiny_sweep["runs"]["plain"], tiny_sweep["runs"]["branched"]
    plain, branched = (json.loads((run / "result.json").read_text()) for run in (plain_dir, branched_dir))

    main_losses = [r["loss"] for r in read_metrics(branched_dir)]
    assert main_losses == [r["loss"] for r in read_metrics(plain_dir)]  # bit for bit
    assert branched["final_loss"] == plain["final_loss"]
    evals = read_metrics(branched_dir, kind="eval")
    assert [(r["point"], r["step"]) for r in evals] == [
        ("init", 0), ("mid_schedule", 5), ("cooldown_branch", 5), ("mid_schedule", 10),
        ("cooldown_branch", 10), ("end_of_schedule", 20)]
    assert [r["step"] for r in read_metrics(plain_dir, kind="eval")] == [0, 5, 10, 20]
    per_step = branched["flops_per_example"] * 16
    assert evals[2]["flops"] == pytest.approx(6 * per_step) and evals[2]["cooldown_steps"] == 1
    assert evals[4]["flops"] == pytest.approx(12 * per_step) and evals[4]["cooldown_steps"] == 2
    assert branched["cooldown_flops"] == pytest.approx(3 * per_step)
    assert branched["total_flops"] == pytest.approx(branched["flops"] + 3 * per_step)
    assert evals[4]["val_loss"] != evals[3]["val_loss"]  # the branch evaluates its own, cooled model
    # one step to the final rate of 0 changes nothing: the main evaluation is taken, not computed again
    assert evals[2]["eval_s"] == 0 < evals[1]["eval_s"]
    parts = {name: value for name, value in evals[1].items() if name.startswith("eval_s/")}
    assert {"eval_s/features_train", "eval_s/features_test", "eval_s/probe", "eval_s/val_loss"} <= set(parts)
    assert 0 < sum(parts.values()) <= evals[1]["eval_s"]
    assert not any(name.startswith("eval_s/") for name in evals[2])  # the copy spent none of them
    measured = {key for key in evals[1] if "accuracy" in key or key == "val_loss"}
    assert measured and {key: evals[2][key] for key in measured} == {key: evals[1][key] for key in measured}


@pytest.mark.devices(8)
def test_gradient_accumulation_matches_the_full_batch(tiny_config):
    config = tiny_config("igpt", **{"data.image_size": 8, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
    training = build_training(config)
    with jax.set_mesh(training.mesh):
        params, _ = training.init(config.seed)
        batch = training.shard(random_batch(config, 16))

        def loss_fn(p, b, rng):
            return training.state.objective.loss(training.state.model(p), b, rng)

        results = [
            jax.jit(accumulated_value_and_grad(loss_fn, count))(params, batch, jax.random.key(0))
            for count in (1, 4)
        ]
    (full_loss, _), full_grads = results[0]
    (micro_loss, micro_metrics), micro_grads = results[1]
    assert abs(float(micro_loss) - float(full_loss)) <= 1e-5 * abs(float(full_loss))
    flat = lambda tree: np.concatenate([np.ravel(g) for g in jax.tree.leaves(tree)])
    assert np.linalg.norm(flat(micro_grads) - flat(full_grads)) <= 1e-5 * np.linalg.norm(flat(full_grads))
    assert set(micro_metrics) == set(results[0][0][1])


def test_gradient_accumulation_is_refused_where_it_would_change_the_loss(tiny_config):
    with pytest.raises(ConfigError, match="grad_accum_steps: 2, but the contrastive loss"):
        validate_config(tiny_config("clip", grad_accum_steps=2), 8)
    with pytest.raises(ConfigError, match="grad_accum_steps: 3 microbatches of batch_size 16"):
        validate_config(tiny_config("igpt", grad_accum_steps=3), 1)


def test_runs_of_any_length_and_schedule_share_one_compiled_step(tiny_config):
    def program(config):
        training = build_training(config)
        with jax.set_mesh(training.mesh):
            params, opt_state = training.init(config.seed)
            batch = training.shard(random_batch(config, config.batch_size))
            return training.step.lower(params, opt_state, batch, jnp.int32(0), np.float32(1e-3)).as_text()

    short = program(tiny_config(total_steps=20))
    assert program(tiny_config(total_steps=500, **{"optim.schedule": "wsd"})) == short
