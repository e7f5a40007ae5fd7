import subprocess
import sys

import pytest
from helpers import ROOT, load_experiment

from scaling.errors import ConfigError
from scaling.objectives import validate_config


@pytest.mark.parametrize("field, value, message", [
    ("objective", "mae", "objective: unknown 'mae'; choose one of clip"),
    ("size", "huge", "size: unknown 'huge'"),
    ("batch_size", 12, "batch_size: 12 is not divisible by the 8 batch shards"),
    ("model.dtype", "float16", "model.dtype"),
    ("model.patch_size", 5, "does not divide data.image_size"),
    ("data.caption_level", "none", "CLIP needs captions"),
    ("mesh.data", 3, "multiply to 3 but there are 8 devices; set one axis to -1"),
    ("optim.warmup_steps", 10_000, "must be below total_steps"),
])
def test_validation_names_the_field(field, value, message):
    config = load_experiment("clip")
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config, num_devices=8)


def test_config_argument_must_be_known():
    with pytest.raises(ConfigError, match="only size=... is taken here"):
        load_experiment("clip", "size=mu,width=3")


def test_cli_reports_bad_config_before_compiling(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "scaling.cli", "train", "--config", "experiments/clip.py:size=mu",
         "--workdir", str(workdir), "--config.batch_size=7", "--config.mesh.data=2",
         "--config.mesh.fsdp=1", "--config.mesh.tensor=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PATH": ""},
    )
    assert proc.returncode == 2
    assert "error: batch_size: 7 is not divisible by the 2 batch shards" in proc.stderr
    assert not (workdir / "checkpoints").exists()
