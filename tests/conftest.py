"""The test process and shared fixtures: one simulated CPU device (a test marked ``devices(n)`` runs in a
child process with n), programs compiled without most of XLA's optimisations (compiling, not running, is
most of a tiny test's time), a persistent XLA compilation cache in pytest's cache folder, tiny configs,
what is built once per session and shared by the xdist workers (the small scenes set, a tiny finished
sweep, a tiny captioning run) and a captioner overfit once per session (helpers that are not fixtures live
in helpers.py)."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # where libtpu is installed, tests stay on CPU
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # for this process and every one it starts

import jax  # noqa: E402
import pytest  # noqa: E402
from helpers import (  # noqa: E402
    ROOT,
    built_once,
    load_experiment,
    overfit,
    read_jsonl,
    shape_caption_batch,
    tiny_experiment,
    tiny_fields,
)

from scaling.analysis.figures import compute_figure  # noqa: E402
from scaling.config import load_python_file  # noqa: E402
from scaling.data.pipeline import ensure_built  # noqa: E402
from scaling.sweeps.executors import with_device_count  # noqa: E402
from scaling.sweeps.runner import run_sweep  # noqa: E402
from scaling.sweeps.spec import Budget, Sweep, grid  # noqa: E402
from scaling.train import train  # noqa: E402

try:  # pytest 9.2 and later, whose items xdist 3.8 misnames (pytest_collection_modifyitems below)
    from _pytest.nodeid import NodeId
except ImportError:
    NodeId = None

DATA_DIR_ENV = "SCALING_TEST_DATA_DIR"  # a child process reuses its parent's data set
REPORTS_ENV = "SCALING_TEST_REPORTS"  # where a child process of devices(n) tests writes their outcomes
CHILD_ID = pytest.StashKey[str]()  # a devices(n) test's id as the child process knows it
CHILD_REPORTS: dict[int, tuple[dict[str, dict], str]] = {}  # per n: run_child's result
CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": None, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def pytest_configure(config):
    config.addinivalue_line("markers", "devices(n): runs in a child process with n simulated CPU devices")
    cache = Path(config.cache.mkdir("xla_cache")) if config.pluginmanager.has_plugin("cacheprovider") \
        else ROOT / ".pytest_cache" / "d" / "xla_cache"
    CACHE_ENV["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    for name, value in CACHE_ENV.items():  # for this process and every command a test starts
        os.environ.setdefault(name, value)
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_itemcollected(item):
    """Puts the ``devices(n)`` tests of each n in one xdist group (as they are collected, before xdist
    names items by group), so one worker runs them, in one child process."""
    marker = item.get_closest_marker("devices")
    if marker is not None:
        item.stash[CHILD_ID] = item.nodeid
        item.add_marker(pytest.mark.xdist_group(f"devices{marker.args[0]}"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup`` an xdist worker names each item of an xdist group ``<id>@<group>``, so the
    scheduler sends the group to one worker. xdist 3.8 writes that name where pytest 9.2 no longer reads
    it (pytest-dev/pytest-xdist#1386) and every group is silently split; this writes it where pytest reads
    it, wherever the name lacks it."""
    if NodeId is None or not config.getoption("loadgroup", default=False):
        return
    for item in items:
        groups = {str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                  for mark in item.iter_markers("xdist_group")}
        suffix = "@" + "_".join(sorted(groups))
        if groups and not item.nodeid.endswith(suffix) and isinstance(getattr(item, "_id", None), NodeId):
            item._id = NodeId.parse(item.nodeid + suffix)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """A ``devices(n)`` test runs with n devices unless this process has them: in one child process
    (``python -m pytest <ids>``) for all the session's ``devices(n)`` tests, started by the first of them;
    each reports the child's outcome for it."""
    marker = pyfuncitem.get_closest_marker("devices")
    if marker is None or jax.device_count() == marker.args[0]:
        return None
    count = marker.args[0]
    if count not in CHILD_REPORTS:
        CHILD_REPORTS[count] = run_child(pyfuncitem, count)
    reports, output = CHILD_REPORTS[count]
    report = reports.get(pyfuncitem.stash[CHILD_ID])
    if report is None:
        pytest.fail(f"did not run with {count} devices:\n{output}", pytrace=False)
    if report["outcome"] == "skipped":
        pytest.skip(report["text"])
    if report["outcome"] == "failed":
        pytest.fail(f"with {count} devices:\n{report['text']}", pytrace=False)
    return True


def run_child(item, count: int) -> tuple[dict[str, dict], str]:
    """({test id: its report}, the end of what the child printed) of the session's ``devices(count)`` tests
    run in a child process with ``count`` simulated devices."""
    ids = [other.stash[CHILD_ID] for other in item.session.items
           if (marker := other.get_closest_marker("devices")) and marker.args[0] == count]
    folder = item._request.getfixturevalue("tmp_path_factory").mktemp(f"devices{count}")
    reports_path = folder / "reports.jsonl"
    env = {**os.environ, "XLA_FLAGS": with_device_count(os.environ["XLA_FLAGS"], count),
           DATA_DIR_ENV: item._request.getfixturevalue("data_dir"), REPORTS_ENV: str(reports_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(folder / "tmp"),
         *ids], cwd=item.config.rootpath, env=env, capture_output=True, text=True)
    reports = {}
    for report in read_jsonl(reports_path):  # a failed setup or teardown outweighs a passed call
        if reports.get(report["id"], {}).get("outcome") != "failed":
            reports[report["id"]] = report
    return reports, f"{proc.stdout[-6000:]}{proc.stderr[-2000:]}"


def pytest_runtest_logreport(report):
    """In a child process of ``devices(n)`` tests, each test's outcome, for the parent."""
    if REPORTS_ENV in os.environ and (report.when == "call" or report.outcome != "passed"):
        with open(os.environ[REPORTS_ENV], "a") as reports:
            reports.write(json.dumps({"id": report.nodeid, "outcome": report.outcome,
                                      "text": report.longreprtext[-6000:]}) + "\n")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS directory holding the small 32x32 scenes set, built once per test session."""
    if DATA_DIR_ENV in os.environ:
        return os.environ[DATA_DIR_ENV]

    def build(directory: Path) -> None:
        config = load_experiment("clip").data
        config.name, config.data_dir = "scenes/32_small", str(directory)
        ensure_built(config)

    return str(built_once(tmp_path_factory, "tfds", build))


TINY_SWEEP_RUNS = ("plain", "branched", "short")


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, data_dir) -> dict:
    """A finished sweep of three mu-sized CLIP runs with the quickstart's fields on the small scenes set at
    16 pixels (a 768-pixel reference probe): 20 warmup-stable-decay steps evaluated at steps 5, 10 and 20,
    once ``plain`` and once ``branched`` (cool-down branches at 5 and 10), and a ``short`` 10-step cosine
    run. Gives {"dir": the sweep's folder, "runs": {name: run folder}, "lines": what the runner printed,
    "fields": the ``short`` run's fields}.
    Medium captions, unlike the quickstart's short ones, tell the 16 images of a batch apart. Tests copy
    what they write into."""
    quickstart = load_python_file(ROOT / "sweeps" / "quickstart.py")
    fields = {**quickstart.FIELDS, **tiny_fields(data_dir), "data.caption_level": "medium",
              "optim.learning_rate": 3e-3, "eval.num_points": 1, "eval.val_batches": 1,
              "eval.probe_train_examples": 300, "eval.probe_test_examples": 200}
    wsd = {**fields, "optim.schedule": "wsd", "eval.num_points": 3, "eval.first_fraction": 0.25}
    runs = {"plain": grid(["clip"], ["mu"], [Budget.steps(20)],
                          fields={**wsd, "eval.cooldown_fraction": 0.0}),
            "branched": grid(["clip"], ["mu"], [Budget.steps(20)], fields=wsd),
            "short": grid(["clip"], ["mu"], [Budget.steps(10)], fields=fields)}
    sweep = Sweep("tiny", [run for (run,) in runs.values()])

    def build(root: Path) -> None:
        lines = []
        run_sweep(sweep, root, out=lines.append, figure=compute_figure)
        (root / "runner.out").write_text("\n".join(lines))

    root = built_once(tmp_path_factory, "tiny_sweep", build)
    return {"dir": root / "tiny", "runs": {name: root / "tiny" / run.run_id for name, (run,) in runs.items()},
            "lines": (root / "runner.out").read_text().splitlines(), "fields": fields}


@pytest.fixture(scope="session")
def overfit_captioner() -> dict:
    """The mu captioner trained 60 steps on one batch of random images captioned by their shapes
    (helpers.overfit and shape_caption_batch). Its tests share the xdist group ``overfit_captioner``, so
    one worker trains it."""
    config = load_experiment("captioning")
    config.data.max_caption_len = 32
    config.optim.update(learning_rate=3e-3, warmup_steps=2)
    return overfit(config, shape_caption_batch(config), 60)


@pytest.fixture(scope="session")
def captioner_run(tmp_path_factory, data_dir) -> dict:
    """A 20-step mu captioning run of the trainer on the small scenes set, evaluated at its end with the
    caption-level metrics of short and medium captions: {"config": its config, "dir": its folder}.
    Tests copy what they write into."""
    config = tiny_experiment(data_dir, "captioning", **{
        "optim.learning_rate": 3e-3, "data.max_caption_len": 48, "eval.caption_levels": ("short", "medium"),
        "eval.caption_examples": 32})
    return {"config": config, "dir": built_once(tmp_path_factory, "captioner_run",
                                                lambda path: train(config, path))}


@pytest.fixture
def tiny_config(data_dir):
    """A factory for test-sized configs of any objective on the small scenes set (helpers.tiny_experiment)."""
    return functools.partial(tiny_experiment, data_dir)
