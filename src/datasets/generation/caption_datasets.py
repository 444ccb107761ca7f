"""Puffin's ``CaptionDatasetGen`` at Puffin's import path, on Puffin's base (``src.datasets.base_datasets``).

``data_type`` chooses the sample (records ``{"image", "annotation"[, "camera", "image_init"]}``):
- ``'text2image'``: ``pixel_values``, ``text`` (the caption), ``image_dir``, ``image_file``, ``type``;
- ``'cam2image'``: and ``cam_values``, the camera map ``<cam_folder>/<camera>`` divided by pi / 2;
- ``'image2image'``: and ``pixel_values_init``, the first view ``<image_folder_init>/<image_init>``;
  with ``mixed_motion``, a draw of probability ``mixed_prob`` keeps only the caption's camera part
  (from "The camera parameters" on), so that the model learns motion alone too.
With ``cap_folder_cot``, the caption is followed by the reasoning of the same annotation there (the
text inside ``<think>...</think>``). With a tokenizer, ``input_ids`` of Puffin's prompt: the image's
placeholders, then the caption (or CFG) in the template, then ``IMG_START_TOKEN``.
Batches: ``CollateFuncGen(data_type=...)``. Draws are the sample's own (an exact resume holds).
"""
from __future__ import annotations

import math
import random
import re

import torch
from mmengine.registry import DATASETS

from src.datasets.errors import SampleError
from src.datasets.sample.image_io import load_pixels
from src.datasets.base_datasets import CaptionDataset, thinking_of
from src.datasets.text2image.caption_datasets import LOCAL_FILES

DATA_TYPES = ('text2image', 'cam2image', 'image2image')
CAMERA_PART = re.compile(r'(The camera parameters.*)$')
CAMERA_SCALE = math.pi / 2


@DATASETS.register_module()
class CaptionDatasetGen(CaptionDataset):
    """Puffin's keywords: ``data_type``, ``cam_folder``, ``cap_folder_cot``, ``image_folder_init``,
    ``mixed_motion``, ``mixed_prob``, then the base's."""

    def __init__(self, data_type='text2image', cam_folder=None, cap_folder_cot=None, image_folder_init=None,
                 mixed_motion=False, mixed_prob=0.5, **kwargs):
        if data_type not in DATA_TYPES:
            raise ValueError(f'CaptionDatasetGen: data_type={data_type!r}, one of {DATA_TYPES}')
        for needed, folder in (('cam_folder', cam_folder if data_type != 'text2image' else ''),
                               ('image_folder_init', image_folder_init if data_type == 'image2image' else '')):
            if folder is None:
                raise ValueError(f'CaptionDatasetGen: data_type={data_type!r} reads {needed}, which is not given')
        self.data_type, self.cam_folder, self.cap_folder_cot = data_type, cam_folder, cap_folder_cot
        self.image_folder_init, self.mixed_motion, self.mixed_prob = image_folder_init, mixed_motion, mixed_prob
        super().__init__(**kwargs)

    @property
    def gives_text(self) -> bool:
        return True

    def prompt_of(self, caption: str | None) -> str:
        template = self.prompt_template
        prompt = template['CFG'] if caption is None else template['GENERATION'].format(input=caption)
        image_tokens = (template['IMG_START_TOKEN'] + template['IMG_CONTEXT_TOKEN'] * self.image_length
                        + template['IMG_END_TOKEN'])
        return template['INSTRUCTION'].format(input=f'{image_tokens}\n{prompt}') + template['IMG_START_TOKEN']

    def process_text(self, text: str, rng: random.Random, stored_ids: torch.Tensor | None = None) -> dict:
        """Puffin's prompt ids (not cut at ``max_length``, as Puffin), or nothing without a tokenizer."""
        if self.tokenizer is None:
            return {}
        conditional = rng.uniform(0, 1) >= self.unconditional
        return dict(input_ids=self._encode(self.prompt_of(text.strip() if conditional else None)))

    def pixels_in(self, folder: str, image_file: str, rng: random.Random) -> torch.Tensor:
        """The picture ``<folder>/<image_file>`` as ``image_process`` shapes it (a first view)."""
        name = self.data_path_of(folder, image_file)
        shape = self.pixel_shape
        return load_pixels(LOCAL_FILES.read(name), name, shape.target, rng, min_image_size=self.min_image_size,
                           max_aspect=self.max_aspect, crop=shape.crop)[0]

    def camera_of(self, record: dict) -> torch.Tensor:
        return self.read_tensor_in(self.cam_folder, self._path(record, 'camera')) / CAMERA_SCALE

    def prepare_data(self, idx, rng=None, prompt_ids=None) -> dict:
        rng = self.sample_rng(idx) if rng is None else rng
        record = self.index[idx]
        image_file = record[self.image_key]
        try:
            caption = self.caption_of(record)
            if self.cap_folder_cot is not None:
                caption = caption + ' ' + thinking_of(self.caption_in(self.cap_folder_cot, self.annotation_of(record)))
            data = self.process_text(caption, rng)  # the whole caption, also where mixed_motion cuts `text`
            data['pixel_values'] = self.load_pixels(image_file, rng)
            if self.data_type != 'text2image':
                data['cam_values'] = self.camera_of(record)
            if self.data_type == 'image2image':
                first_view = self._path(record, 'image_init')
                data['pixel_values_init'] = self.pixels_in(self.image_folder_init, first_view, rng)
                if self.mixed_motion and rng.random() < self.mixed_prob:
                    found = CAMERA_PART.search(caption)
                    caption = found.group(1).strip() if found else caption
        except SampleError as err:
            raise SampleError(err.reason, f'{self.data_path} sample #{idx} (image {image_file!r}): {err}') from err
        data.update(image_dir=self.image_folder, image_file=image_file, type=self.data_type, text=caption)
        return data
