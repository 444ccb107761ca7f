"""The data layer: index, captions, image I/O, tar shards, dataset classes and collate functions.

Import the submodule you need (``src.datasets.text2image.caption_datasets`` and so on): importing
the package itself stays cheap, so tools that only need the index do not load torch.
"""
