"""The base of the project's TFDS builders (scenes, digits, local CIFAR-10)."""

from __future__ import annotations

import inspect

import tensorflow_datasets as tfds
from etils import epath


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder whose source file is found without ``importlib_resources``, which TFDS
    4.9.10 imports for that but declares only for Python < 3.9."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))
