"""Names and numbers that several layers share, defined once.

This module sits at the bottom of the import graph beside ``errors``: it imports nothing, so any
module may read from it.
"""

from __future__ import annotations

# the model a command or pipeline uses when none is named
DEFAULT_MODEL = "openai/clip-vit-base-patch32"
# the sentence each zero-shot label is put in (transformers' pipeline default)
DEFAULT_TEMPLATE = "This is a photo of {}."

# OpenAI's preprocessing statistics (ImageNet-like, measured on CLIP's training set)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# file names in a transformers-style checkpoint folder
CONFIG_NAME = "config.json"
IMAGE_PROCESSOR_NAME = "preprocessor_config.json"
PROCESSOR_NAME = "processor_config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"

# file names in an open_clip hub repo
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_HUB_PREFIX = "hf-hub:"  # open_clip's spelling of a hub id

# file name extensions picked up as images from folders and webdataset shards
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm",
                              ".jfif", ".ico"})
