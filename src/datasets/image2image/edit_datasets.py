"""OpenUni's image editing datasets at OpenUni's import path, on the project's ``CaptionDataset``
(memory-mapped index, storage readers for files, tar shards and objects, the failure policy, and
randomness keyed on each draw for an exact resume).

- ``ImageEditDataset``: records ``{"source_image", "target_image", "annotation"[, "image"]}``; the
  instruction is the ``cap_source`` key of the annotation json (or of the record itself); both
  pictures are squeezed whole to ``image_size`` (upstream resizes without cropping).
- ``ReconstructDataset``: records ``{"image", ...}``; the picture, a random square crop, is both the
  source and the target, and the instruction is "Keep the image as it is.".

deepgen's ``ImageEditDataset`` (its configs give ``image_process``): records ``{"input_image": [paths],
"output_image", "instruction"}`` (the first source is read), both pictures shaped by ``image_process``,
the instruction as ``text``; without a tokenizer, no ``input_ids`` (batches:
``collate_func_img2img_txt_dynamic``).

A sample: ``pixel_values_src``, ``pixel_values``, ``input_ids`` of
``INSTRUCTION.format(input=IMG_START + IMG_CONTEXT x image_length + IMG_END + "\\n" + instruction)``
followed by ``IMG_START_TOKEN`` (unless ``IMG_START_TOKEN_FOR_GENERATION`` is False), never dropped
for CFG nor cut at ``max_length`` (as upstream); ``image_dir``, ``image_file``,
``type='image2image'``. Batches: ``collate_func_img2img``.
"""
from __future__ import annotations

import functools
import random

import torch
from mmengine.registry import DATASETS

from src.datasets.errors import SampleError
from src.datasets.index.extra_keys import extra_values
from src.datasets.text2image.caption_datasets import CaptionDataset

RECONSTRUCT_INSTRUCTION = 'Keep the image as it is.'
DEEPGEN_SOURCES, DEEPGEN_TARGET, DEEPGEN_INSTRUCTION = 'input_image', 'output_image', 'instruction'


@DATASETS.register_module()
class ImageEditDataset(CaptionDataset):
    """OpenUni's ``ImageEditDataset``, with ``CaptionDataset``'s keywords."""

    path_keys = ('annotation', 'source_image', 'target_image')
    image_keys = ('source_image', 'target_image')  # the pictures a sample reads, and what each becomes
    sample_type = 'image2image'
    cuts_prompts = False

    def prompt_of(self, caption: str | None) -> str:
        template = self.prompt_template
        image_tokens = (template['IMG_START_TOKEN'] + template['IMG_CONTEXT_TOKEN'] * self.image_length
                        + template['IMG_END_TOKEN'])
        return template['INSTRUCTION'].format(input=f'{image_tokens}\n{caption}') + (self.image_start_token or '')

    def caption_prompt(self, caption: str) -> str:
        """The instruction in the template as it is, unstripped (as upstream; the stored ids too)."""
        return self.prompt_of(caption)

    def process_text(self, text: str, rng: random.Random, stored_ids: torch.Tensor | None = None) -> dict:
        """The editing prompt's ids: never the CFG prompt, never cut (as upstream)."""
        if self.tokenizer is None:
            return {}
        return dict(input_ids=stored_ids if stored_ids is not None else self._encode(self.caption_prompt(text)))

    @property
    def deepgen_records(self) -> bool:
        """Whether the records are deepgen's (see the module): with its ``image_process``."""
        return self.image_process is not None

    def instruction_of(self, record: dict) -> str:
        if self.deepgen_records:
            return self._required(record, DEEPGEN_INSTRUCTION)
        return self.caption_of(record)

    def load_pictures(self, record: dict, rng: random.Random, shape: tuple[int, int] | None = None) -> dict:
        """``pixel_values_src`` and ``pixel_values``: the source and the target, squeezed whole to
        ``shape`` (or as ``image_process`` shapes them)."""
        if self.deepgen_records:
            source = self._required(record, DEEPGEN_SOURCES, first_of_list=True)
            target = self._required(record, DEEPGEN_TARGET)
        else:
            source, target = (self._required(record, key) for key in self.image_keys)
        return dict(pixel_values_src=self.load_pixels(source, rng, crop=False, target=shape),
                    pixel_values=self.load_pixels(target, rng, crop=False, target=shape))

    @staticmethod
    def _required(record: dict, key: str, first_of_list: bool = False) -> str:
        """``record[key]``, text; with ``first_of_list``, the first of a list too (deepgen's sources)."""
        value = record.get(key)
        if first_of_list and isinstance(value, list) and value:
            value = value[0]
        if not isinstance(value, str):
            raise SampleError('bad-record', f'the record has no {key!r} text; its keys are {sorted(record)}')
        return value

    def prepare_data(self, idx, rng=None, prompt_ids=None) -> dict:
        rng = self.sample_rng(idx) if rng is None else rng
        record = self.index[idx]
        image_file = record.get(self.image_key) or record.get(
            DEEPGEN_TARGET if self.deepgen_records else self.image_keys[-1])
        try:
            instruction = self.instruction_of(record)  # first: a missing one costs no decode
            data = self.load_pictures(record, rng, self.target_of(idx))
        except SampleError as err:
            raise SampleError(err.reason, f'{self.data_path} sample #{idx} (image {image_file!r}): {err}') from err
        data.update(self.process_text(instruction, rng, self._stored_ids(idx, prompt_ids)))
        data.update(image_dir=self.image_folder, image_file=image_file, type=self.sample_type)
        data.update(extra_values(record, self.extra_keys))
        if self.gives_text:
            data['text'] = instruction
        return data

    @property
    def required_keys(self) -> tuple[str, ...]:
        return (DEEPGEN_TARGET,) if self.deepgen_records else self.image_keys


@DATASETS.register_module()
class ReconstructDataset(ImageEditDataset):
    """OpenUni's ``ReconstructDataset``: the picture (a random square crop) is its own target."""

    path_keys = ('annotation',)
    image_keys = ()

    deepgen_records = False  # deepgen's ReconstructDataset reads OpenUni's records

    def instruction_of(self, record: dict) -> str:
        return RECONSTRUCT_INSTRUCTION

    @functools.cached_property
    def _instruction_ids(self) -> torch.Tensor:
        return self._encode(self.prompt_of(RECONSTRUCT_INSTRUCTION))

    def process_text(self, text: str, rng: random.Random, stored_ids: torch.Tensor | None = None) -> dict:
        """The one instruction's ids, made once per process (stored captions' ids do not apply)."""
        if self.tokenizer is None:
            return {}
        return dict(input_ids=self._instruction_ids.clone())

    def load_pictures(self, record: dict, rng: random.Random, shape: tuple[int, int] | None = None) -> dict:
        pixel_values = self.load_pixels(record[self.image_key], rng, target=shape)  # cropped as CaptionDataset crops
        return dict(pixel_values_src=pixel_values, pixel_values=pixel_values)

    @property
    def required_keys(self) -> tuple[str, ...]:
        return (self.image_key,)
