"""iGPT on the embedded scenes data set. Usage: --config experiments/igpt.py:size=mu"""

from scaling.config import base_config
from scaling.objectives.igpt import config_section


def get_config(arg=None):
    config = base_config("igpt", arg)
    config.igpt = config_section()
    # 16x16 = 256 tokens per image keeps CPU runs short; the reference iGPT resolution is 32.
    config.data.image_size = 16
    config.data.caption_level = "none"  # pixels only
    return config
