"""Captioning (CapPa) on the embedded scenes data set. Usage: --config experiments/captioning.py:size=mu"""

from scaling.config import base_config
from scaling.objectives.captioning import config_section


def get_config(arg=None):
    config = base_config("captioning", arg)
    config.captioning = config_section()
    return config
