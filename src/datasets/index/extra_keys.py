"""Index columns returned in each sample (``CaptionDataset(extra_keys=[...])``) and collated into
the batch: scores as conditioning (LACON's finding: passing a score to the model beats dropping the
records at equal compute). A model that does not read them is unaffected."""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch

# The keys a text-to-image sample has besides its extras: collated by their own rules, or not at all.
SAMPLE_KEYS = frozenset({'pixel_values', 'image_latents', 'image_tokens', 'input_ids', 'image_dir', 'image_file',
                         'type', 'original_size', 'crop_coords', 'pixel_values_src', 'labels', 'attention_mask'})


def check_extra_keys(keys) -> list[str]:
    """``extra_keys`` as a list of column names; one that a sample already uses is refused."""
    keys = [keys] if isinstance(keys, str) else list(keys or ())
    for key in keys:
        if not isinstance(key, str) or key in SAMPLE_KEYS:
            raise ValueError(f'extra_keys: {key!r} must be an index column name other than the sample keys '
                             f'{sorted(SAMPLE_KEYS)}')
    return keys


def extra_values(record: Mapping, keys: Sequence[str]) -> dict:
    """The record's values of ``keys`` (None where it has none: the batch then holds NaN or None)."""
    return {key: record.get(key) for key in keys}


def collate_extras(instances: Sequence[Mapping]) -> dict:
    """The samples' extras as batch fields: numbers (None as NaN) a float32 ``[B]`` tensor, other
    values (text) a list."""
    batch = {}
    for key in instances[0]:
        if key in SAMPLE_KEYS:
            continue
        values = [sample.get(key) for sample in instances]
        if all(value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)) for value in values):
            batch[key] = torch.tensor([math.nan if value is None else float(value) for value in values],
                                      dtype=torch.float32)
        else:
            batch[key] = values
    return batch
