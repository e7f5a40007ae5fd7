"""Diffusion (DiT) on the embedded scenes data set. Usage: --config experiments/diffusion.py:size=mu"""

from scaling.config import base_config
from scaling.objectives.diffusion import config_section


def get_config(arg=None):
    config = base_config("diffusion", arg)
    config.diffusion = config_section()
    return config
