"""CaptionDataset: one text-to-image sample (image + tokenized prompt) per index record.

Steps, each a method a subclass can replace: ``load_index`` (read and filter the index),
``load_prompt_ids`` (the stored prompt ids, with ``pretokenize``),
``read_image`` (bytes of one image, from the reader chosen at construction:
``src.datasets.storage.storage``), ``parse_annotation`` (caption from a caption file), ``load_image_data``
(pixels, latents or tokens), ``process_text`` (prompt ids) and ``prepare_data`` (one sample, or
``SampleError``). ``__getitem__`` adds the failure policy:
a sample that cannot be used is counted, logged and replaced, a bounded number of times.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.registry import DATASETS
from torch.utils.data import Dataset, get_worker_info

from src.datasets.index.captions import (ANNOTATION_KEY, MAX_CAPTION_BYTES, caption_keys, check_cap_source, cut_caption,
                                   parse_annotation,
                                   resolve_caption)
from src.datasets.components import build_component
from src.datasets.errors import IndexFormatError, SampleError
from src.datasets.index.extra_keys import check_extra_keys, extra_values
from src.datasets.failure_policy import FailureTracker
from src.datasets.storage.files import join_inside
from src.datasets.sample.image_io import Placement, load_pixels
from src.datasets.sample.image_process import pixel_shape
from src.datasets.index.image_sizes import record_sizes
from src.datasets.index import filters as record_filters, selection
from src.datasets.storage.latent_store import INFO_NAME as LATENT_INFO, LatentShapes
from src.datasets.storage.object_fetch import block_rest
from src.datasets.storage.object_store import ObjectFolder, ObjectTarMembers, fetch_to_cache, is_object_url
from src.datasets.storage.prefetch import has_remote_reader, prefetch_records
from src.datasets.index.prompt_ids import PromptIds, inline_prompts, load_prompt_ids
from src.datasets.index.sample_index import SampleIndex
from src.datasets.storage.storage import LocalFiles, TarMembers, folder_storage
from src.datasets.storage.tar_index import TarMemberIndex
from src.datasets.storage.tensor_files import MAX_TENSOR_BYTES, load_tensor_file
from src.datasets.text2image.bucketed import BucketedRecords
from src.datasets.text2image.own_records import OwnRecords, SubclassContract
from src.datasets.text2image.upstream_hooks import UpstreamHooks, sets_draw_rng
from src.datasets.index.token_ids import TokenIds

MAX_ASPECT = 10.0  # upstream's asserts: 0.1 < w / h < 10
LOCAL_FILES = LocalFiles()
TRUNCATIONS = ('ids', 'caption')
EMPTY_CAPTIONS = ('skip', 'keep')
PIXEL_DTYPES = ('float32', 'uint8')
HARMON_GENERATION = 'Generate an image: {input}'  # Harmon's prompts, for templates without their own
HARMON_CFG = 'Generate an image.'

@dataclass
class _ProcessState:
    """What each process (main, every DataLoader worker) draws and counts on its own. ``rng`` is
    the process's stream; ``draw_rng`` the generator of the sample being read (see ``__getitem__``)."""
    pid: int
    rng: random.Random
    tracker: FailureTracker
    draw_rng: random.Random | None = None
    target: tuple[int, int] | None = None  # the (height, width) of the sample being read
    placement: Placement | None = None  # where its last picture came from (with buckets)
    batch_ids: dict | None = None  # the prompt ids of the batch being read, by index (__getitems__)


@DATASETS.register_module()
class CaptionDataset(SubclassContract, UpstreamHooks, BucketedRecords, Dataset):
    """Text-to-image samples: ``pixel_values`` (or ``image_latents`` / ``image_tokens``) and ``input_ids``.

    The keywords up to ``unconditional`` are upstream OpenUni's, in its order. Added:
    ``image_key``: the record key holding the image path (the dalle3 parquet uses 'filename');
    ``seed``: crop, dropout and replacement draws (None: the process's torch seed);
    ``max_refetch``: failures in a row after which a warning says that drawing goes on;
    ``max_failure_ratio``: the failure rate a run accepts; the dataset stops when the recent rate
    exceeds it beyond doubt, or every recent sample fails (``src.datasets.failure_policy``);
    ``index_cache_dir``: where ``SampleIndex`` keeps its memory-mapped copy of the index;
    ``tar_index``: the path of a tar member index (``tar_index.arrow``, see ``src.datasets.storage.tar_index``),
    or an object / config with its ``relpath(path)`` and ``read(relpath)``: image files are then read
    straight from the tar shards instead of ``image_folder``;
    ``train_number_samples`` (VGT's): only the first N records of the index are used;
    ``truncation``: a prompt longer than ``max_length`` is cut as upstream cuts it, its ids
    (``'ids'``, the default: the template's end and IMG_START_TOKEN may be lost), or by shortening
    the caption so that they survive (``'caption'``);
    ``pretokenize``: tokenize every prompt whose caption is in the index once, into memory-mapped
    arrays beside the index's cache (``src.datasets.index.prompt_ids``; the same ids, 0.5 ms or more less
    per sample; a build on first use for each tokenizer and template, and about 4 bytes a token of
    disk). Off by default;
    ``allow_outside_paths``: image and annotation paths in the index that are absolute or climb out
    of their folder with '..' are refused and counted ('unsafe-path') unless this is True;
    ``empty_captions``: an empty or blank caption is a counted ``empty-caption`` skip (``'skip'``,
    the default: a picture trained against an empty prompt teaches nothing about its text), or is
    trained on as upstream does, as the prompt "Generate an image: " (``'keep'``);
    ``buckets``: aspect-ratio buckets instead of square crops (``src.datasets.sample.buckets``:
    ``dict(table='pixart-512')`` or ``dict(area=512 * 512, divisor=32, max_aspect=4.0)``, with
    ``crop_mode`` 'random' or 'center'): each sample's picture covers its bucket's shape, the rest
    cropped, and the sample adds ``original_size`` and ``crop_coords``; batch them with
    ``BucketSampler``. None (the default): square crops of ``image_size``;
    ``pixel_dtype``: 'float32' (the default, upstream's [-1, 1]), or 'uint8' (a quarter of the bytes
    handed from the workers, normalised on the device by ``T2IDataPreprocessor``);
    ``filters``: records kept by size, aspect, caption words, any column's values and duplicate
    clusters (``src.datasets.index.filters``), decided once per index cache and part of the fingerprint;
    ``extra_keys``: index columns returned in each sample (scores as conditioning).
    ``image_process`` and ``unit_image_size`` (the second generation's, deepgen's and Puffin's):
    'crop2square', 'resize2square', 'dynamic' or 'fix_pixels' (``src.datasets.sample.image_process``: the
    last two keep each picture's aspect), and the sample adds its caption as ``text``;
    ``tokenizer=None`` (theirs too): samples without ``input_ids``, their caption as ``text``, for a
    model that tokenizes it.

    ``data_list`` is upstream's list of records, as a read-only view of the memory-mapped index, or a
    subclass's own list as it made it (``src.datasets.text2image.own_records``).
    """

    crop_image = True  # a random square crop; False squeezes the whole image (Harmon's option)
    pixel_dtype = 'float32'  # (also for subclasses that skip __init__)
    max_aspect = MAX_ASPECT
    cuts_prompts = True  # a prompt longer than max_length is cut (an editing prompt never is)
    path_keys = (ANNOTATION_KEY,)  # record keys holding paths, besides image_key: none may leave its folder
    # Set by __init__; defaults for subclasses that build themselves without it (their own data_list).
    filters = None
    extra_keys = ()
    funnel = ()
    read_blocks = None  # BlockShuffleSampler's block size: a batch fetches the rest of its block too

    def __init__(self,
                 data_path,
                 image_folder=None,
                 debug=False,
                 image_processor=None,
                 ceph_folder=None,
                 latents_ceph_folder=None,
                 ceph_config=None,
                 tokenizer=None,
                 prompt_template=None,
                 max_length=128,
                 min_image_size=80,
                 image_size=256,
                 image_length=256,
                 image_tokens_folder=None,
                 image_latents_folder=None,
                 cap_folder=None,
                 cap_source='caption',
                 tokenizer_kwargs=None,
                 unconditional=0.1,
                 *,
                 image_key='image',
                 seed=None,
                 max_refetch=10,
                 max_failure_ratio=0.5,
                 index_cache_dir=None,
                 tar_index=None,
                 train_number_samples=None,
                 truncation='ids',
                 pretokenize=False,
                 allow_outside_paths=False,
                 empty_captions='skip',
                 buckets=None,
                 pixel_dtype='float32',
                 filters=None,
                 extra_keys=None,
                 image_process=None,
                 unit_image_size=32):
        super().__init__()
        self.data_path = str(data_path)
        self.image_folder = image_folder
        self.cap_folder = cap_folder
        self.cap_source = cap_source
        self.cap_keys = caption_keys(cap_source)
        self.image_key = image_key
        self.debug = debug
        self.image_processor = build_component(image_processor)
        self.tokenizer = build_component(tokenizer)
        self.prompt_template = prompt_template
        if self.tokenizer is not None and prompt_template is None:
            raise ValueError(f'{type(self).__name__} needs a tokenizer and a prompt_template to build input_ids '
                             '(or tokenizer=None: samples then hold the caption as text, for a model to tokenize)')
        self.max_length = max_length
        self.min_image_size = min_image_size
        self.image_size = image_size
        self.image_length = image_length
        self.image_tokens_folder = image_tokens_folder
        self.image_latents_folder = image_latents_folder
        self.unconditional = unconditional
        self.tokenizer_kwargs = dict(add_special_tokens=True) if tokenizer_kwargs is None else dict(tokenizer_kwargs)
        self._token_ids = None  # made on first use, for the tokenizer and kwargs then set
        self.ceph_config = ceph_config
        self.ceph_folder = ceph_folder
        self.latents_ceph_folder = latents_ceph_folder
        # Upstream's rule: object storage is used when ceph_config names an existing file.
        self.use_ceph = ceph_config is not None and os.path.isfile(os.fspath(ceph_config))
        self.seed = seed
        self.max_refetch = max_refetch
        self.max_failure_ratio = max_failure_ratio
        self.index_cache_dir = index_cache_dir
        # A data_path or tar_index in the bucket is fetched once per machine, then read locally.
        self.index_source = (fetch_to_cache(self.data_path, os.fspath(ceph_config), index_cache_dir)
                             if self.use_ceph and is_object_url(self.data_path) else self.data_path)
        self.remote_tars = (ObjectTarMembers(tar_index, os.fspath(ceph_config), index_cache_dir)
                            if self.use_ceph and is_object_url(tar_index) else None)
        self.tar_index = (None if self.remote_tars is not None else
                          TarMemberIndex.open(os.fspath(tar_index)) if isinstance(tar_index, (str, os.PathLike))
                          else build_component(tar_index))
        self._choose_readers()
        self.train_number_samples = train_number_samples
        if truncation not in TRUNCATIONS:
            raise ValueError(f'truncation={truncation!r}: one of {TRUNCATIONS}')
        self.truncation = truncation
        self.allow_outside_paths = allow_outside_paths
        if empty_captions not in EMPTY_CAPTIONS:
            raise ValueError(f'empty_captions={empty_captions!r}: one of {EMPTY_CAPTIONS}')
        self.empty_captions = empty_captions
        if pixel_dtype not in PIXEL_DTYPES:
            raise ValueError(f'pixel_dtype={pixel_dtype!r}: one of {PIXEL_DTYPES}')
        self.pixel_dtype = pixel_dtype
        self._set_buckets(buckets)
        self.filters = record_filters.normalize(filters)
        self.extra_keys = check_extra_keys(extra_keys)
        self.image_process, self.unit_image_size = image_process, unit_image_size
        self.pixel_shape = pixel_shape(image_process, image_size, unit_image_size, buckets)
        self._check_folders()
        self.index = self.load_index()
        if len(self.index) and self._reads_cap_source:  # a typo fails here, at once
            check_cap_source(self.index.columns, self.cap_keys, f'{type(self).__name__} {self.data_path}')
        self.latent_shapes = self.load_latent_shapes() if self.latent_root is not None else None
        self.prompt_ids = self.load_prompt_ids() if pretokenize else None
        self._cfg_ids = None  # the unconditional prompt's ids, the same for every sample
        self._process_state = None

    def _choose_readers(self):
        """Where images, annotations and latents are read from, chosen once (``src.datasets.storage.storage``).

        As upstream: images from ``<ceph_folder>/<image>`` when there is no image_folder, annotations
        from ``<ceph_folder>/<annotation>`` when there is no cap_folder, latents from
        ``<latents_ceph_folder>/<image>.pt`` when it is set; else the local folders (or tar shards).
        With ``tar_index`` in the bucket too, the ceph_folder reads are ranged GETs of its shards."""
        ceph = self.remote_tars if self.remote_tars is not None else self._object_folder(self.ceph_folder)
        self.ceph_files = ceph
        local = TarMembers(self.tar_index) if self.tar_index is not None else LOCAL_FILES
        self.image_files, self.image_root = ((ceph, self.ceph_folder) if ceph and self.image_folder is None
                                             else (local, self.image_folder))
        self.annotation_files, self.cap_root = ((ceph, self.ceph_folder) if ceph and self.cap_folder is None
                                                else (local, self.cap_folder))
        latents_ceph = self._object_folder(self.latents_ceph_folder)
        self.latent_files, self.latent_root = ((latents_ceph, self.latents_ceph_folder) if latents_ceph
                                               else (folder_storage(self.image_latents_folder), self.image_latents_folder))
        self._remote = has_remote_reader(self)

    def _object_folder(self, folder):
        """The object-storage folder ``folder`` when upstream would read it (checked now: a wrong
        endpoint, key or bucket fails here), else None."""
        if folder is None or not self.use_ceph:
            return None
        store = ObjectFolder(folder, os.fspath(self.ceph_config))
        store.check()
        return store

    # ---- index ----------------------------------------------------------------------------------
    def _check_folders(self):
        """A wrong path in a config fails here, naming it, rather than as thousands of skipped samples."""
        folders = dict(image_tokens_folder=self.image_tokens_folder)  # data_path: by the base's own loader
        if isinstance(self.latent_files, LocalFiles):
            folders['image_latents_folder'] = self.latent_root
        if isinstance(self.annotation_files, LocalFiles):  # else tar shards or objects
            folders['cap_folder'] = self.cap_root
        if self.decodes_images and isinstance(self.image_files, LocalFiles):
            folders['image_folder'] = self.image_root
        for name, path in folders.items():
            if path is not None and not os.path.exists(path):
                raise FileNotFoundError(f'{type(self).__name__}: {name} {path!r} does not exist')

    def load_index(self) -> SampleIndex:
        """The index (``_load_data``), without the records that cannot be used; each kind of drop is
        logged. Which records are kept is decided once per index cache and options, then mapped
        (``src.datasets.index.selection``)."""
        self._load_data(self.index_source)
        if not self.has_own_records and 'index' not in self.__dict__:
            self.data_list = []  # a subclass's _load_data that loads nothing: its records come later
        if self.has_own_records:  # a subclass's own data_list: its records as it made them
            return self.own_index()
        index = self.index
        if self.train_number_samples and 0 < self.train_number_samples < len(index):
            print_log(f'Using the first {self.train_number_samples} of the {len(index)} records of '
                      f'{self.data_path} (train_number_samples)', logger='current', level=logging.INFO)
            index = index.select(np.arange(self.train_number_samples))
        whole = index.whole()
        folder = selection.folder_for(whole, self._selection_key()) if len(whole) == len(index) or \
            self.train_number_samples else None
        with selection.stored(folder, len(index), 0 if self.buckets is None else len(self.buckets.shapes)) as kept:
            if kept is None:
                kept = self._select_records(index)
                selection.save(folder, kept)
            else:
                for message in kept.drops['messages']:
                    print_log(message, logger='current', level=logging.WARNING)
        dropped = kept.drops['counts']
        count = kept.total if kept.rows is None else len(kept.rows)
        if count == 0:
            raise ValueError(f'{self.data_path}: none of its {kept.total} records is usable '
                             f'(dropped: {self._describe_drops(dropped)})')
        print_log(f'Loaded {count} samples from {self.data_path} '
                  f'(dropped: {self._describe_drops(dropped)})', logger='current', level=logging.INFO)
        self.bucket_ids = kept.bucket_ids
        self.funnel = kept.drops.get('funnel', [])
        if kept.rows is None:
            return index
        return whole.select_stored(kept.rows) if isinstance(kept.rows, np.memmap) else index.select(kept.rows)

    def _selection_key(self) -> dict:
        """What decides which records are kept, besides the index itself."""
        key = dict(dataset=f'{type(self).__module__}.{type(self).__qualname__}', image_key=self.image_key,
                   required=list(self.required_keys), paths=list(self.path_keys),
                   outside=self.allow_outside_paths, min_image_size=self.min_image_size, max_aspect=MAX_ASPECT,
                   first=self.train_number_samples, buckets=None if self.buckets is None else self.buckets.record())
        if self.filters:
            key['filters'] = self.filters
        if self.buckets is not None and self.latent_root is not None:  # sizes may come from the latent folder
            with contextlib.suppress(SampleError, OSError):
                key['latents'] = hashlib.sha256(self.latent_info_reader(
                    os.path.join(self.latent_root, LATENT_INFO))).hexdigest()
        return key

    def _select_records(self, index: SampleIndex) -> selection.Selection:
        """Which records of ``index`` are kept (row numbers), each drop counted and logged."""
        total = len(index)
        self._drop_messages = []
        keep, dropped = np.ones(total, dtype=bool), {}
        for key in self.required_keys:
            self._check_image_column(index, key)
            missing = keep & ~index.has_value(key)
            dropped[f'without {key!r}'] = self._log_dropped(missing, total, f'have no {key!r}')
            not_text = keep & ~missing & index.not_text(key)
            dropped[f'{key!r} not text'] = self._log_dropped(not_text, total, f'have a {key!r} that is not text')
            keep &= ~missing & ~not_text
        if not self.allow_outside_paths:
            unsafe = np.zeros(total, dtype=bool)
            for key in dict.fromkeys((self.image_key, *self.required_keys, *self.path_keys)):
                unsafe |= keep & index.unsafe_paths(key)
            dropped['unsafe path'] = self._log_dropped(
                unsafe, total, 'name an image or annotation path that is absolute or climbs out of its folder '
                               "with '..' (refused: set allow_outside_paths=True to read them)")
            keep &= ~unsafe
        if 'width' in index.columns and 'height' in index.columns:
            width, height = index.numbers('width'), index.numbers('height')
            # NaN (size unknown) compares False everywhere: such records are checked when read.
            small = keep & ((width <= self.min_image_size) | (height <= self.min_image_size))
            with np.errstate(divide='ignore', invalid='ignore'):
                aspect = width / height
            bad_aspect = keep & ~small & ((aspect <= 1 / MAX_ASPECT) | (aspect >= MAX_ASPECT))
            dropped['too small'] = self._log_dropped(
                small, total, f'are no larger than {self.min_image_size} px on a side')
            dropped['bad aspect'] = self._log_dropped(
                bad_aspect, total, f'have an aspect ratio outside (1/{MAX_ASPECT:g}, {MAX_ASPECT:g})')
            keep &= ~small & ~bad_aspect
        filtered, funnel = record_filters.apply(self.filters, self._filter_values(index), keep,
                                                lambda mask, what: self._log_dropped(mask, total, what))
        dropped.update(filtered)
        if self.buckets is not None:
            assigned, drops = self._assign_buckets(index, keep, total)
            dropped.update(drops)
            keep &= assigned >= 0
        rows = np.flatnonzero(keep)
        return selection.Selection(
            rows=index.table_rows()[rows] if len(rows) < total else None,
            bucket_ids=None if self.buckets is None else assigned[rows],
            drops={'counts': dropped, 'messages': self._drop_messages, 'funnel': funnel}, total=total)

    def _filter_values(self, index: SampleIndex) -> record_filters.RecordValues:
        """What ``filters`` compare: the index's columns, the pictures' sizes (as buckets get them) and
        the captions' word counts (from the index, or the annotation files)."""
        def sizes(view):
            return record_sizes(view, self._header_reader(view), self.data_path, self._latent_sizes(view))
        return record_filters.RecordValues(index, sizes, self.cap_keys, lambda i: self.caption_of(index[i]))


    def load_prompt_ids(self) -> PromptIds | None:
        """The stored prompt ids of the whole index (``pretokenize``: built once, then mapped), or
        None where they cannot be stored."""
        if isinstance(self.index, OwnRecords) or self.tokenizer is None:
            return None
        return load_prompt_ids(self.index, self.cap_keys, self.caption_prompt, self.tokenizer,
                               self.tokenizer_kwargs, self.prompt_template, self._encode)

    @property
    def required_keys(self) -> tuple[str, ...]:
        """The record keys a sample cannot do without: the image path (``image_key``)."""
        return (self.image_key,)

    def _check_image_column(self, index: SampleIndex, key: str) -> None:
        """Image paths must be text: a column of numbers, lists or objects is a wrong ``image_key``
        or a broken index, said here rather than as a TypeError inside a DataLoader worker."""
        kind = index.column_type(key)
        if kind is None or pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
            return
        first = int(np.argmax(index.has_value(key)))
        raise IndexFormatError(f'{self.data_path}: the {key!r} field holds {kind} values (record #{first}: '
                               f'{index[first].get(key)!r}), not image paths. Is image_key right? '
                               f'The records have {index.columns}.')

    def _log_dropped(self, mask: np.ndarray, total: int, what: str) -> int:
        count = int(mask.sum())
        if count:
            message = f'{count} of {total} records in {self.data_path} {what} (first: record #{int(np.argmax(mask))})'
            print_log(message, logger='current', level=logging.WARNING)
            getattr(self, '_drop_messages', []).append(message)
        return count

    @staticmethod
    def _describe_drops(dropped: dict) -> str:
        return ', '.join(f'{count} {why}' for why, count in dropped.items() if count) or 'none'

    def __len__(self):
        return len(self.index)

    @property
    def fingerprint(self) -> str:
        """The records this dataset reads, as a resume checks them: their number and a digest of
        their image paths in order (another index, or the same one reordered, differs)."""
        digest = f'{len(self)}:{self.index.content_digest(self.image_key)}'
        return digest if not self.filters else f'{digest} filters={record_filters.describe(self.filters)}'

    def records_moved(self, filters) -> tuple[int, int]:
        """How many records entered and left this dataset against the same index chosen by ``filters``
        (a resume whose filters changed says so)."""
        return record_filters.records_moved(self, filters)

    # ---- reading one sample ---------------------------------------------------------------------
    def data_path_of(self, folder: str | None, relpath: str) -> str:
        """``folder/relpath``, where ``relpath`` comes from the index: one that is absolute or climbs
        out of ``folder`` is a ``SampleError('unsafe-path')`` unless ``allow_outside_paths``."""
        return join_inside(folder, relpath, allow_outside=self.allow_outside_paths)

    def read_image(self, image_file: str) -> bytes:
        """The encoded image at ``image_folder/image_file``."""
        return self.image_files.read(self.data_path_of(self.image_root, image_file))

    def parse_annotation(self, path: str, data: bytes) -> str:
        """The caption in the annotation file ``path`` (``.json``: a ``cap_source`` key; ``.txt``: the text)."""
        return parse_annotation(path, data, self.cap_keys)

    def read_annotation(self, annotation: str) -> str:
        path = self.data_path_of(self.cap_root, annotation)
        return self.parse_annotation(path, self.annotation_files.read(path, max_bytes=MAX_CAPTION_BYTES))

    def load_tensor(self, folder: str, image_file: str) -> torch.Tensor:
        """``<folder>/<image_file>.pt``, as upstream stores precomputed latents and tokens (a file,
        or a member of the latent shards)."""
        path, stored = self._load_stored(folder, image_file)
        if not isinstance(stored, torch.Tensor):
            raise SampleError('bad-tensor', f'{path}: holds a {type(stored).__name__}, not a tensor')
        return stored

    def _load_stored(self, folder: str, image_file: str):
        path = self.data_path_of(folder, image_file + '.pt')
        data = (self.latent_files if folder == self.latent_root else LOCAL_FILES).read(path, max_bytes=MAX_TENSOR_BYTES)
        return path, load_tensor_file(data, path)  # bounded before it inflates, weights only

    def load_latent(self, image_file: str, target: tuple[int, int]) -> dict:
        """The stored latent of ``image_file`` (``image_latents``), checked against the shape its
        folder records for ``target``; a bucketed latent (a dict, see ``latent_store``) adds its
        ``original_size`` and ``crop_coords``."""
        path, stored = self._load_stored(self.latent_root, image_file)
        if isinstance(stored, dict) and self.buckets is not None:
            placement = {key: stored.get(key) for key in ('original_size', 'crop_coords')}
            latent = stored.get('latent')
            if not isinstance(latent, torch.Tensor) or not all(
                    isinstance(v, torch.Tensor) and v.shape == (2,) for v in placement.values()):
                raise SampleError('bad-tensor', f'{path}: a bucketed latent holds a "latent" tensor, "original_size" '
                                                f'and "crop_coords" (2 numbers each); this one holds {sorted(stored)}')
            data = dict(image_latents=latent, **{key: value.long() for key, value in placement.items()})
        elif isinstance(stored, torch.Tensor):
            data = dict(image_latents=stored)
        else:
            raise SampleError('bad-tensor', f'{path}: holds a {type(stored).__name__}, not a tensor'
                              + (' (latents cached with buckets: give the dataset the same buckets)'
                                 if isinstance(stored, dict) else ''))
        self.latent_shapes.check(data['image_latents'], path, *target)
        return data

    @property
    def latent_info_reader(self):
        """The reader of the latent folder's own files (its record, its sizes): beside the shards."""
        return LOCAL_FILES.read if isinstance(self.latent_files, TarMembers) else self.latent_files.read

    def load_latent_shapes(self) -> LatentShapes:
        """The latent shape expected for each image size (``src.datasets.storage.latent_store``)."""
        first = (latent for i in range(min(len(self), 32)) for latent in self._latent_or_none(i))
        return LatentShapes.of_folder(self.latent_root, self.latent_info_reader, self.image_size,
                                      None if self.buckets is None else self.buckets.record(), first)

    def _latent_or_none(self, i: int):
        with contextlib.suppress(SampleError):
            path, stored = self._load_stored(self.latent_root, self.index[i][self.image_key])
            latent = stored.get('latent') if isinstance(stored, dict) else stored
            if isinstance(latent, torch.Tensor):
                yield latent

    def load_image_data(self, image_file: str, rng: random.Random, target: tuple[int, int] | None = None) -> dict:
        """``pixel_values`` (or ``image_latents`` / ``image_tokens``) of ``image_file`` at ``target``
        (height, width: the sample's bucket; default: the one ``prepare_data`` set, else square)."""
        state = self._state()
        if target is not None:
            state.target = target
        if self.image_tokens_folder is not None:
            return dict(image_tokens=self.load_tensor(self.image_tokens_folder, image_file).long())
        if self.latent_root is not None:
            return self.load_latent(image_file, state.target or (self.image_size, self.image_size))
        data = dict(pixel_values=self.load_pixels(image_file, rng))
        if self.buckets is not None:
            self.check_bucket(image_file, state.placement.original_size, state.target)
            data.update(original_size=torch.tensor(state.placement.original_size),
                        crop_coords=torch.tensor(state.placement.crop_coords))
        return data

    def load_pixels(self, image_file: str, rng: random.Random, crop: bool | None = None) -> torch.Tensor:
        """The picture ``image_file`` in [-1, 1]: ``[3, image_size, image_size]``, a random square crop
        (or the whole picture squeezed: ``crop=False``; default: ``crop_image``); with buckets,
        ``[3, height, width]`` of the sample's bucket, covered and cropped by the buckets' crop_mode."""
        state = self._state()
        target = state.target or (self.image_size, self.image_size)
        if self.pixel_shape is not None:  # image_process: the shape follows the picture's
            target, crop = self.pixel_shape.target, self.pixel_shape.crop
        crop_mode = 'random' if self.buckets is None else self.buckets.crop_mode
        pixels, state.placement = load_pixels(
            self.read_image(image_file), self.data_path_of(self.image_root, image_file), target, rng,
            crop_mode=crop_mode, min_image_size=self.min_image_size, max_aspect=self.max_aspect,
            crop=self.crop_image if crop is None else crop, normalise=self.pixel_dtype == 'float32')
        return pixels

    def process_text(self, text: str, rng: random.Random, stored_ids: torch.Tensor | None = None) -> dict:
        """Upstream's prompt: the caption (or, with probability ``unconditional``, CFG) in the template.
        ``stored_ids``: the ids of the caption's prompt when they are stored (``pretokenize``).

        A chat template made for understanding (xtuner's ``qwen_chat``, as Harmon uses it) has no
        GENERATION, CFG or IMG_START_TOKEN: Harmon's own wording is used, with no start token."""
        if self.tokenizer is None:  # the second generation's datasets: the model tokenizes `text`
            return {}
        conditional = rng.uniform(0, 1) >= self.unconditional
        if not conditional:
            if self._cfg_ids is None:
                self._cfg_ids = self._encode(self.prompt_of(None))
            input_ids = self._cfg_ids.clone()
        elif stored_ids is not None:
            input_ids = stored_ids
        else:
            input_ids = self._encode(self.caption_prompt(text))
        if len(input_ids) > self.max_length and conditional and self.truncation == 'caption':
            input_ids = self._fit_caption(self.cut_caption(text))
        return dict(input_ids=input_ids[:self.max_length])

    def caption_prompt(self, caption: str) -> str:
        """The prompt of a record's caption as ``process_text`` makes it (and the stored and
        batch-tokenized ids are made of): the caption stripped (and cut: ``cut_caption``), in the template."""
        return self.prompt_of(self.cut_caption(caption))

    def cut_caption(self, caption: str) -> str:
        """``caption`` stripped, and cut where it is far longer than ``max_length`` tokens can be:
        its prompt's first ``max_length`` ids are those of the whole caption's, and a caption of
        megabytes costs no more than one of kilobytes (``captions.cut_caption``; the bound is
        twice the characters ``max_length`` of the tokenizer's longest tokens can cover)."""
        if not isinstance(self.max_length, int):
            return caption.strip()
        return cut_caption(caption, 2 * self.max_length * self._tokens().longest_token)

    def prompt_of(self, caption: str | None) -> str:
        """The whole prompt text of ``caption`` (None: the unconditional CFG prompt)."""
        template = self.prompt_template
        if caption is None:
            prompt = template.get('CFG', HARMON_CFG)
        else:
            prompt = template.get('GENERATION', HARMON_GENERATION).format(input=caption)
        return template['INSTRUCTION'].format(input=prompt) + (self.image_start_token or '')

    def prompt_length(self, caption: str) -> int:
        """The prompt's length in tokens for ``caption``, as ``max_length`` counts it (the report's);
        a caption far longer than ``max_length`` is cut first (``cut_caption``): still longer."""
        return len(self._encode(self.prompt_of(self.cut_caption(caption))))

    @property
    def decodes_images(self) -> bool:
        """Whether samples hold pixels decoded from the images (else stored latents or tokens)."""
        return self.latent_root is None and self.image_tokens_folder is None

    @property
    def image_start_token(self) -> str | None:
        """IMG_START_TOKEN where the template ends every prompt with it (a cut at ``max_length``
        then loses it first), else None."""
        template = self.prompt_template
        if template.get('IMG_START_TOKEN_FOR_GENERATION', True):
            return template.get('IMG_START_TOKEN') or None
        return None

    def _encode(self, prompt: str) -> torch.Tensor:
        # One array, then the tensor: return_tensors='pt' built a BatchEncoding and a tensor for
        # every field of it, which took as long as the tokenization (bench/bench_sample.py).
        return torch.from_numpy(np.array(self._tokens().one(prompt), np.int64))

    def _tokens(self) -> TokenIds:
        """The tokenizer's calls (``src.datasets.index.token_ids``: the Rust tokenizer's own where
        transformers would only pass the text on), for the tokenizer and kwargs set now."""
        tokens = self._token_ids
        if tokens is None or tokens.tokenizer is not self.tokenizer or tokens.tokenizer_kwargs != self.tokenizer_kwargs:
            tokens = self._token_ids = TokenIds(self.tokenizer, self.tokenizer_kwargs)
        return tokens

    def _fit_caption(self, caption: str) -> torch.Tensor:
        """``truncation='caption'``: the prompt of the longest start of the caption (in tokens) that
        fits in ``max_length``, so the template's end and IMG_START_TOKEN survive (a binary search:
        a few tokenizations, for the rare prompt that is too long)."""
        words = self.tokenizer.encode(caption, add_special_tokens=False)
        best = self._encode(self.prompt_of(''))
        low, high = 1, len(words)
        while low <= high:
            middle = (low + high) // 2
            ids = self._encode(self.prompt_of(self.tokenizer.decode(words[:middle]).strip()))
            if len(ids) <= self.max_length:
                best, low = ids, middle + 1
            else:
                high = middle - 1
        return best

    def prepare_data(self, idx: int) -> dict:
        """Sample ``idx``, or a ``SampleError`` whose message names the index file, record and image."""
        state, rng = self._sample_state(idx)
        record = self.index[idx]
        image_file = record[self.image_key]
        if self._remote:  # its files at once: a sample drawn alone, or as a replacement
            prefetch_records(self, [record])
        try:
            # The caption first: a missing caption is found without decoding the image.
            caption = self.caption_of(record)
            data = self.load_image_data(image_file, rng)
        except SampleError as err:
            raise SampleError(err.reason, f'{self.data_path} sample #{idx} (image {image_file!r}): {err}') from err
        data.update(self.process_text(caption, rng, self._stored_ids(idx)))
        data.update(image_dir=self.image_folder, image_file=image_file, type='text2image')
        data.update(extra_values(record, self.extra_keys))
        if self.gives_text:
            data['text'] = caption
        return data

    @property
    def _reads_cap_source(self) -> bool:
        """Whether every sample's caption comes from ``cap_source`` of an index record: the class
        makes its samples and captions as this one does, over the index (not a subclass's own records)."""
        cls = type(self)
        return not self.has_own_records and all(getattr(cls, name) is getattr(CaptionDataset, name)
                                                for name in ('prepare_data', 'caption_of'))

    @property
    def gives_text(self) -> bool:
        """Whether samples hold their caption as ``text`` (the second generation's datasets do: with
        ``image_process``, or without a tokenizer)."""
        return self.image_process is not None or self.tokenizer is None

    def caption_of(self, record: dict) -> str:
        """The record's caption (``src.datasets.index.captions``); an empty one is a ``SampleError``, or
        with ``empty_captions='keep'`` the empty text that upstream trains on."""
        try:
            return resolve_caption(record, self.cap_keys, self.read_annotation)
        except SampleError as err:
            if err.reason != 'empty-caption' or self.empty_captions == 'skip':
                raise
            return ''

    def _stored_ids(self, idx) -> torch.Tensor | None:
        """The ids of sample ``idx``'s prompt where they are made already: stored (``pretokenize``),
        or tokenized with its batch's (``__getitems__``); None else."""
        if self.prompt_ids is None:
            batch = self._state().batch_ids
            return batch.pop(idx, None) if batch else None
        ids = self.prompt_ids.get(self.index.table_row(idx))
        return None if ids is None else torch.from_numpy(ids.astype(np.int64))

    @functools.cached_property
    def _tokenizes_batches(self) -> bool:
        """Whether a batch's prompts are tokenized together: where the samples' prompts are this
        class's (a subclass that makes its own text, or makes samples its own way, tokenizes them
        itself)."""
        cls = type(self)
        return self.tokenizer is not None and all(getattr(cls, name) is getattr(CaptionDataset, name)
                   for name in ('__getitem__', 'prepare_data', 'process_text', 'caption_prompt', 'prompt_of',
                                'caption_of', '_encode'))

    # ---- failure policy and randomness ----------------------------------------------------------
    def _state(self) -> _ProcessState:
        """This process's state, made on first use: a forked worker must not replay its parent's draws."""
        pid = os.getpid()
        if self._process_state is None or self._process_state.pid != pid:
            worker = get_worker_info()
            base_seed = self.seed if self.seed is not None else torch.initial_seed()
            # The index path too: datasets mixed in one ConcatDataset must not drop captions in step.
            stream = f'{base_seed}/{get_rank()}/{worker.id if worker is not None else "main"}/{self.data_path}'
            self._process_state = _ProcessState(
                pid=pid, rng=random.Random(stream),
                tracker=FailureTracker(self.data_path, self.max_refetch, self.max_failure_ratio))
        return self._process_state

    def _sample_state(self, idx) -> tuple[_ProcessState, random.Random]:
        """This process's state, set for reading sample ``idx`` (its shape), and the sample's
        generator (the process's stream when called outside ``__getitem__``)."""
        state = self._state()
        state.target = self.target_of(idx)
        return state, state.draw_rng or state.rng

    @property
    def failures(self) -> Counter:
        """Samples that could not be used in this process, by reason."""
        return self._state().tracker.failures

    def draw_rng(self, idx) -> random.Random:
        """The random generator of one ``__getitem__`` call (crop, caption dropout, replacements).

        An index that says where it stands in the global sample stream (a ``Draw``, given out by
        the project's samplers and ``ResumableTrainLoop``) gets a generator of its own, keyed on
        (seed, the draw's key: its place in a stream batching does not move, ``draws``): the same
        sample on any number of ranks and workers, resumed or not, and (bucket streams, mmengine's
        samplers) whatever the global batch. A plain index draws from the process's stream."""
        key = getattr(idx, 'key', None)
        if key is None:
            return self._state().rng
        seed = self.seed if self.seed is not None else idx.seed
        return random.Random(f'{seed}/{"/".join(map(str, key))}/{self.data_path}')

    def __getitems__(self, indices: Sequence) -> list:
        """A batch, as torch's DataLoader asks for one: in object storage, the files of all its
        samples are fetched at once (``src.datasets.storage.prefetch``); the prompts whose captions are in
        the index are tokenized one after another (the tokenizer's tables stay in the cache, where
        between two decodes they do not: 0.3 ms a sample less, bench/bench_sample.py); then the
        samples are made in turn. The same samples as ``self[idx]`` one by one."""
        tokenize = self._tokenizes_batches and self.prompt_ids is None
        records = [self.index[idx] for idx in indices] if self._remote or tokenize else None
        if self._remote:
            prefetch_records(self, records + [self.index[i] for i in block_rest(indices, self.read_blocks, len(self))])
        state = self._state()
        if tokenize:
            positions, prompts = inline_prompts(records, self.cap_keys, self.caption_prompt)
            # One prompt at a time: the Rust tokenizer's batch call runs a thread pool, which hung
            # in a forked DataLoader worker after the parent had used it.
            state.batch_ids = {indices[position]: self._encode(prompt) for position, prompt in zip(positions, prompts)}
        try:
            return [self[idx] for idx in indices]
        finally:
            state.batch_ids = None

    @sets_draw_rng
    def __getitem__(self, idx):
        """Sample ``idx``, or, when it cannot be used, a random other one: see ``failure_policy``
        for when drawing stops."""
        state = self._state()
        state.draw_rng = rng = self.draw_rng(idx)
        streak = 0
        while True:
            if self.debug:
                idx = 0
            elif streak:
                idx = self.replacement(idx, rng)
            try:
                sample = self.prepare_data(idx)
            except SampleError as err:
                streak += 1
                state.tracker.failure(err, streak)
                continue
            state.tracker.success()
            return sample
