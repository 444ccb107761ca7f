"""Harmon's image-to-text ``CaptionDataset`` at Harmon's import path, on the project's
``CaptionDataset`` (memory-mapped index, storage readers for files, tar shards and objects, the
failure policy, and randomness keyed on each draw for an exact resume).

Records ``{"image", "annotation"}`` under ``local_folder``; the caption is the ``cap_source`` key of
the annotation json under ``cap_folder`` (``local_folder`` when None), or of the record itself. A
sample: ``pixel_values`` (the picture padded to a square with grey, ``pad_image=True``, or a random
square crop, resized to ``image_size``), the conversation of xtuner's ``template_map_fn`` (the user
turn ``<image>`` and one of the ``caption_prompts``, the assistant turn the caption), its
``input_ids`` with ``image_length`` image placeholders and ``labels`` (``src.datasets.utils.encode_fn``),
``image_dir``, ``image_file``, ``type='image2text'``. Batches: ``collate_func_und``.

One difference, stated: ``max_length`` bounds the text tokens, not the image's placeholders. Upstream
cut the placeholders with the text and then asserted that all of them were there, so a config whose
``image_length`` exceeds its ``max_length`` (Harmon's own image2text.py: 1088 and 512) gave no sample
at all, retrying without end.
"""
from __future__ import annotations

import os
import random

from mmengine.registry import DATASETS

from src.datasets.components import build_component
from src.datasets.errors import SampleError
from src.datasets.sample.image_io import load_square, random_square_box, to_pixel_values
from src.datasets.text2image.caption_datasets import CaptionDataset as _TextToImage
from src.datasets.understanding.caption_conversations import CaptionDatasetUnd  # noqa: F401 - Puffin's, at its path
from src.datasets.understanding.caption_prompts import dense_prompts, short_prompts
from src.datasets.utils import DEFAULT_IMAGE_TOKEN, encode_fn

PAD_COLOUR = (127, 127, 127)


@DATASETS.register_module(name='ImageToTextCaptionDataset')  # 'CaptionDataset' is the text-to-image one
class CaptionDataset(_TextToImage):
    """Harmon's keywords, in Harmon's order; ``CaptionDataset``'s added ones (``seed``, ``tar_index``,
    ...) by name."""

    def __init__(self, data_path, local_folder, image_size, ceph_folder=None, ceph_config=None, tokenizer=None,
                 template_map_fn=None, max_length=2048, min_image_size=80, image_length=256, pad_image=True,
                 brief=False, cap_folder=None, cap_source='caption', **kwargs):
        if template_map_fn is None:
            raise ValueError('the image-to-text CaptionDataset needs template_map_fn, as Harmon configs give it: '
                             'dict(type=template_map_fn_factory, template=prompt_template)')
        if kwargs.get('buckets') is not None:
            raise ValueError('the image-to-text CaptionDataset gives square pictures (padded or cropped, as its '
                             'vision encoder takes them): it takes no buckets')
        import xtuner.dataset.utils  # noqa: F401 - here, once, rather than in every DataLoader worker
        self.template_map_fn = build_component(template_map_fn)
        self.pad_image, self.brief = pad_image, brief
        self.caption_prompts = short_prompts if brief else dense_prompts
        # Harmon's rule: with a ceph_config file and a ceph_folder, images and annotations are objects.
        ceph = ceph_folder is not None and ceph_config is not None and os.path.isfile(os.fspath(ceph_config))
        super().__init__(data_path, image_folder=None if ceph else local_folder, ceph_folder=ceph_folder,
                         ceph_config=ceph_config, tokenizer=tokenizer, prompt_template=template_map_fn['template'],
                         max_length=max_length, min_image_size=min_image_size, image_size=image_size,
                         image_length=image_length, cap_source=cap_source, unconditional=0.0,
                         cap_folder=None if ceph else (local_folder if cap_folder is None else cap_folder), **kwargs)
        self.local_folder = local_folder

    def square_picture(self, image_file: str, rng: random.Random):
        """The picture padded to a square with grey (``pad_image``), or a random square crop of it,
        resized to ``image_size``, in [-1, 1]."""
        from xtuner.dataset.utils import expand2square
        picture = self._read_image(image_file)
        if self.pad_image:
            picture = expand2square(picture, PAD_COLOUR)
            box = (0, 0, *picture.size)
        else:
            box = random_square_box(picture.size, rng)
        return to_pixel_values(load_square(picture, box, self.image_size))

    def conversation_of(self, caption: str, rng: random.Random) -> dict:
        """``conversation``, ``input_ids``, ``labels`` of the caption, asked for with a drawn prompt."""
        if DEFAULT_IMAGE_TOKEN in caption:
            raise SampleError('bad-caption', f'the caption holds {DEFAULT_IMAGE_TOKEN}, the image placeholder')
        example = dict(conversation=[{'input': f'{DEFAULT_IMAGE_TOKEN}\n{rng.choice(self.caption_prompts)}',
                                      'output': self.cut_caption(caption)}])  # megabytes: cut first
        example.update(self.template_map_fn(example))
        # max_length bounds the text: the image's placeholders do not count against it. Upstream cut
        # them too, then asserted that all were there: Harmon's published image2text.py (max_length
        # 512, image_length 1088) could not give a single sample.
        example.update(encode_fn(example, self.tokenizer, self.max_length + self.image_length, self.image_length,
                                 True, True))
        return example

    def prompt_length(self, caption: str) -> int:
        """The conversation's text tokens (``max_length`` leaves the image's placeholders out)."""
        return len(self.conversation_of(caption, random.Random(0))['input_ids']) - self.image_length

    def prepare_data(self, idx, rng=None, prompt_ids=None) -> dict:
        rng = self.sample_rng(idx) if rng is None else rng
        record = self.index[idx]
        image_file = record[self.image_key]
        try:
            caption = self.caption_of(record)  # first: a missing one costs no decode
            data = dict(pixel_values=self.square_picture(image_file, rng))
            data.update(self.conversation_of(caption, rng))
        except SampleError as err:
            raise SampleError(err.reason, f'{self.data_path} sample #{idx} (image {image_file!r}): {err}') from err
        data.update(image_dir=self.local_folder, image_file=image_file, type='image2text')
        return data
