"""The `cifar10_jpeg` TFDS builder: CIFAR-10 read from a local copy of JPEG tarballs.

Owns locating the copy (`default_cifar10_jpeg_dir`), checking it (`find_tarballs`) and the builder,
which stores each member's JPEG bytes as they are (no decode or re-encode). The tarballs,
`cifar10-jpeg-train.tar.gz` and `cifar10-jpeg-test.tar.gz` with members
`<split>/<class>/<NNNN>.jpg`, are read from the TFDS manual directory. Results on this copy are
"CIFAR-10 (JPEG copy)": JPEG re-encoding moves accuracies slightly away from published numbers.

CIFAR-10 has no captions. For the language objectives each image carries ``caption_short``, its class name
in one of ``CAPTION_TEMPLATES`` ("a blurry photo of a cat."), the template fixed per image: training on
them is language as supervision by the class label, and results must say so.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

import tensorflow_datasets as tfds

from scaling.data import captions
from scaling.data.local_builder import LocalBuilder
from scaling.errors import DataError

ENV_VAR = "SCALING_CIFAR10_JPEG_DIR"
CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SPLITS = ("train", "test")
CAPTION_TEMPLATES = captions.CAPTION_TEMPLATES["cifar10_jpeg"]
CAPTION_TOKENS = 2 + max(len(t.format(name)) for t in CAPTION_TEMPLATES for name in CLASS_NAMES)  # bytes
IMAGE_SHAPE = (32, 32, 3)


def tarball_name(split: str) -> str:
    return f"cifar10-jpeg-{split}.tar.gz"


def default_cifar10_jpeg_dir() -> Path | None:
    """`$SCALING_CIFAR10_JPEG_DIR` if set, else `<repo>/../shared/data/cifar10-jpeg` if present."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    shared = repo_root.parent / "shared" / "data" / "cifar10-jpeg"
    return shared if shared.is_dir() else None


def find_tarballs(directory: str | os.PathLike | None) -> dict[str, Path]:
    """{split: tarball path}; DataError naming the directory and the fix when incomplete."""
    if directory is None:
        raise DataError(
            "No CIFAR-10 JPEG directory: none given, $" + ENV_VAR + " is unset and no "
            "shared/data/cifar10-jpeg folder sits beside the repository. Set " + ENV_VAR
            + " to the folder holding " + " and ".join(tarball_name(s) for s in SPLITS) + "."
        )
    paths = {split: Path(directory) / tarball_name(split) for split in SPLITS}
    missing = [path.name for path in paths.values() if not path.is_file()]
    if missing:
        absent = "" if Path(directory).is_dir() else " (no such folder)"
        raise DataError(
            f"CIFAR-10 JPEG tarballs missing from {directory}{absent}: {', '.join(missing)}. Put them "
            f"there or set {ENV_VAR} to the folder that holds them."
        )
    return paths


def label_of_member(name: str) -> str | None:
    """Class name of a `<split>/<class>/<file>.jpg` member, None for anything else."""
    parts = name.split("/")
    if len(parts) != 3 or not parts[2].lower().endswith(".jpg") or parts[1] not in CLASS_NAMES:
        return None
    return parts[1]


def iter_jpegs(tarball: str | os.PathLike):
    """(member name, class name, JPEG bytes) for every image in a tarball, streaming."""
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                label = label_of_member(member.name) if member.isfile() else None
                if label is not None:
                    yield member.name, label, archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"CIFAR-10 JPEG tarball {tarball} cannot be read ({error}); copy it again, or set "
                        f"{ENV_VAR} to a folder with intact tarballs") from None


def class_caption(member_name: str, class_name: str) -> str:
    """The templated caption of one image; the template is fixed by the member name."""
    return CAPTION_TEMPLATES[zlib.crc32(member_name.encode()) % len(CAPTION_TEMPLATES)].format(class_name)


class Cifar10Jpeg(LocalBuilder):
    """CIFAR-10 (JPEG copy) from local tarballs given as the TFDS manual directory."""

    name = "cifar10_jpeg"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "caption_short: class names in templates."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Place {tarball_name('train')} and {tarball_name('test')} in the manual directory "
        f"(in this workplace: ../shared/data/cifar10-jpeg, or set {ENV_VAR})."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=IMAGE_SHAPE, encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                "id": tfds.features.Text(),
                "caption_short": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        )

    def _split_generators(self, dl_manager):
        tarballs = find_tarballs(dl_manager.manual_dir)
        return {split: self._generate_examples(path) for split, path in tarballs.items()}

    def _generate_examples(self, tarball: Path):
        for name, label, jpeg in iter_jpegs(tarball):
            caption = class_caption(name, label)
            yield name, {"image": jpeg, "label": label, "id": name, "caption_short": caption}
