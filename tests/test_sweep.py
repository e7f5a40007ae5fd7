"""Sweeps: run ids, budgets, leases, the runner (failures, SIGKILL and racing reruns, worker processes),
the compute figure it writes, and pod launch commands."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT, kill_when_held, read_jsonl, scaling, tiny_fields
from matplotlib.collections import PathCollection

from scaling.analysis.figures import compute_figure, curve_points, draw_compute
from scaling.objectives import build_objective
from scaling.schedule import cooldown_branches
from scaling.sweeps import pods
from scaling.sweeps.executors import ProcessPool
from scaling.sweeps.results import build_table, config_captions, read_table
from scaling.sweeps.runner import MAX_DEATHS, Options, describe, run_sweep
from scaling.sweeps.spec import (
    SWEEPS_DIR,
    Budget,
    Sweep,
    SweepError,
    grid,
    load_sweep,
    make_run,
    warmup_fraction,
    wsd_ladder,
)
from scaling.sweeps.store import COMPLETED, FAILED, HOST, LEFT, RUNNING, Store
from scaling.sweeps.tuned import read_tuned, tuned_fields
from scaling.workdir import LATER_FIELDS, RunFiles, differing_fields, flatten

ID = re.compile(r"^clip-mu-f1e12-s(\d)-([0-9a-f]{6})$")


def write_sweep_file(path: Path, name: str, data_dir: str, runs: list[tuple[int, list[str]]]) -> Path:
    """A sweep definition of tiny CLIP runs: (steps, caption levels) per grid.

    Runs that differ only in caption level compile to the same program (a compilation cache hit).
    """
    runs = " + ".join(f'grid(["clip"], ["mu"], [Budget.steps({steps})], fields=FIELDS, '
                      f'axes={{"data.caption_level": {levels!r}}})' for steps, levels in runs)
    path.write_text(
        "from scaling.sweeps.spec import Budget, Sweep, grid\n"
        f"FIELDS = {tiny_fields(data_dir)!r}\n"
        f"def get_sweep():\n    return Sweep({name!r}, {runs})\n"
    )
    return path


def ended(store: Store, run_id: str) -> list[str]:
    return [a["status"] for a in store.attempts(run_id) if a["event"] == "end"]


# --- specs and ids -----------------------------------------------------------------------------------


def test_run_ids_are_readable_stable_and_hash_only_result_changing_fields(data_dir):
    fields = tiny_fields(data_dir)
    runs = grid(["clip"], ["mu"], [Budget.flops(1e12)], seeds=[0, 1], fields=fields)
    again = grid(["clip"], ["mu"], [Budget.flops(1e12)], seeds=[0, 1], fields=fields)
    assert [r.run_id for r in runs] == [r.run_id for r in again]
    (seed0, hash0), (seed1, hash1) = (ID.match(r.run_id).groups() for r in runs)
    assert (seed0, seed1) == ("0", "1") and hash0 == hash1  # the seed is spelled out, not hashed

    operational = grid(["clip"], ["mu"], [Budget.flops(1e12)], fields={**fields, "log_every": 1})
    changed = grid(["clip"], ["mu"], [Budget.flops(1e12)], fields={**fields, "optim.learning_rate": 0.01})
    assert operational[0].run_id == runs[0].run_id
    assert changed[0].run_id != runs[0].run_id

    levels = grid(["clip"], ["mu"], [Budget.steps(20)], fields=fields,
                  axes={"data.caption_level": ["short", "descriptive"]})
    assert [r.run_id.rsplit("-", 1)[0] for r in levels] == [
        "clip-mu-steps20-s0-caption_level=short", "clip-mu-steps20-s0-caption_level=descriptive"]
    assert [r.config.data.caption_level for r in levels] == ["short", "descriptive"]


def test_budgets_convert_to_steps(tiny_config):
    config = tiny_config(batch_size=32)
    per_example = build_objective(config).train_flops_per_example()
    run = make_run(config, Budget.flops(1e12))
    assert run.config.total_steps == round(1e12 / (per_example * 32)) > 1
    assert make_run(config, Budget.examples(3200)).config.total_steps == 100
    assert make_run(config, Budget.steps(7)).config.total_steps == 7
    assert Budget.flops(1.0).total_steps(per_example, 32) == 1
    assert [Budget.flops(2.5e11).label, Budget.steps(200).label, Budget.examples(64000).label] == [
        "f2.5e11", "steps200", "ex64000"]


def test_warmup_is_a_fraction_of_the_steps_at_least_one_but_none_in_a_one_step_run(tiny_config):
    warmup = lambda steps: make_run(tiny_config(), Budget.steps(steps),
                                    adjust=warmup_fraction(0.02)).config.optim.warmup_steps
    assert [warmup(1), warmup(2), warmup(49), warmup(500)] == [0, 1, 1, 10]


def test_duplicates_and_bad_fields_are_errors(data_dir):
    fields = tiny_fields(data_dir)
    run = grid(["clip"], ["mu"], [Budget.steps(20)], fields=fields)[0]
    with pytest.raises(SweepError, match="duplicate run ids"):
        Sweep("dup", [run, run])
    same_steps = grid(["clip"], ["mu"], [Budget.examples(320)], fields=fields)[0]
    with pytest.raises(SweepError, match="have the same config"):
        Sweep("dup", [run, same_steps])
    with pytest.raises(SweepError, match="optim.learning_rat=.*did you mean optim.learning_rate"):
        grid(["clip"], ["mu"], [Budget.steps(20)], fields={**fields, "optim.learning_rat": 1.0})
    with pytest.raises(SweepError, match="warmup_steps"):
        grid(["clip"], ["mu"], [Budget.steps(2)], fields=fields)


def test_study_sweeps_have_unique_ids_and_list_in_a_dry_run(monkeypatch, tmp_path):
    monkeypatch.setattr("scaling.sweeps.spec.available_objectives", lambda: ["clip", "captioning"])
    compute = load_sweep(ROOT / "sweeps" / "objectives_vs_compute.py")
    assert len(compute.runs) >= 12
    assert [r.run_id for r in compute.runs] == [
        r.run_id for r in load_sweep(ROOT / "sweeps" / "objectives_vs_compute.py").runs]
    for name in ("caption_detail.py", "caption_detail_cpu.py"):
        captions = load_sweep(ROOT / "sweeps" / name)
        mixes = {(r.config.objective, r.config.data.caption_mix, r.config.seed) for r in captions.runs}
        assert mixes == {(o, mix, seed) for o in ("clip", "captioning", "diffusion") for seed in (0, 1)
                         for mix in ("short:1", "descriptive:1", "descriptive:0.95,short:0.05")}
        assert {tuple(r.config.eval.caption_levels) for r in captions.runs} == {("short", "descriptive")}
        listing = describe(captions, Store(tmp_path, captions.name))
        assert all(f"{r.run_id} " in listing for r in captions.runs)
        assert listing.count(" left") == len(captions.runs)


# --- leases ------------------------------------------------------------------------------------------


def test_live_lease_is_respected_and_stale_or_dead_leases_are_reclaimed(tmp_path):
    first, second = Store(tmp_path, "s"), Store(tmp_path, "s")
    assert first.claim("run") == 0
    assert second.claim("run") is None and second.state("run") == RUNNING
    assert first.heartbeat("run", 0)

    lease = tmp_path / "s" / "run" / "lease-000000.json"
    lease.write_text(json.dumps({"owner": "elsewhere:1:abc", "heartbeat": time.time() - 1000}))
    assert second.state("run") == LEFT
    assert second.claim("run") == 1 and not lease.exists()
    assert not first.heartbeat("run", 0)  # the first owner learns that it lost the run

    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "s" / "run" / "lease-000001.json").write_text(
        json.dumps({"owner": f"{HOST}:{gone.pid}:abc", "heartbeat": time.time()}))
    assert first.claim("run") == 2  # its owner process no longer exists on this host


@pytest.mark.parametrize("earlier_lease", [None, "stale"])
def test_racing_claims_have_exactly_one_winner(tmp_path, earlier_lease):
    if earlier_lease:
        (tmp_path / "s" / "run").mkdir(parents=True)
        (tmp_path / "s" / "run" / "lease-000000.json").write_text(
            json.dumps({"owner": "elsewhere:1:abc", "heartbeat": time.time() - 1000}))
    stores = [Store(tmp_path, "s") for _ in range(8)]
    barrier, wins = threading.Barrier(len(stores)), []

    def claim(store):
        barrier.wait()
        wins.append(store.claim("run"))

    threads = [threading.Thread(target=claim, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins, key=str) == [1 if earlier_lease else 0] + [None] * 7


# --- running -----------------------------------------------------------------------------------------


def test_failures_are_recorded_the_rest_complete_and_reruns_skip_finished_runs(tmp_path, tiny_sweep):
    fields = tiny_sweep["fields"]  # its short run again: each program it compiles is in the cache
    unstable = {"log_every": 1, "optim.learning_rate": 1e9, "optim.warmup_steps": 0, "optim.grad_clip": 1e9}
    sweep = Sweep("mixed", [
        *grid(["clip"], ["mu"], [Budget.steps(10)], fields=fields),
        *grid(["clip"], ["mu"], [Budget.steps(5)], fields={**fields, **unstable}),
        *grid(["clip"], ["mu"], [Budget.steps(5)], fields={**fields, "data.name": "no_such_dataset"}),
    ])
    good, diverged, raised = (run.run_id for run in sweep.runs)
    lines = []
    counts = run_sweep(sweep, tmp_path, out=lines.append, figure=compute_figure)  # in this process
    store = Store(tmp_path, "mixed")
    assert counts == {COMPLETED: 1, FAILED: 2, RUNNING: 0, LEFT: 0}
    assert json.loads((store.run_dir(good) / "result.json").read_text())["status"] == "completed"
    assert json.loads((store.run_dir(diverged) / "result.json").read_text())["status"] == "diverged"
    failure = json.loads((store.run_dir(raised) / "failure.json").read_text())
    assert "no_such_dataset" in failure["reason"] and "Traceback" in failure["detail"]
    assert [ended(store, r) for r in (good, diverged, raised)] == [["completed"], ["diverged"], ["failed"]]
    assert any(f"failed: {raised}: " in line for line in lines)
    assert not list(store.sweep_dir.rglob("lease-*.json"))

    cached = read_table(store.sweep_dir)  # written by the runner
    pd.testing.assert_frame_equal(build_table(store.sweep_dir), cached)
    points = cached[cached.run_id == good]
    assert list(points.kind) == ["eval", "train", "train", "eval"]  # the init probe first
    assert points.iloc[0]["point"] == "init" and points.iloc[0]["flops"] == 0
    assert points.iloc[-1]["probe_accuracy"] > 0 and points.iloc[-1]["flops"] == points.iloc[1]["flops"] * 2
    assert set(cached.status) == {"completed", "diverged"}
    assert {"budget", "budget_amount", "caption_level", "seed", "size", "step", "loss"} <= set(cached.columns)
    assert (store.sweep_dir / "compute_vs_probe.png").read_bytes().startswith(b"\x89PNG")
    drawn = np.concatenate([c.get_offsets() for c in draw_compute(cached).axes[0].collections
                            if isinstance(c, PathCollection)])
    assert drawn.tolist() == [[points.iloc[-1]["flops"], points.iloc[-1]["probe_accuracy"]]]  # its eval

    result = (store.run_dir(good) / "result.json").read_text()
    assert run_sweep(sweep, tmp_path, out=lambda _: None)[FAILED] == 2
    assert [len(store.attempts(r)) for r in (good, diverged, raised)] == [2, 2, 2]  # nothing ran again
    run_sweep(sweep, tmp_path, retry_failed=True, out=lambda _: None)
    assert [len(store.attempts(r)) for r in (good, diverged, raised)] == [2, 2, 4]  # diverged stays done
    assert (store.run_dir(good) / "result.json").read_text() == result


def test_figure_falls_back_to_train_loss_before_any_eval():
    table = pd.DataFrame({"run_id": ["a", "a", "b"], "objective": ["clip", "clip", "igpt"],
                          "size": ["mu", "mu", "micro"], "kind": "train", "step": [5, 10, 5],
                          "flops": [1e9, 2e9, 3e9], "loss": [3.0, 2.5, 4.0]})
    points, metric, title = curve_points(table)
    assert metric == "loss" and list(points.step) == [10, 5] and "no eval records yet" in title
    axes = draw_compute(table).axes[0]
    assert axes.get_title() == title and axes.get_ylabel() == "loss"
    drawn = sorted(tuple(point) for c in axes.collections if isinstance(c, PathCollection)
                   for point in c.get_offsets())
    assert drawn == [(2e9, 2.5), (3e9, 4.0)]  # each run's last train loss
    assert {line.get_label() for line in axes.get_lines()} >= {"clip", "igpt", "size mu", "size micro"}


def test_sigkill_mid_sweep_then_racing_reruns_resume_it_and_run_everything_once(tmp_path, data_dir,
                                                                                  capsys):
    sweep_file = write_sweep_file(tmp_path / "killed.py", "killed", data_dir,
                                  [(10, ["short"]), (30, ["short"]), (10, ["medium", "descriptive"])])
    sweep, root = load_sweep(sweep_file), tmp_path / "runs"
    store = Store(root, sweep.name)
    run_ids = [run.run_id for run in sweep.runs]
    first, interrupted = run_ids[:2]
    metrics = store.run_dir(interrupted) / "metrics.jsonl"
    kill_when_held(tmp_path / "held", 15, "sweep", sweep_file, "--root", root)  # checkpoint 10 on disk
    before = {r["step"]: r for r in read_jsonl(metrics)}
    assert list(before) == [5, 10, 15] and [store.state(r) for r in run_ids] == [COMPLETED, LEFT, LEFT, LEFT]
    finished_first = (store.run_dir(first) / "result.json").stat()

    command = ["sweep", sweep_file, "--root", root]
    racer = subprocess.Popen([sys.executable, "-m", "scaling.cli", *map(str, command)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert scaling(*command) == 0  # in this process, racing the other for the runs left
    outputs = [capsys.readouterr().out, racer.communicate(timeout=300)[0]]
    assert racer.returncode == 0, outputs[1][-2000:]
    assert sorted(p.parent.name for p in root.rglob("result.json")) == sorted(run_ids)
    assert [ended(store, r) for r in run_ids] == [["completed"]] * 4  # no run completed twice
    assert [a["event"] for a in store.attempts(interrupted)] == ["start", "start", "end"]
    assert [a["event"] for r in run_ids[2:] for a in store.attempts(r)] == ["start", "end"] * 2
    assert (store.run_dir(first) / "result.json").stat().st_mtime_ns == finished_first.st_mtime_ns
    starts = [line for output in outputs for line in output.splitlines() if "; starting " in line]
    assert len(starts) == 3
    after = read_jsonl(metrics)
    assert [r["step"] for r in after] == list(range(5, 31, 5))  # nothing twice, nothing lost
    kept = [r for r in after if r["step"] <= 10]
    assert kept == [before[5], before[10]]  # resumed from the step-10 checkpoint, not retrained
    assert any("[killed] 4 done, 0 running, 0 failed, 0 left" in output for output in outputs)
    assert all(str(root / "killed" / "results.csv") in output for output in outputs)


def test_run_ids_hash_the_exact_value_of_a_grid_value_they_show_rounded():
    lr = {"optim.learning_rate": [1e-3, 2.5e-4, 1.0000001e-3, 1.0000004e-3]}
    runs = grid(["clip"], ["mu"], [Budget.steps(4)], fields={"optim.warmup_steps": 1}, axes=lr)
    ids = [run.run_id for run in Sweep("lr", runs).runs]  # no duplicate: every value its own run
    # values the id shows exactly keep the ids they always had (as published results are keyed by them)
    assert ids[:2] == ["clip-mu-steps4-s0-learning_rate=0.001-bae8f3",
                       "clip-mu-steps4-s0-learning_rate=0.00025-bae8f3"]
    assert [i.rpartition("-")[0] for i in ids[2:]] == ["clip-mu-steps4-s0-learning_rate=0.001"] * 2
    assert len(set(ids)) == 4


def test_fields_added_later_leave_published_ids_and_recorded_configs_valid_until_set():
    published = grid(["clip"], ["mu"], [Budget.steps(4)], fields={"optim.warmup_steps": 1})[0]
    recorded = json.loads(published.config.to_json())  # a config.json written before the fields existed
    for field in LATER_FIELDS:
        section, _, name = field.partition(".")
        del recorded[section][name]
    assert differing_fields(recorded, json.loads(published.config.to_json())) == []
    in_examples = grid(["clip"], ["mu"], [Budget.steps(4)],
                       fields={"optim.warmup_steps": 0, "optim.warmup_examples": 64})[0]
    assert differing_fields(recorded, json.loads(in_examples.config.to_json())) == [
        "optim.warmup_examples", "optim.warmup_steps"]
    assert in_examples.run_id.rpartition("-")[2] != published.run_id.rpartition("-")[2]


def test_study_sweeps_read_optimizer_values_from_the_one_tuned_table_which_names_their_source(tmp_path):
    assert tuned_fields("scenes_objectives", "clip") == {"optim.learning_rate": 1e-3, "optim.b2": 0.95}
    assert all(row["source"].startswith(("not tuned", "runs/")) for row in read_tuned().values())
    table = tmp_path / "tuned.csv"
    table.write_text("study,objective,learning_rate,b2,warmup_examples,source\n"
                     "scenes,clip,0.004,0.99,512,runs/tune_scenes lr_optima.csv\n")
    assert tuned_fields("scenes", "clip", table) == {"optim.learning_rate": 0.004, "optim.b2": 0.99,
                                                     "optim.warmup_steps": 0, "optim.warmup_examples": 512}
    with pytest.raises(SweepError, match="has no row for study 'scenes' and objective 'igpt'; add one"):
        tuned_fields("scenes", "igpt", table)


def test_the_scenes_language_ladder_trains_each_rung_on_the_same_images_and_budgets_named_in_its_ids():
    runs = load_sweep(SWEEPS_DIR / "scenes_objectives_v2.py").runs
    series = {}
    for run in runs:
        text = config_captions(flatten(json.loads(run.config.to_json())))
        series.setdefault((run.config.objective, text), []).append(run)
        assert text == "none" or text in run.run_id  # the rung is named in the id
    assert sorted(series) == [(objective, text) for objective in ("captioning", "clip")
                              for text in ("descriptive", "label", "short")] + [
        ("diffusion", "none"), ("igpt", "none"), ("supervised", "none")]
    ladders = {key: sorted((run.config.size, run.config.seed, run.budget.amount) for run in rungs)
               for key, rungs in series.items()}
    assert len({tuple(ladder) for ladder in ladders.values()}) == 1  # one ladder of sizes, seeds, budgets
    assert {run.config.data.name for run in runs} == {"scenes/32"}


def honest_point_steps(run) -> list[int]:
    """Optimizer steps of each honest point a run plans (its cool-down branches, its schedule's end); at
    one size they are proportional to the points' training FLOPs."""
    return [step + cooldown for step, cooldown in cooldown_branches(run.config).items()] + \
        [run.config.total_steps]


@pytest.mark.parametrize("study", ["cifar10_objectives_v2", "scenes_objectives_v2"])
def test_v2_studies_give_every_series_a_trained_frontier_over_1_5_decades_whichever_size_holds_it(study):
    """The smallest size plans 4+ honest points of 100+ steps over 1.5+ decades of compute, up to the top
    budget (a cool-down branch counted at its end, 1.2x the compute of its fork); every size reaches the
    top (the isoFLOP view) and the top has three seeds."""
    series = {}
    for run in load_sweep(SWEEPS_DIR / f"{study}.py").runs:
        key = (run.config.objective, config_captions(flatten(json.loads(run.config.to_json()))))
        series.setdefault(key, []).append(run)
    for key, runs in series.items():
        top = max(run.budget.amount for run in runs)
        ladders = {run.config.size: run for run in runs if run.config.seed == 0 and run.budget.amount == top}
        assert set(ladders) == {"mu", "micro", "nano"}, key
        mu_runs = [run for run in runs if run.config.size == "mu"]
        mu_steps = sorted(steps for run in mu_runs for steps in honest_point_steps(run))
        trained = [steps for steps in mu_steps if steps >= 100]
        assert len(trained) >= 4 and trained[-1] / trained[0] >= 10**1.5, (key, mu_steps)
        assert sorted(run.config.seed for run in runs if run.budget.amount == top) == [0, 0, 0, 1, 2], key


def pool_job(config, workdir):
    """Stands in for training in ProcessPool workers: seed 1's is SIGKILLed, the others complete."""
    if config.seed == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    files = RunFiles(workdir)
    files.write_result({"status": "completed", "pid": os.getpid(), "xla_flags": os.environ["XLA_FLAGS"]})
    return {"status": "completed", "reason": ""}


def test_process_pool_trains_each_run_in_its_own_process_and_a_killed_worker_is_resumed(tmp_path, data_dir):
    sweep = Sweep("pool", grid(["clip"], ["mu"], [Budget.steps(10)], seeds=[0, 1, 2],
                               fields=tiny_fields(data_dir)))
    pool = ProcessPool(2, devices_per_run=2, job=pool_job)
    counts = run_sweep(sweep, tmp_path, pool, out=lambda _: None, poll_s=0.05)
    assert counts == {COMPLETED: 2, FAILED: 0, RUNNING: 0, LEFT: 1}  # the killed one is left to resume
    store = Store(tmp_path, "pool")
    workers = [RunFiles(store.run_dir(sweep.runs[i].run_id)).read_result() for i in (0, 2)]
    assert len({w["pid"] for w in workers} | {os.getpid()}) == 3
    assert all(w["xla_flags"].endswith("--xla_force_host_platform_device_count=2") for w in workers)
    killed = sweep.runs[1].run_id
    for _ in range(MAX_DEATHS - 1):  # plain reruns try it again, until its worker has died MAX_DEATHS times
        run_sweep(Sweep("pool", [sweep.runs[1]]), tmp_path, pool, out=lambda _: None, poll_s=0.05)
    assert ended(store, killed) == ["died"] * MAX_DEATHS
    assert store.failure_reason(killed) == (f"worker process exited with code -9; its worker died in "
                                            f"{MAX_DEATHS} attempts (see attempts.jsonl)")


def sleeping_job(config, workdir):
    """Stands in for a long run: says its pid (atomically) in worker.pid, then sleeps."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / "worker.tmp").write_text(str(os.getpid()))
    os.replace(Path(workdir) / "worker.tmp", Path(workdir) / "worker.pid")
    time.sleep(600)


ORPHAN_RUNNER = """
import sys
sys.path.insert(0, {tests!r})
from test_sweep import sleeping_job
from scaling.sweeps.executors import ProcessPool
from scaling.sweeps.runner import run_sweep
from scaling.sweeps.spec import Budget, Sweep, grid
sweep = Sweep("orphans", grid(["clip"], ["mu"], [Budget.steps(10)], fields={fields!r}))
run_sweep(sweep, {root!r}, ProcessPool(1, job=sleeping_job), out=print, poll_s=0.05)
"""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


def test_workers_die_with_their_runner(tmp_path, data_dir):
    script = ORPHAN_RUNNER.format(tests=str(ROOT / "tests"), fields=tiny_fields(data_dir), root=str(tmp_path))
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL)
    pid_files = []
    deadline = time.monotonic() + 120
    while not pid_files and runner.poll() is None and time.monotonic() < deadline:
        pid_files = list(tmp_path.glob("orphans/*/worker.pid"))  # the worker is past its imports, sleeping
        time.sleep(0.05)
    assert pid_files, "the worker never started"
    worker = int(pid_files[0].read_text())
    runner.kill()
    runner.wait()
    deadline = time.monotonic() + 2
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.01)
    orphaned = running(worker)
    if orphaned:
        os.kill(worker, signal.SIGKILL)
    assert not orphaned, "the worker outlived its runner"


# --- pods --------------------------------------------------------------------------------------------


TPU_VM_GOLDEN = [
    "gcloud compute tpus queued-resources create sweep-quickstart --node-id=sweep-quickstart "
    "--zone=us-east5-a --accelerator-type=v5p-64 --runtime-version=v2-alpha-tpuv5",
    "gcloud compute tpus queued-resources describe sweep-quickstart --zone=us-east5-a "
    "'--format=value(state.state)'  # repeat until it prints ACTIVE",
    "tar czf /tmp/sweep-quickstart.tar.gz pyproject.toml README.md scaling experiments sweeps analysis",
    "gcloud compute tpus tpu-vm scp /tmp/sweep-quickstart.tar.gz 'sweep-quickstart:~/' --zone=us-east5-a "
    "--worker=all",
    "gcloud compute tpus tpu-vm ssh sweep-quickstart --zone=us-east5-a --worker=all '--command=mkdir -p "
    "~/visual-scaling && tar xzf ~/sweep-quickstart.tar.gz -C ~/visual-scaling && cd ~/visual-scaling && "
    "pip install -q -e . '\"'\"'jax[tpu]'\"'\"' && scaling sweep sweeps/quickstart.py --root /mnt/runs "
    "--executor local --distributed'",
]
XPK_GOLDEN = (
    "xpk workload create --cluster=my-cluster --workload=sweep-quickstart --tpu-type=v5p-64 --num-slices=1 "
    "--base-docker-image=python:3.11 --script-dir=. '--command=pip install -q -e . '\"'\"'jax[tpu]'\"'\"' && "
    "scaling sweep sweeps/quickstart.py --root /mnt/runs --executor local --distributed'"
)


def pod_commands(executor: str, **flags) -> list[str]:
    options = Options(executor=executor, root="/mnt/runs", tpu="v5p-64", **flags)
    return [pods.render(c) for c in pods.commands(executor, "sweeps/quickstart.py", "quickstart", options)]


def test_pod_commands_are_golden():
    assert pod_commands("tpu-vm", zone="us-east5-a") == TPU_VM_GOLDEN
    assert pod_commands("xpk", cluster="my-cluster") == [XPK_GOLDEN]
    with pytest.raises(SweepError, match="needs --zone"):
        pod_commands("tpu-vm")
    with pytest.raises(SweepError, match="unknown TPU type"):
        pods.runtime_version("v9x-8")
    with pytest.raises(SweepError, match="every host shares"):
        pods.commands("xpk", "s.py", "s", Options(executor="xpk", tpu="v5p-64", cluster="c"))
    with pytest.raises(SweepError, match="must be inside the current directory"):
        pods.commands("xpk", "/elsewhere/s.py", "s",
                      Options(executor="xpk", root="/mnt/runs", tpu="v5p-64", cluster="c"))


def test_cli_prints_the_pod_commands(tmp_path, data_dir, monkeypatch, capsys):
    write_sweep_file(tmp_path / "tiny.py", "tiny", data_dir, [(10, ["short"])])
    monkeypatch.chdir(tmp_path)
    flags = ["--executor", "xpk", "--tpu", "v5p-64", "--cluster", "my-cluster", "--root", "/mnt/runs",
             "--max-parallel", "1", "--lease-timeout", "60"]
    assert scaling("sweep", "tiny.py", *flags) == 0
    golden = XPK_GOLDEN.replace("sweeps/quickstart.py", "tiny.py").replace("sweep-quickstart", "sweep-tiny")
    assert capsys.readouterr().out.strip() == golden


def test_launch_runs_the_commands_and_waits_for_the_slice(tmp_path, monkeypatch):
    log = tmp_path / "calls.log"
    for tool in ("gcloud", "tar"):
        fake = tmp_path / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n'
                        f'case "$*" in *describe*) n=$(grep -c describe {log}); '
                        f'[ "$n" -ge 2 ] && echo ACTIVE || echo WAITING_FOR_RESOURCES;; esac\n')
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    options = Options(executor="tpu-vm", root="/mnt/runs", tpu="v5p-64", zone="z")
    pods.launch(pods.commands("tpu-vm", "sweeps/quickstart.py", "quickstart", options), out=lambda _: None,
                poll_s=0)
    calls = [line.split() for line in log.read_text().splitlines()]
    assert [c[4] if c[0] == "gcloud" else c[0] for c in calls] == [
        "create", "describe", "describe", "tar", "scp", "ssh"]


def test_a_wsd_ladder_gives_each_size_honest_points_and_a_second_seed_at_its_smallest_budget():
    runs = wsd_ladder(["clip"], {"mu": 1.6e12, "micro": 6.4e12}, lambda objective: {"batch_size": 16},
                      points=3, first_fraction=1 / 16)
    by_id = {(run.config.size, run.config.seed): run for run in runs}
    assert sorted(by_id) == [("micro", 0), ("micro", 1), ("mu", 0), ("mu", 1)]
    for size, top in (("mu", 1.6e12), ("micro", 6.4e12)):
        main, extra = by_id[(size, 0)], by_id[(size, 1)]
        assert main.budget == Budget.flops(top) and extra.budget == Budget.flops(top / 16)
        assert main.config.optim.schedule == extra.config.optim.schedule == "wsd"
        assert (main.config.eval.num_points, extra.config.eval.num_points) == (3, 1)
        assert main.config.batch_size == 16
        first_branch = min(cooldown_branches(main.config))
        assert first_branch == pytest.approx(extra.config.total_steps, rel=0.1)


def test_a_wsd_ladders_top_seeds_train_to_the_top_budget_evaluated_only_at_its_end():
    runs = wsd_ladder(["clip"], {"nano": 6.4e12}, lambda objective: {"batch_size": 16}, points=4,
                      first_fraction=1 / 16, extra_seeds=(), top_seeds=(1, 2))
    main, *tops = runs
    assert [run.config.seed for run in runs] == [0, 1, 2]
    assert main.config.eval.num_points == 4 and cooldown_branches(main.config)
    for top in tops:
        assert top.budget == main.budget and top.config.total_steps == main.config.total_steps
        assert top.config.eval.num_points == 1 and not cooldown_branches(top.config)
