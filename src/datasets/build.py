"""The datasets a config trains on, built as mmengine builds them: for tools that work per dataset."""
from __future__ import annotations


def dataset_config(cfg):
    """``dataset`` (as upstream's scripts build it, so ``--cfg-options dataset.image_size=...``
    applies), else the training dataloader's."""
    if 'dataset' in cfg:
        return cfg.dataset
    if 'train_dataloader' in cfg and 'dataset' in cfg.train_dataloader:
        return cfg.train_dataloader.dataset
    raise SystemExit(f'{cfg.filename}: no dataset nor train_dataloader.dataset')


def leaf_datasets(dataset) -> list:
    """The parts of a ConcatDataset (nested ones too), or the dataset itself."""
    parts = getattr(dataset, 'datasets', None)
    return [leaf for part in parts for leaf in leaf_datasets(part)] if parts is not None else [dataset]


def build_leaf_datasets(cfg) -> list:
    from mmengine.registry import DATASETS
    return leaf_datasets(DATASETS.build(dataset_config(cfg)))
