"""BLIP3oDataset: BLIP3o-60k, whose caption files are plain text whatever their name."""
from __future__ import annotations

from mmengine.registry import DATASETS

from src.datasets.captions import caption_from_text
from src.datasets.text2image.caption_datasets import CaptionDataset


@DATASETS.register_module()
class BLIP3oDataset(CaptionDataset):
    """A ``CaptionDataset`` whose annotation files are read as text (stripped), as upstream does."""

    def parse_annotation(self, path: str, data: bytes) -> str:
        return caption_from_text(data, path)
