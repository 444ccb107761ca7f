"""Collate functions: stacked images, right-padded int64 prompts and their masks."""
from __future__ import annotations

import copy

import pytest
import torch

from src.datasets.collate_functions import collate_func_gen, collate_func_gen_latents, collate_func_gen_tokens


def samples(image_key, image):
    return [{image_key: image.clone(), 'input_ids': torch.tensor([5, 6, 7]), 'image_file': 'a.jpg'},
            {image_key: image.clone(), 'input_ids': torch.tensor([8]), 'image_file': 'b.jpg'},
            {image_key: image.clone(), 'input_ids': [9, 10], 'image_file': 'c.jpg'}]


@pytest.mark.parametrize('collate, image_key, image', [
    (collate_func_gen, 'pixel_values', torch.rand(3, 8, 8) * 2 - 1),
    (collate_func_gen_latents, 'image_latents', torch.randn(4, 2, 2)),
    (collate_func_gen_tokens, 'image_tokens', torch.arange(16)),
])
def test_batch_layout(collate, image_key, image):
    instances = samples(image_key, image)
    before = copy.deepcopy(instances)
    batch = collate(instances, pad_index=0)
    assert set(batch) == {'data', 'data_samples'} and batch['data_samples'] is None
    data = batch['data']
    assert set(data) == {image_key, 'input_ids', 'attention_mask'}
    assert data[image_key].shape == (3, *image.shape) and torch.equal(data[image_key][1], image)
    assert data['input_ids'].dtype == torch.int64 and data['attention_mask'].dtype == torch.bool
    assert data['input_ids'].tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert data['attention_mask'].tolist() == [[True] * 3, [True, False, False], [True, True, False]]
    # the caller's samples are left as they were
    assert [sorted(s) for s in instances] == [sorted(s) for s in before]
    assert all(torch.equal(torch.as_tensor(a['input_ids']), torch.as_tensor(b['input_ids']))
               for a, b in zip(instances, before))


def test_pad_index_is_used_for_padding_only():
    batch = collate_func_gen(samples('pixel_values', torch.zeros(3, 4, 4)), pad_index=7)['data']
    assert batch['input_ids'].tolist() == [[5, 6, 7], [8, 7, 7], [9, 10, 7]]
    assert batch['attention_mask'].sum(dim=1).tolist() == [3, 1, 2]


def test_default_pad_index_is_zero():
    batch = collate_func_gen(samples('pixel_values', torch.zeros(3, 4, 4)))['data']
    assert batch['input_ids'][1].tolist() == [8, 0, 0]
