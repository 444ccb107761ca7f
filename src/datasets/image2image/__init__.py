"""Image editing datasets (OpenUni's ``image2image``); importing this registers them in mmengine's ``DATASETS``."""
from src.datasets.image2image.edit_datasets import ImageEditDataset, ReconstructDataset

__all__ = ['ImageEditDataset', 'ReconstructDataset']
