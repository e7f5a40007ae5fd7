"""Supervised classification of data.label on the embedded scenes: the probe's ceiling, not a compared
objective. Usage: --config experiments/supervised.py:size=mu"""

from scaling.config import base_config


def get_config(arg=None):
    return base_config("supervised", arg)
