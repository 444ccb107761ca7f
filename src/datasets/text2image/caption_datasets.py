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

import functools
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.registry import DATASETS
from torch.utils.data import Dataset, get_worker_info

from src.datasets.index.captions import ANNOTATION_KEY, caption_keys, check_cap_source, parse_annotation, resolve_caption
from src.datasets.components import build_component
from src.datasets.errors import SampleError
from src.datasets.index.extra_keys import check_extra_keys, extra_values
from src.datasets.failure_policy import FailureTracker
from src.datasets.sample.records import MAX_ASPECT, PictureSizes, RecordRules, keep_records
from src.datasets.sample.pictures import PIXEL_DTYPES, PictureLoader, first_latents, placement_values
from src.datasets.sample.image_process import pixel_shape
from src.datasets.index import filters as record_filters
from src.datasets.storage.latent_store import LatentShapes
from src.datasets.storage.object_store import ObjectTarMembers, fetch_to_cache, is_object_url
from src.datasets.storage.prefetch import prefetch
from src.datasets.sample.files import LOCAL_FILES, SampleFiles  # noqa: F401 - LOCAL_FILES: subclasses import it here
from src.datasets.index.prompt_ids import PromptIds, load_prompt_ids
from src.datasets.index.sample_index import SampleIndex
from src.datasets.storage.tar_index import TarMemberIndex
from src.datasets.text2image.bucketed import BucketedRecords
from src.datasets.text2image.own_records import OwnRecords, SubclassContract
from src.datasets.text2image.upstream_hooks import UpstreamHooks, current_draw, make_sample, sets_draw_rng
from src.datasets.index.token_ids import TokenIds
from src.datasets.sample.prompts import TRUNCATIONS, PromptEncoder, image_start_token as start_token_of, template_prompt

EMPTY_CAPTIONS = ('skip', 'keep')

@dataclass
class _ProcessState:
    """What each process (main, every DataLoader worker) draws and counts on its own: ``rng``, the
    process's stream (plain indices, upstream's ``_retry``), and its failures."""
    pid: int
    rng: random.Random
    tracker: FailureTracker


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
        self.allow_outside_paths = allow_outside_paths
        self._choose_readers()
        self.train_number_samples = train_number_samples
        if truncation not in TRUNCATIONS:
            raise ValueError(f'truncation={truncation!r}: one of {TRUNCATIONS}')
        self.truncation = truncation
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
        self.files.check_folders(type(self).__name__, self.image_tokens_folder, self.decodes_images)
        self.index = self.load_index()
        if len(self.index) and self._reads_cap_source:  # a typo fails here, at once
            check_cap_source(self.index.columns, self.cap_keys, f'{type(self).__name__} {self.data_path}')
        self.latent_shapes = self.load_latent_shapes() if self.latent_root is not None else None
        self.prompt_ids = self.load_prompt_ids() if pretokenize else None
        self._process_state = None

    # ---- the sample's files: src.datasets.sample.files ------------------------------------------
    def _choose_readers(self):
        """Where images, annotations and latents are read from, chosen once (``SampleFiles``)."""
        self.files = SampleFiles(
            image_folder=self.image_folder, cap_folder=self.cap_folder, image_latents_folder=self.image_latents_folder,
            ceph_folder=self.ceph_folder, latents_ceph_folder=self.latents_ceph_folder, ceph_config=self.ceph_config,
            use_ceph=self.use_ceph, tar_index=self.tar_index, remote_tars=self.remote_tars,
            allow_outside_paths=self.allow_outside_paths)

    ceph_files = property(lambda self: self.files.ceph_files)
    image_files = property(lambda self: self.files.image_files)
    image_root = property(lambda self: self.files.image_root)
    annotation_files = property(lambda self: self.files.annotation_files)
    cap_root = property(lambda self: self.files.cap_root)
    latent_files = property(lambda self: self.files.latent_files)
    latent_root = property(lambda self: self.files.latent_root)
    latent_info_reader = property(lambda self: self.files.latent_info_reader)

    def _prefetch(self, records) -> None:
        """The files of ``records``' samples, fetched together where they are remote (``storage.prefetch``)."""
        if self.files.remote:
            prefetch([self.files.of_record(record, self.image_key, self.cap_keys, self.decodes_images)
                      for record in records])

    # ---- index ----------------------------------------------------------------------------------
    # ---- the records: src.datasets.sample.records ----------------------------------------------
    def load_index(self) -> SampleIndex:
        """The index (``_load_data``), without the records that cannot be used; each kind of drop is
        logged. Which records are kept is decided once per index cache and options, then mapped."""
        self._load_data(self.index_source)
        if not self.has_own_records and 'index' not in self.__dict__:
            self.data_list = []  # a subclass's _load_data that loads nothing: its records come later
        if self.has_own_records:  # a subclass's own data_list: its records as it made them
            return self.own_index()
        kept = keep_records(self.record_rules, self.index, self.picture_sizes, self.cap_keys, self.caption_of)
        self.bucket_ids, self.funnel = kept.bucket_ids, kept.funnel
        return kept.index

    @property
    def record_rules(self) -> RecordRules:
        """What decides which records are kept, besides the index itself."""
        cls = type(self)
        return RecordRules(self.data_path, f'{cls.__module__}.{cls.__qualname__}', self.image_key,
                           tuple(self.required_keys), tuple(self.path_keys), self.allow_outside_paths,
                           self.min_image_size, self.train_number_samples, self.filters, self.bucket_table)

    @property
    def picture_sizes(self) -> PictureSizes:
        """Where the records' picture sizes come from (buckets, size filters)."""
        reachable = self.decodes_images or self.image_root is not None or self.ceph_files is not None
        return PictureSizes(self.data_path, self.image_key, self.read_image if reachable else None,
                            self.latent_info_reader, self.latent_root)

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
        return self.files.path(folder, relpath)

    def read_image(self, image_file: str) -> bytes:
        """The encoded image at ``image_folder/image_file``."""
        return self.files.read_image(image_file)

    def parse_annotation(self, path: str, data: bytes) -> str:
        """The caption in the annotation file ``path`` (``.json``: a ``cap_source`` key; ``.txt``: the text)."""
        return parse_annotation(path, data, self.cap_keys)

    def read_annotation(self, annotation: str) -> str:
        return self.parse_annotation(*self.files.read_annotation(annotation))

    def load_tensor(self, folder: str, image_file: str) -> torch.Tensor:
        """``<folder>/<image_file>.pt``, as upstream stores precomputed latents and tokens (a file,
        or a member of the latent shards)."""
        return self.files.load_tensor(folder, image_file)

    def _load_stored(self, folder: str, image_file: str):
        return self.files.load_stored(folder, image_file)

    # ---- the picture: src.datasets.sample.pictures --------------------------------------------
    @property
    def pictures(self) -> PictureLoader:
        """The picture loader of the options set now."""
        return PictureLoader(self.read_image, self.files, self.pixel_shape, self.bucket_table.crop_mode,
                             self.min_image_size, self.max_aspect, self.pixel_dtype)

    def load_latent(self, image_file: str, target: tuple[int, int]) -> dict:
        """The stored latent of ``image_file`` (``image_latents``), checked against the shape its
        folder records for ``target``; with buckets, its ``original_size`` and ``crop_coords`` too."""
        return self.pictures.latent(image_file, target, self.latent_shapes, self.bucket_table.placed)

    def load_latent_shapes(self) -> LatentShapes:
        """The latent shape expected for each image size (``src.datasets.storage.latent_store``)."""
        first = first_latents(self.files, (self.index[i][self.image_key] for i in range(min(len(self), 32))))
        return LatentShapes.of_folder(self.latent_root, self.latent_info_reader, self.image_size,
                                      self.bucket_table.record(), first)

    def load_image_data(self, image_file: str, rng: random.Random, target: tuple[int, int] | None = None) -> dict:
        """``pixel_values`` (or ``image_latents`` / ``image_tokens``) of ``image_file`` at ``target``
        (height, width: the sample's bucket; None: ``image_size`` square, its bucket unchecked)."""
        shape = target or (self.image_size, self.image_size)
        if self.image_tokens_folder is not None:
            return self.pictures.tokens(self.image_tokens_folder, image_file)
        if self.latent_root is not None:
            return self.load_latent(image_file, shape)
        pixels, placement = self.pictures.pixels(image_file, rng, shape, self.crop_image)
        data = dict(pixel_values=pixels)
        if self.bucket_table.placed:  # micro-conditioning: the square table's samples are upstream's
            self.check_bucket(image_file, placement.original_size, target)
            data.update(placement_values(placement))
        return data

    def load_pixels(self, image_file: str, rng: random.Random, crop: bool | None = None,
                    target: tuple[int, int] | None = None) -> torch.Tensor:
        """The picture ``image_file`` in [-1, 1]: ``[3, *target]`` (default: ``image_size`` square),
        covered and cropped (or the whole picture squeezed: ``crop=False``; default: ``crop_image``)."""
        shape = target or (self.image_size, self.image_size)
        return self.pictures.pixels(image_file, rng, shape, self.crop_image if crop is None else crop)[0]

    # ---- the prompt: src.datasets.sample.prompts ------------------------------------------------
    @property
    def prompts(self) -> PromptEncoder:
        """The prompt encoder of the tokenizer and prompt options set now."""
        options = (self.tokenizer, self.tokenizer_kwargs, self.max_length, self.unconditional, self.truncation)
        encoder = self.__dict__.get('_prompts')
        if encoder is None or not encoder.made_for(*options):
            encoder = self.__dict__['_prompts'] = PromptEncoder(*options)
        return encoder

    def process_text(self, text: str, rng: random.Random, stored_ids: torch.Tensor | None = None) -> dict:
        """Upstream's prompt: the caption (or, with probability ``unconditional``, CFG) in the template.
        ``stored_ids``: the ids of the caption's prompt when they are made already."""
        if self.tokenizer is None:  # the second generation's datasets: the model tokenizes `text`
            return {}
        return self.prompts.input_ids(text, rng, stored_ids, self.caption_prompt, self.prompt_of)

    def caption_prompt(self, caption: str) -> str:
        """The prompt of a record's caption as ``process_text`` makes it (and the stored and
        batch-tokenized ids are made of): the caption stripped (and cut: ``cut_caption``), in the template."""
        return self.prompt_of(self.cut_caption(caption))

    def cut_caption(self, caption: str) -> str:
        """``caption`` stripped, and cut where it is far longer than ``max_length`` tokens can be."""
        return self.prompts.cut(caption)

    def prompt_of(self, caption: str | None) -> str:
        """The whole prompt text of ``caption`` (None: the unconditional CFG prompt)."""
        return template_prompt(self.prompt_template, caption)

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
        """IMG_START_TOKEN where the template ends every prompt with it, else None."""
        return start_token_of(self.prompt_template)

    def _encode(self, prompt: str) -> torch.Tensor:
        return self.prompts.encode(prompt)

    def _tokens(self) -> TokenIds:
        return self.prompts.tokens()

    def _fit_caption(self, caption: str) -> torch.Tensor:
        return self.prompts.fit_caption(caption, self.prompt_of)

    def prepare_data(self, idx: int, rng: random.Random | None = None, prompt_ids: torch.Tensor | None = None) -> dict:
        """Sample ``idx``, or a ``SampleError`` whose message names the index file, record and image:
        record -> caption -> picture (at the sample's bucket) -> prompt ids -> sample. ``rng``: the
        sample's generator (default: ``sample_rng``); ``prompt_ids``: its prompt's ids where its
        batch made them."""
        rng = self.sample_rng(idx) if rng is None else rng
        record = self.index[idx]
        image_file = record[self.image_key]
        self._prefetch([record])  # its files at once: a sample drawn alone, or as a replacement
        try:
            # The caption first: a missing caption is found without decoding the image.
            caption = self.caption_of(record)
            data = self.load_image_data(image_file, rng, self.target_of(idx))
        except SampleError as err:
            raise SampleError(err.reason, f'{self.data_path} sample #{idx} (image {image_file!r}): {err}') from err
        data.update(self.process_text(caption, rng, self._stored_ids(idx, prompt_ids)))
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

    def _stored_ids(self, idx, batch_ids: torch.Tensor | None = None) -> torch.Tensor | None:
        """The ids of sample ``idx``'s prompt where they are made already: stored (``pretokenize``),
        or tokenized with its batch's (``batch_ids``, from ``__getitems__``); None else."""
        if self.prompt_ids is None:
            return batch_ids
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

    def sample_rng(self, idx) -> random.Random:
        """The generator of sample ``idx`` where its caller gives none: the draw an upstream-style
        call runs under (``upstream_hooks``), else ``draw_rng(idx)``."""
        rng = current_draw()
        return self.draw_rng(idx) if rng is None else rng

    def __getitems__(self, indices: Sequence) -> list:
        """A batch, as torch's DataLoader asks for one: in object storage, the files of all its
        samples are fetched at once (``src.datasets.storage.prefetch``); the prompts whose captions are in
        the index are tokenized one after another (``PromptEncoder.batch_ids``), each handed to its
        sample; then the samples are made in turn. The same samples as ``self[idx]`` one by one."""
        tokenize = self._tokenizes_batches and self.prompt_ids is None
        records = [self.index[idx] for idx in indices] if self.files.remote or tokenize else None
        if self.files.remote:
            self._prefetch(records)
        if not tokenize:
            return [self[idx] for idx in indices]
        ids = self.prompts.batch_ids(records, self.cap_keys, self.caption_prompt)
        return [self._drawn(idx, prompt_ids) for idx, prompt_ids in zip(indices, ids)]

    @sets_draw_rng
    def __getitem__(self, idx):
        """Sample ``idx``, or, when it cannot be used, a random other one: see ``failure_policy``
        for when drawing stops."""
        return self._drawn(idx)

    def _drawn(self, idx, prompt_ids: torch.Tensor | None = None) -> dict:
        """Sample ``idx`` (its prompt's ids, where its batch made them) or its replacements, under
        the failure policy; each made with the draw's generator."""
        tracker = self._state().tracker
        rng = self.draw_rng(idx)
        streak = 0
        while True:
            if self.debug or streak:
                idx, prompt_ids = 0 if self.debug else self.replacement(idx, rng), None
            try:
                sample = make_sample(self.prepare_data, idx, rng, prompt_ids)
            except SampleError as err:
                streak += 1
                tracker.failure(err, streak)
                continue
            tracker.success()
            return sample
