"""Shared fixtures: 8 simulated CPU devices, a small scenes data set built once, tiny configs (helpers that
are not fixtures live in helpers.py)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # where libtpu is installed, tests stay on CPU

import pytest  # noqa: E402
from helpers import load_experiment  # noqa: E402

from scaling.data.pipeline import ensure_built  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS directory holding the small 32x32 scenes set, built once per test session."""
    directory = tmp_path_factory.mktemp("tfds")
    config = load_experiment("clip").data
    config.name, config.data_dir = "scenes/32_small", str(directory)
    ensure_built(config)
    return str(directory)


@pytest.fixture
def tiny_config(data_dir):
    """A factory for test-sized configs of any objective on the small scenes set."""

    def make(objective: str = "clip", **overrides):
        config = load_experiment(objective)
        config.data.name, config.data.data_dir = "scenes/32_small", data_dir
        config.batch_size, config.total_steps = 16, 20
        config.checkpoint_every, config.log_every = 10, 5
        config.optim.warmup_steps = 2
        config.eval.update(num_points=1, batch_size=128, probe_train_examples=400,
                           probe_test_examples=200, val_batches=1)
        for key, value in overrides.items():
            section, _, field = key.rpartition(".")
            (config[section] if section else config)[field] = value
        return config

    return make
