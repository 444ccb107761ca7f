"""CaptionDataset: one text-to-image sample (picture + tokenized prompt) per index record, as a
composition of collaborators with one job each (``src.datasets.sample``):

- ``SampleFiles`` (``files``): the readers and roots of images, annotations and latents;
- ``keep_records`` (``load_index``): which records are kept, and their buckets (``records``);
- ``PictureLoader`` (``pictures``): pixels, latents or image tokens, and their placement;
- ``PromptEncoder`` (``prompts``): template, CFG dropout, truncation, stored and batch ids.

``prepare_data`` is the sample's way: record -> caption -> picture (at its bucket) -> prompt ids ->
sample, or a ``SampleError`` naming the index file, record and image. ``__getitem__``
(``sample_draws``) adds the draw's generator and the failure policy: a sample that cannot be used
is counted, logged and replaced, a bounded number of times. The methods upstream's subclasses
override (``read_image``, ``load_image_data``, ``process_text``, ``caption_prompt``, ``caption_of``,
``load_latent``, ``prepare_data``, ...) stay here, delegating, so that an override takes effect.
"""
from __future__ import annotations

import functools
import random

import numpy as np
import torch
from mmengine.registry import DATASETS
from torch.utils.data import Dataset

from src.datasets.components import build_component
from src.datasets.errors import SampleError
from src.datasets.index import filters as record_filters
from src.datasets.index.captions import ANNOTATION_KEY, caption_keys, check_cap_source, parse_annotation, resolve_caption
from src.datasets.index.extra_keys import check_extra_keys, extra_values
from src.datasets.index.prompt_ids import PromptIds, load_prompt_ids
from src.datasets.index.token_ids import TokenIds
from src.datasets.sample.files import LOCAL_FILES, SampleFiles  # noqa: F401 - LOCAL_FILES: subclasses import it here
from src.datasets.sample.image_process import pixel_shape
from src.datasets.sample.pictures import PictureLoader, first_latents, placement_values
from src.datasets.sample.prompts import PromptEncoder, image_start_token as start_token_of, template_prompt
from src.datasets.sample.records import MAX_ASPECT
from src.datasets.storage.latent_store import LatentShapes
from src.datasets.storage.prefetch import prefetch
from src.datasets.text2image.bucketed import BucketedRecords
from src.datasets.text2image.dataset_options import check_choices, index_sources
from src.datasets.text2image.own_records import OwnRecords, SubclassContract
from src.datasets.text2image.sample_draws import SampleDraws
from src.datasets.text2image.upstream_hooks import UpstreamHooks


@DATASETS.register_module()
class CaptionDataset(SubclassContract, UpstreamHooks, SampleDraws, BucketedRecords, Dataset):
    """Text-to-image samples: ``pixel_values`` (or ``image_latents`` / ``image_tokens``) and ``input_ids``.

    The keywords up to ``unconditional`` are upstream OpenUni's, in its order; the project's own
    follow by name. docs/dataset-options.md says what each does. ``data_list`` is upstream's list
    of records, as a read-only view of the memory-mapped index, or a subclass's own list as it made
    it (``src.datasets.text2image.own_records``).
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

    def __init__(self, data_path, image_folder=None, debug=False, image_processor=None, ceph_folder=None,
                 latents_ceph_folder=None, ceph_config=None, tokenizer=None, prompt_template=None, max_length=128,
                 min_image_size=80, image_size=256, image_length=256, image_tokens_folder=None,
                 image_latents_folder=None, cap_folder=None, cap_source='caption', tokenizer_kwargs=None,
                 unconditional=0.1, *, image_key='image', seed=None, max_refetch=10, max_failure_ratio=0.5,
                 index_cache_dir=None, tar_index=None, train_number_samples=None, truncation='ids',
                 pretokenize=False, allow_outside_paths=False, empty_captions='skip', buckets=None,
                 pixel_dtype='float32', filters=None, extra_keys=None, image_process=None, unit_image_size=32):
        super().__init__()
        check_choices(type(self).__name__, tokenizer, prompt_template, truncation=truncation,
                      empty_captions=empty_captions, pixel_dtype=pixel_dtype)
        self.data_path, self.image_key, self.debug = str(data_path), image_key, debug
        self.image_folder, self.cap_folder, self.cap_source = image_folder, cap_folder, cap_source
        self.cap_keys = caption_keys(cap_source)
        self.image_tokens_folder, self.image_latents_folder = image_tokens_folder, image_latents_folder
        self.ceph_config, self.ceph_folder, self.latents_ceph_folder = ceph_config, ceph_folder, latents_ceph_folder
        self.image_processor, self.tokenizer = build_component(image_processor), build_component(tokenizer)
        self.prompt_template, self.max_length, self.unconditional = prompt_template, max_length, unconditional
        self.tokenizer_kwargs = dict(add_special_tokens=True) if tokenizer_kwargs is None else dict(tokenizer_kwargs)
        self.truncation, self.empty_captions, self.pixel_dtype = truncation, empty_captions, pixel_dtype
        self.min_image_size, self.image_size, self.image_length = min_image_size, image_size, image_length
        self.seed, self.max_refetch, self.max_failure_ratio = seed, max_refetch, max_failure_ratio
        self.index_cache_dir, self.train_number_samples = index_cache_dir, train_number_samples
        self.allow_outside_paths = allow_outside_paths
        sources = index_sources(self.data_path, tar_index, ceph_config, index_cache_dir)
        self.use_ceph, self.index_source = sources.use_ceph, sources.index_source
        self.tar_index, self.remote_tars = sources.tar_index, sources.remote_tars
        self._choose_readers()
        self._set_buckets(buckets)
        self.filters, self.extra_keys = record_filters.normalize(filters), check_extra_keys(extra_keys)
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

    def _prefetch(self, records, ahead: bool = False) -> None:
        """The files of ``records``' samples, fetched together where they are remote (``storage.prefetch``;
        ``ahead``: read after this batch, not waited for)."""
        if self.files.remote:
            prefetch([self.files.of_record(record, self.image_key, self.cap_keys, self.decodes_images)
                      for record in records], ahead=ahead)

    def load_prompt_ids(self) -> PromptIds | None:
        """The stored prompt ids of the whole index (``pretokenize``: built once, then mapped), or
        None where they cannot be stored."""
        if isinstance(self.index, OwnRecords) or self.tokenizer is None:
            return None
        return load_prompt_ids(self.index, self.cap_keys, self.caption_prompt, self.tokenizer,
                               self.tokenizer_kwargs, self.prompt_template, self._encode)

    def __len__(self):
        return len(self.index)

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
