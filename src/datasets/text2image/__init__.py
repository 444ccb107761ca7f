"""Text-to-image datasets; importing this registers them in mmengine's ``DATASETS``."""
from src.datasets.text2image.blip3_o import BLIP3oDataset
from src.datasets.text2image.caption_datasets import CaptionDataset

__all__ = ['BLIP3oDataset', 'CaptionDataset']
