"""Puffin's generation datasets (``src.datasets.generation.caption_datasets``)."""
