"""Shared fixtures: 8 simulated CPU devices, a small scenes data set built once, tiny configs."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # where libtpu is installed, tests stay on CPU

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_experiment(objective: str, arg: str = "size=mu"):
    """``experiments/<objective>.py``'s get_config(arg), as the CLI would load it."""
    from scaling.config import load_config_file

    return load_config_file(ROOT / "experiments" / f"{objective}.py", arg)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS directory holding the small 32x32 scenes set, built once per test session."""
    from scaling.data.pipeline import ensure_built

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


def random_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of the shape the pipeline yields, with random content."""
    from scaling.data.pipeline import caption_length

    rng = np.random.default_rng(seed)
    size, length = config.data.image_size, caption_length(config.data)
    lengths = rng.integers(min(4, length), max(length, 5), (batch_size, 1))  # all of BOS+EOS if 2
    mask = (np.arange(length)[None] < lengths).astype(np.int32)
    return {
        "image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, 4, (batch_size,)).astype(np.int32),
        "caption_tokens": (rng.integers(3, 259, (batch_size, length)) * mask).astype(np.int32),
        "caption_mask": mask,
    }
