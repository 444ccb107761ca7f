"""Point a loaded dataset config at local resources, as the tests and the demo run it offline."""
from __future__ import annotations

from collections.abc import Iterator

from mmengine.config import Config, ConfigDict


def dataset_configs(dataset_cfg: ConfigDict) -> Iterator[ConfigDict]:
    """The leaf dataset configs of ``dataset_cfg``: itself, or those a ConcatDataset combines."""
    if 'datasets' in dataset_cfg:
        for child in dataset_cfg.datasets:
            yield from dataset_configs(child)
    else:
        yield dataset_cfg


def localize(cfg: Config, tokenizer_path: str, *, dataset_overrides: dict | None = None,
             **dataloader_overrides) -> ConfigDict:
    """``cfg.train_dataloader`` with every dataset's tokenizer loaded from ``tokenizer_path``, and the
    given keys replaced (e.g. ``dataset_overrides=dict(image_size=256)``, ``batch_size=4``)."""
    loader = cfg.train_dataloader
    for dataset in dataset_configs(loader.dataset):
        dataset.tokenizer.pretrained_model_name_or_path = tokenizer_path
        dataset.update(dataset_overrides or {})
    loader.update(dataloader_overrides)
    return loader
