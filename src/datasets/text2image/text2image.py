"""Harmon's dataset classes at Harmon's import path, on this project's index, captions, images and
failure policy: ``local_folder`` is the image folder, captions are inline (``Text2ImageDataset``)
or in annotation json files under ``cap_folder`` (``LargeText2ImageDataset``), images larger than
8 px are used, and a chat template without generation keys gets Harmon's own prompt."""
from __future__ import annotations

from mmengine.registry import DATASETS

from src.datasets.text2image.caption_datasets import CaptionDataset

HARMON_MIN_IMAGE_SIZE = 8  # Harmon asserts width and height > 8


@DATASETS.register_module()
class Text2ImageDataset(CaptionDataset):
    """Harmon's ``Text2ImageDataset``: records ``{"image", <cap_source>}`` under ``local_folder``."""

    def __init__(self, data_path, local_folder, image_size, unconditional=0.1, tokenizer=None,
                 prompt_template=None, max_length=1024, crop_image=True, cap_source='caption', **kwargs):
        self.crop_image = crop_image
        kwargs.setdefault('min_image_size', HARMON_MIN_IMAGE_SIZE)
        super().__init__(data_path, image_folder=local_folder, image_size=image_size, unconditional=unconditional,
                         tokenizer=tokenizer, prompt_template=prompt_template, max_length=max_length,
                         cap_source=cap_source, **kwargs)
        self.local_folder = local_folder


@DATASETS.register_module()
class LargeText2ImageDataset(Text2ImageDataset):
    """Harmon's ``LargeText2ImageDataset``: records ``{"image", "annotation"}``, captions in the json
    files under ``cap_folder`` (``local_folder`` when None)."""

    def __init__(self, cap_folder=None, *args, **kwargs):
        local_folder = kwargs.get('local_folder', args[1] if len(args) > 1 else None)
        super().__init__(*args, cap_folder=local_folder if cap_folder is None else cap_folder, **kwargs)
