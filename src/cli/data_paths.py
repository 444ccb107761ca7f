"""The data a config reads, checked before anything is built: every index or latent folder that is
not there named at once, with the folder the relative paths are read from and what makes it."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator

DATASET_TYPES = ('CaptionDataset', 'BLIP3oDataset')  # the classes whose data_path is a local index file
MAKES = {'data_path': 'prepare it first: docs/datasets.md has each dataset\'s download and prepare commands',
         'image_latents_folder': 'cache the latents first: tools/cache_latents.py (docs/latents.md)'}


class DataMissing(FileNotFoundError):
    """What a config reads is not there; the message names every path and what makes it."""


def _type_name(node: dict) -> str:
    kind = node.get('type')
    return getattr(kind, '__name__', None) or str(kind).rsplit('.', 1)[-1]


def config_dicts(node, keep: Callable[[dict], bool]) -> Iterator[dict]:
    """Every dict under ``node`` (a config, nested dicts and lists included) that ``keep`` keeps."""
    if isinstance(node, dict):
        if keep(node):
            yield node
        for value in node.values():
            yield from config_dicts(value, keep)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from config_dicts(value, keep)


def dataset_nodes(node) -> Iterator[dict]:
    """The CaptionDataset / BLIP3oDataset configs under ``node`` (in ConcatDatasets too)."""
    return config_dicts(node, lambda found: _type_name(found) in DATASET_TYPES)


def missing_data(built) -> list[tuple[str, str]]:
    """``(key, path)`` of each local index or latent folder of ``built``'s datasets that is not there."""
    missing = []
    for node in dataset_nodes(built):
        checks = {'data_path': node.get('ceph_folder') is None,
                  'image_latents_folder': node.get('latents_ceph_folder') is None}
        for key, local in checks.items():
            path = node.get(key)
            if local and isinstance(path, str) and '://' not in path and not any(c in path for c in '*?[') \
                    and not os.path.exists(path) and (key, path) not in missing:
                missing.append((key, path))
    return missing


def check_data(built, config: str) -> None:
    """``DataMissing`` naming every path of ``missing_data`` and what makes it."""
    missing = missing_data(built)
    if not missing:
        return
    lines = [f'  {key} {path!r}: no such {"file" if key == "data_path" else "folder"}; {MAKES[key]}'
             for key, path in missing]
    indexes = [node.get('data_path') for node in dataset_nodes(built)]
    if len(indexes) > 1 and len({path for key, path in missing if key == 'data_path'}) < len(set(indexes)):
        lines.append('  a mix needs every one of its datasets: for a mix of those you have, see "A mix of the '
                     'datasets you have" in docs/datasets.md')
    raise DataMissing(f'{config} reads data that is not here (its relative paths are read from the folder you run '
                      f'in, {os.getcwd()}; run from the folder that holds data/):\n' + '\n'.join(lines))
