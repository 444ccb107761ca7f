"""Upstream's subclass contract on ``CaptionDataset``, as the forks of OpenUni and Harmon write it.

- A subclass's own ``data_list`` is its records, held as it made them: assigned whole, or built by
  appending after ``self.data_list = []`` in its own ``_load_data`` (RecA's reconstruction datasets
  list ``{'image': <row of a hub dataset>}``). The list itself is kept (later appends count) and
  read as it is, never passed through the index's record rules: what the records mean is the
  subclass's business. The project's rules still hold where a sample is read (paths inside their
  folders, images through the restricted opener, failures counted by the failure policy).
- A subclass that sets upstream's attributes itself instead of calling ``super().__init__()``
  (RecA's Harmon ``ReconstructionDataset``) gets the project's own state on first use: the
  keywords it did not set take their defaults, the readers are chosen from its folders, the
  per-process state is made when a sample is drawn.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np

from src.datasets.index.captions import caption_keys
from src.datasets.index.sample_index import RecordList
from src.datasets.sample.buckets import Buckets

OWN = '_own_records'

# The project's state a subclass that skips ``CaptionDataset.__init__`` never sets, and upstream's
# optional keywords, at ``CaptionDataset.__init__``'s defaults.
DEFAULTS = dict(
    image_folder=None, cap_folder=None, cap_source='caption', debug=False, image_processor=None,
    ceph_folder=None, latents_ceph_folder=None, ceph_config=None, use_ceph=False, max_length=128,
    min_image_size=80, image_length=256, image_tokens_folder=None, image_latents_folder=None,
    unconditional=0.1, image_key='image', seed=None, max_refetch=10, max_failure_ratio=0.5,
    index_cache_dir=None, tar_index=None, remote_tars=None, train_number_samples=None, truncation='ids',
    allow_outside_paths=False, empty_captions='skip', buckets=None, bucket_ids=None, latent_shapes=None,
    prompt_ids=None, image_process=None, unit_image_size=32, pixel_shape=None, _process_state=None)
FRESH = dict(tokenizer_kwargs=lambda: dict(add_special_tokens=True), _members=dict)  # mutable defaults
READERS = ('files',)  # chosen by ``_choose_readers``


class OwnRecords:
    """A subclass's own list of records in the place of the memory-mapped index: the same list
    object (appends after construction count), each record returned as it is."""

    def __init__(self, records, source: str):
        self.records = records
        self.source = source

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def table_row(self, i) -> int:
        return int(i)

    def table_rows(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    @property
    def columns(self) -> list[str]:
        return sorted({key for record in self.records if isinstance(record, Mapping) for key in record})

    def content_digest(self, name: str) -> str:
        """A digest of the records' ``name`` values in order (the records themselves where they are
        not mappings): a resume's check that it meets the same records."""
        digest = hashlib.blake2b(digest_size=16)
        for record in self.records:
            value = record.get(name) if isinstance(record, Mapping) else record
            digest.update(json.dumps(value, default=repr, sort_keys=True).encode() + b'\n')
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f'OwnRecords({len(self)} records a subclass made from {self.source})'


class SubclassContract:
    """Mixed into ``CaptionDataset``: ``data_list`` as upstream's subclasses use it, and the
    project's state made on first use. See the module."""

    @property
    def data_list(self):
        """The records as upstream's ``self.data_list[idx]`` reads them: a subclass's own list itself,
        else a read-only view of the memory-mapped index (``RecordList``: not a copy in every worker)."""
        own = self.__dict__.get(OWN)
        if own is not None:
            return own
        return RecordList(self.index)

    @data_list.setter
    def data_list(self, records) -> None:
        # Kept as it is, the very list: `self.data_list = []` then appends builds it.
        self.__dict__[OWN] = records
        self.__dict__.pop('index', None)

    def forget_own_records(self) -> None:
        """The base's own loader read the index: a list a subclass assigned earlier is replaced."""
        self.__dict__.pop(OWN, None)

    @property
    def has_own_records(self) -> bool:
        return self.__dict__.get(OWN) is not None

    def own_index(self) -> OwnRecords:
        """The subclass's own records as the dataset's index (see the module: not filtered)."""
        if self.bucket_table.placed:
            raise ValueError(f'{type(self).__name__}: buckets need the records\' sizes from the index; '
                             f'a data_list of its own ({self.data_path}) has none: leave buckets out')
        return OwnRecords(self.__dict__[OWN], str(self.data_path))

    def __getattr__(self, name):
        # Only reached for what was never set: a subclass that did not call CaptionDataset.__init__.
        if name.startswith('__') or name == OWN:
            raise AttributeError(name)
        if name == 'index' and self.__dict__.get(OWN) is not None:
            self.__dict__['index'] = value = self.own_index()
            return value
        if name == 'image_folder' and 'local_folder' in self.__dict__:  # Harmon's name for it
            self.__dict__[name] = value = self.__dict__['local_folder']
            return value
        if name in DEFAULTS:
            self.__dict__[name] = DEFAULTS[name]
            return DEFAULTS[name]
        if name in FRESH:
            self.__dict__[name] = value = FRESH[name]()
            return value
        if name == 'bucket_table':
            self.__dict__[name] = value = self.buckets or Buckets.square(self.image_size)
            return value
        if name == 'cap_keys':
            self.__dict__[name] = value = caption_keys(self.cap_source)
            return value
        if name in READERS and 'files' not in self.__dict__:
            self._choose_readers()
            return self.__dict__[name]
        raise AttributeError(f'{type(self).__name__!r} object has no attribute {name!r}')
