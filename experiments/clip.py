"""CLIP on the embedded scenes data set. Usage: --config experiments/clip.py:size=mu"""

from scaling.config import base_config
from scaling.objectives.clip import config_section


def get_config(arg=None):
    config = base_config("clip", arg)
    config.clip = config_section()
    return config
