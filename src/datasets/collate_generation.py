"""The second generation's batches (deepgen, Puffin, UniPic-1), whose models take each picture at
its own shape and tokenize the captions themselves: pictures and texts as lists, nothing padded.

- deepgen's ``collate_func_gen_txt_dynamic`` (``pixel_values``, ``texts``) and
  ``collate_func_img2img_txt_dynamic`` (with ``pixel_values_src``: a list of source pictures per
  sample);
- Puffin's ``CollateFuncGen(data_type)`` (``pixel_values``, ``texts``; with ``cam_values`` for
  'cam2image', and ``pixel_values_init`` too for 'image2image', a list per sample) and
  ``CollateFuncUnd(data_type)`` (``conversations``; with ``pixel_values`` for 'image2text').

The functions read the samples without changing them (the forks pop their keys). All are importable
from ``src.datasets.collate_functions``, where the forks' configs name them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

GEN_TYPES = ('text2image', 'cam2image', 'image2image')
UND_TYPES = ('image2text', 'text2text')


def _as_list(value) -> list:
    """One tensor as a list of one (a sample with a single reference), a list as it is."""
    return [value] if isinstance(value, torch.Tensor) else list(value)


def collate_func_gen_txt_dynamic(instances: Sequence[Mapping]) -> dict:
    """deepgen's text-to-image batch: ``{'data': {'pixel_values': [...], 'texts': [...]}, 'data_samples': None}``."""
    return {'data': {'pixel_values': [sample['pixel_values'] for sample in instances],
                     'texts': [sample['text'] for sample in instances]},
            'data_samples': None}


def collate_func_img2img_txt_dynamic(instances: Sequence[Mapping]) -> dict:
    """deepgen's editing batch: ``pixel_values``, ``pixel_values_src`` (a list of pictures per sample)
    and ``texts``, as lists."""
    return {'data': {'pixel_values': [sample['pixel_values'] for sample in instances],
                     'pixel_values_src': [_as_list(sample['pixel_values_src']) for sample in instances],
                     'texts': [sample['text'] for sample in instances]},
            'data_samples': None}


class _CollateClass:
    """A collate class built with its options, then called on batches (Puffin's runner and
    ``CollateConcat``), or called at once by mmengine's ``partial(cls, **options)(batch)``, which
    then returns the batch itself."""

    def __new__(cls, *batch, **options):
        if batch:
            return cls(**options)(batch[0])
        return super().__new__(cls)


class CollateFuncGen(_CollateClass):
    """Puffin's generation batch for samples of ``data_type`` ('text2image', 'cam2image', 'image2image')."""

    def __init__(self, data_type: str = 'text2image'):
        if data_type not in GEN_TYPES:
            raise ValueError(f'CollateFuncGen: data_type={data_type!r}, one of {GEN_TYPES}')
        self.data_type = data_type

    def __call__(self, instances: Sequence[Mapping]) -> dict:
        data = {'pixel_values': [sample['pixel_values'] for sample in instances],
                'texts': [sample['text'] for sample in instances]}
        if self.data_type != 'text2image':
            data['cam_values'] = [_as_list(sample['cam_values']) for sample in instances]
        if self.data_type == 'image2image':
            data['pixel_values_init'] = [_as_list(sample['pixel_values_init']) for sample in instances]
        return {'data': data, 'data_samples': None}


class CollateFuncUnd(_CollateClass):
    """Puffin's understanding batch for samples of ``data_type`` ('image2text', 'text2text')."""

    def __init__(self, data_type: str = 'image2text'):
        if data_type not in UND_TYPES:
            raise ValueError(f'CollateFuncUnd: data_type={data_type!r}, one of {UND_TYPES}')
        self.data_type = data_type

    def __call__(self, instances: Sequence[Mapping]) -> dict:
        data = {'conversations': [sample['conversation'] for sample in instances]}
        if self.data_type == 'image2text':
            data['pixel_values'] = [sample['pixel_values'] for sample in instances]
        return {'data': data, 'data_samples': None}
