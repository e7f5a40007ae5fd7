"""Data: TFDS builders (scenes, cifar10_jpeg), grain pipelines and caption tokenizers."""
