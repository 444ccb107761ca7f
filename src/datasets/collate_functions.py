"""Batch collation for text-to-image samples: images stacked, prompts right-padded with a mask."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

DEFAULT_PAD_INDEX = 0  # xtuner's DEFAULT_PAD_TOKEN_INDEX, without importing xtuner


def pad_input_ids(input_ids: Sequence, pad_index: int = DEFAULT_PAD_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` (1-D tensors or lists) right-padded to ``[B, L]`` int64, and the bool mask of real ids."""
    rows = [torch.as_tensor(ids, dtype=torch.long) for ids in input_ids]
    lengths = torch.tensor([len(row) for row in rows])
    padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_index)
    attention_mask = torch.arange(padded.shape[1]) < lengths[:, None]
    return padded, attention_mask


def collate_image_and_prompt(instances: Sequence[Mapping], image_key: str,
                             pad_index: int = DEFAULT_PAD_INDEX) -> dict:
    """``{'data': {image_key: stacked, 'input_ids', 'attention_mask'}, 'data_samples': None}``.

    Reads the instances without changing them: a caller may still hold on to its samples.
    """
    input_ids, attention_mask = pad_input_ids([sample['input_ids'] for sample in instances], pad_index)
    images = torch.stack([sample[image_key] for sample in instances])
    return {'data': {image_key: images, 'input_ids': input_ids, 'attention_mask': attention_mask},
            'data_samples': None}


def collate_func_gen(instances: Sequence[Mapping], pad_index: int = DEFAULT_PAD_INDEX) -> dict:
    return collate_image_and_prompt(instances, 'pixel_values', pad_index)


def collate_func_gen_latents(instances: Sequence[Mapping], pad_index: int = DEFAULT_PAD_INDEX) -> dict:
    return collate_image_and_prompt(instances, 'image_latents', pad_index)


def collate_func_gen_tokens(instances: Sequence[Mapping], pad_index: int = DEFAULT_PAD_INDEX) -> dict:
    return collate_image_and_prompt(instances, 'image_tokens', pad_index)
