"""BLIP3oDataset: BLIP3o-60k, whose caption files are plain text whatever their name."""
from __future__ import annotations

from mmengine.registry import DATASETS

from src.datasets.index.captions import caption_from_text
from src.datasets.text2image.caption_datasets import CaptionDataset


@DATASETS.register_module()
class BLIP3oDataset(CaptionDataset):
    """A ``CaptionDataset`` whose annotation files are read as text (stripped), as upstream does. With
    ``image_process`` (deepgen's), the records are deepgen's: ``{"image_path", "txt"}``, inline."""

    def __init__(self, *args, image_process=None, **kwargs):
        if image_process is not None:
            kwargs.setdefault('image_key', 'image_path')
            kwargs.setdefault('cap_source', 'txt')
        super().__init__(*args, image_process=image_process, **kwargs)

    def parse_annotation(self, path: str, data: bytes) -> str:
        return caption_from_text(data, path)
