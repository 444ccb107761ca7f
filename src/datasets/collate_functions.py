"""Batch collation for text-to-image samples: images stacked, prompts right-padded with a mask; VGT's
per-batch resolutions and Harmon's per-source ``CollateConcat`` as those projects use them."""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from functools import partial

import torch
from torch.utils.data import default_collate

# The second generation's (deepgen, Puffin), at the path their configs import them from.
from src.datasets.collate_generation import (CollateFuncGen, CollateFuncUnd,  # noqa: F401
                                             collate_func_gen_txt_dynamic, collate_func_img2img_txt_dynamic)
from src.datasets.components import resolve_type
from src.datasets.index.extra_keys import collate_extras
from src.datasets.sample.resolution import fit_to_resolution

DEFAULT_PAD_INDEX = 0  # xtuner's DEFAULT_PAD_TOKEN_INDEX, without importing xtuner
IGNORE_INDEX = -100  # xtuner's, for labels
VGT_DEFAULT_RESOLUTION = (512, 512)  # (width, height), VGT's when the config gives none
PLACEMENT_KEYS = ('original_size', 'crop_coords')  # [B, 2] each: (height, width) and (top, left)


def pad_input_ids(input_ids: Sequence, pad_index: int = DEFAULT_PAD_INDEX,
                  side: str = 'right') -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` (1-D tensors or lists) padded to ``[B, L]`` int64 on ``side`` ('right', or
    'left' as upstream pads image editing prompts), and the bool mask of real ids."""
    rows = [torch.as_tensor(ids, dtype=torch.long) for ids in input_ids]
    lengths = torch.tensor([len(row) for row in rows])
    if side == 'left':
        rows = [row.flip(0) for row in rows]
    padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_index)
    attention_mask = torch.arange(padded.shape[1]) < lengths[:, None]
    if side == 'left':
        padded, attention_mask = padded.flip(1), attention_mask.flip(1)
    return padded, attention_mask


def stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, into shared memory when called in a DataLoader worker (torch's
    ``default_collate`` does it so): the batch then reaches the main process as it is. Stacked into
    private memory, a batch of pixels is copied into shared memory a second time when the worker
    sends it (bench/RESULTS.md, "The batch handoff")."""
    return default_collate(list(tensors))


def collate_image_and_prompt(instances: Sequence[Mapping], image_key: str,
                             pad_index: int = DEFAULT_PAD_INDEX) -> dict:
    """``{'data': {image_key: stacked, 'input_ids', 'attention_mask'}, 'data_samples': None}``.

    Reads the instances without changing them: a caller may still hold on to its samples.
    """
    input_ids, attention_mask = pad_input_ids([sample['input_ids'] for sample in instances], pad_index)
    images = [sample[image_key] for sample in instances]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(f'a batch of {image_key} of {len(shapes)} shapes ({sorted(shapes)}): samples of '
                         'aspect-ratio buckets are batched by BucketSampler (one bucket a batch)')
    data = {image_key: stack(images), 'input_ids': input_ids, 'attention_mask': attention_mask}
    for key in PLACEMENT_KEYS:  # buckets: where each picture came from (SDXL-style conditioning)
        if key in instances[0]:
            data[key] = torch.stack([sample[key] for sample in instances])
    data.update(collate_extras(instances))  # extra_keys: index columns asked for (scores as conditioning)
    return {'data': data, 'data_samples': None}


def pick_resolution(resolutions, resolutions_ratio=None, rng: random.Random | None = None) -> tuple[int, int]:
    """VGT's batch resolution: ``resolutions`` as a (width, height) pair, or one of a list of them,
    drawn with the weights ``resolutions_ratio`` (equal weights when None)."""
    if resolutions is None:
        return VGT_DEFAULT_RESOLUTION
    if len(resolutions) == 2 and all(isinstance(side, int) for side in resolutions):
        return tuple(resolutions)
    choices = [tuple(resolution) for resolution in resolutions]
    if resolutions_ratio is not None and len(resolutions_ratio) != len(choices):
        raise ValueError(f'resolutions_ratio has {len(resolutions_ratio)} weights for {len(choices)} resolutions')
    return (rng or random).choices(choices, weights=resolutions_ratio)[0]


def collate_func_gen(instances: Sequence[Mapping], pad_index: int = DEFAULT_PAD_INDEX, resolutions=None,
                     resolutions_ratio=None, crop_mode: str | None = None) -> dict:
    """OpenUni's batch. With any of VGT's keywords, VGT's: every image resized to one resolution
    for the batch (``resolutions``: a (width, height) pair or a list to draw from by
    ``resolutions_ratio``; 512 x 512 when not given), cropped or padded by ``crop_mode``
    ('center_crop' by default, 'random_crop', 'pad_resize'), and ``batch_resolution`` added."""
    if resolutions is None and resolutions_ratio is None and crop_mode is None:
        return collate_image_and_prompt(instances, 'pixel_values', pad_index)
    if instances and instances[0]['pixel_values'].dtype == torch.uint8:
        raise ValueError("VGT's per-batch resize works on float pixels: give the dataset pixel_dtype='float32'")
    resolution = pick_resolution(resolutions, resolutions_ratio)
    resized = [{**sample, 'pixel_values': fit_to_resolution(sample['pixel_values'], resolution,
                                                            crop_mode or 'center_crop')}
               for sample in instances]
    batch = collate_image_and_prompt(resized, 'pixel_values', pad_index)
    batch['data']['batch_resolution'] = resolution
    return batch


def collate_func_gen_latents(instances: Sequence[Mapping], pad_index: int = DEFAULT_PAD_INDEX) -> dict:
    return collate_image_and_prompt(instances, 'image_latents', pad_index)


def collate_func_gen_tokens(instances: Sequence[Mapping], pad_index: int = DEFAULT_PAD_INDEX) -> dict:
    return collate_image_and_prompt(instances, 'image_tokens', pad_index)


def collate_func_img2img(instances: Sequence[Mapping], pad_index: int = DEFAULT_PAD_INDEX) -> dict:
    """Upstream's image editing batch: prompts padded on the left, ``pixel_values`` stacked, and
    every sample's source image (or list of them) stacked into ``pixel_values_src``."""
    sources = []
    for sample in instances:
        src = sample['pixel_values_src']
        sources += [src] if isinstance(src, torch.Tensor) else list(src)
    input_ids, attention_mask = pad_input_ids([sample['input_ids'] for sample in instances], pad_index, 'left')
    return {'data': {'input_ids': input_ids, 'attention_mask': attention_mask,
                     'pixel_values': stack([sample['pixel_values'] for sample in instances]),
                     'pixel_values_src': stack(sources), **collate_extras(instances)},
            'data_samples': None}


def collate_func_und(instances: Sequence[Mapping], pad_index: int = DEFAULT_PAD_INDEX) -> dict:
    """Upstream's understanding batch: ``input_ids`` and ``labels`` (padded with IGNORE_INDEX)
    right-padded, ``pixel_values`` stacked when the samples have them (else None)."""
    input_ids, attention_mask = pad_input_ids([sample['input_ids'] for sample in instances], pad_index)
    labels, _ = pad_input_ids([sample['labels'] for sample in instances], IGNORE_INDEX)
    images = [sample['pixel_values'] for sample in instances if 'pixel_values' in sample]
    return {'data': {'input_ids': input_ids, 'attention_mask': attention_mask, 'labels': labels,
                     'pixel_values': stack(images) if images else None},
            'data_samples': None}


class CollateConcat:
    """Harmon's collate for batches drawn from one source of a mix (``FixedBatchMultiSourceSampler``):
    the batch's samples' ``type`` picks one of ``collate_fns`` (configs with a ``type``, matched to
    ``keys`` in order), and the batch is ``{'data': {type: that collate's data}, 'data_samples': None}``.

    It is built either way a runner builds collate functions: as Harmon's runner does
    (``CollateConcat(collate_fns=..., keys=...)``, then called on each batch), and as mmengine's
    ``Runner.build_dataloader`` does (``partial(CollateConcat, collate_fns=..., keys=...)`` called on
    each batch, which then returns the collated batch itself).
    """

    def __new__(cls, *batch, collate_fns=None, keys=None):
        if batch and collate_fns is not None:  # mmengine's partial(CollateConcat, **cfg)(batch)
            return cls(collate_fns=collate_fns, keys=keys)(batch[0])
        return super().__new__(cls)

    def __init__(self, collate_fns=None, keys=None):
        if collate_fns is None or keys is None or len(collate_fns) != len(keys):
            raise ValueError('CollateConcat needs collate_fns and keys of the same length, '
                             f'got {collate_fns!r} and {keys!r}')
        self.keys = list(keys)
        self.collate_fns = {}
        for key, cfg in zip(keys, collate_fns):
            cfg = dict(cfg)  # the config stays as it was: it may be built again
            self.collate_fns[key] = partial(resolve_type(cfg.pop('type'), cfg), **cfg)

    def __call__(self, data_samples: Sequence[Mapping]) -> dict:
        samples = [sample for sample in data_samples if len(sample) > 0]
        kinds = {sample['type'] for sample in samples}
        if len(kinds) != 1 or not kinds <= set(self.collate_fns):
            raise ValueError(f'a batch must hold samples of one type among {self.keys}, got {sorted(kinds)}: '
                             'draw it with FixedBatchMultiSourceSampler')
        key = kinds.pop()
        return {'data': {key: self.collate_fns[key](samples)['data']}, 'data_samples': None}
