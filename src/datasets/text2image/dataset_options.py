"""``CaptionDataset``'s keywords checked at construction (a wrong value fails there, naming the
choices), and where its index and tar shards are read from (docs/dataset-options.md lists them)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from src.datasets.components import build_component
from src.datasets.sample.pictures import PIXEL_DTYPES
from src.datasets.sample.prompts import TRUNCATIONS
from src.datasets.storage.object_store import fetch_to_cache, is_object_url
from src.datasets.storage.object_tars import ObjectTarMembers
from src.datasets.storage.tar_index import TarMemberIndex

EMPTY_CAPTIONS = ('skip', 'keep')


def check_choices(owner: str, tokenizer, prompt_template, **choices) -> None:
    """A tokenizer needs a template; ``truncation``, ``empty_captions`` and ``pixel_dtype`` are one
    of their choices."""
    if tokenizer is not None and prompt_template is None:
        raise ValueError(f'{owner} needs a tokenizer and a prompt_template to build input_ids '
                         '(or tokenizer=None: samples then hold the caption as text, for a model to tokenize)')
    allowed = dict(truncation=TRUNCATIONS, empty_captions=EMPTY_CAPTIONS, pixel_dtype=PIXEL_DTYPES)
    for name, value in choices.items():
        if value not in allowed[name]:
            raise ValueError(f'{name}={value!r}: one of {allowed[name]}')


@dataclass(frozen=True)
class IndexSources:
    """``use_ceph``: upstream's rule, object storage is used when ``ceph_config`` names an existing
    file; ``index_source``: the index file to read (a ``data_path`` in the bucket is fetched once
    per machine, then read locally); ``tar_index`` (local) or ``remote_tars`` (in the bucket)."""
    use_ceph: bool
    index_source: str
    tar_index: object
    remote_tars: object


def index_sources(data_path: str, tar_index, ceph_config, index_cache_dir) -> IndexSources:
    use_ceph = ceph_config is not None and os.path.isfile(os.fspath(ceph_config))
    index_source = (fetch_to_cache(data_path, os.fspath(ceph_config), index_cache_dir)
                    if use_ceph and is_object_url(data_path) else data_path)
    remote_tars = (ObjectTarMembers(tar_index, os.fspath(ceph_config), index_cache_dir)
                   if use_ceph and is_object_url(tar_index) else None)
    local_tars = (None if remote_tars is not None else
                  TarMemberIndex.open(os.fspath(tar_index)) if isinstance(tar_index, (str, os.PathLike))
                  else build_component(tar_index))
    return IndexSources(use_ceph, index_source, local_tars, remote_tars)
