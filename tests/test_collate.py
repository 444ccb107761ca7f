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


# ---- VGT's per-batch resolution and Harmon's CollateConcat --------------------------------------
def image_samples(sizes):
    return [{'pixel_values': torch.rand(3, h, w) * 2 - 1, 'input_ids': torch.tensor([1, 2]), 'type': 'text2image'}
            for h, w in sizes]


def test_without_vgt_keywords_the_batch_is_openuni_s():
    batch = collate_func_gen(image_samples([(8, 8), (8, 8)]), pad_index=0)
    assert 'batch_resolution' not in batch['data'] and batch['data']['pixel_values'].shape == (2, 3, 8, 8)


@pytest.mark.parametrize('crop_mode', ['center_crop', 'random_crop', 'pad_resize'])
def test_vgt_resolution_resizes_every_image_of_the_batch(crop_mode):
    batch = collate_func_gen(image_samples([(16, 16), (20, 10)]), resolutions=(12, 6), crop_mode=crop_mode)
    assert batch['data']['pixel_values'].shape == (2, 3, 6, 12)  # (width, height) = (12, 6)
    assert batch['data']['batch_resolution'] == (12, 6)


def test_vgt_center_crop_and_pad_are_vgt_s_arithmetic():
    import torch.nn.functional as F
    pixels = torch.rand(3, 10, 20)
    # center_crop: scale to cover (max of the scales), bilinear, then the centre.
    scaled = F.interpolate(pixels[None], size=(8, 16), mode='bilinear', align_corners=False)[0]
    batch = collate_func_gen([{'pixel_values': pixels, 'input_ids': [1]}], resolutions=(8, 8))
    assert torch.equal(batch['data']['pixel_values'][0], scaled[:, :, 4:12])
    # pad_resize: scale to fit (min of the scales), then zero padding around it.
    fitted = F.interpolate(pixels[None], size=(4, 8), mode='bilinear', align_corners=False)[0]
    batch = collate_func_gen([{'pixel_values': pixels, 'input_ids': [1]}], resolutions=(8, 8), crop_mode='pad_resize')
    assert torch.equal(batch['data']['pixel_values'][0], F.pad(fitted, (0, 0, 2, 2)))


def test_vgt_resolutions_list_is_drawn_by_ratio():
    drawn = {collate_func_gen(image_samples([(8, 8)]), resolutions=[(4, 4), (6, 2)],
                              resolutions_ratio=[0, 1])['data']['batch_resolution'] for _ in range(5)}
    assert drawn == {(6, 2)}
    drawn = {collate_func_gen(image_samples([(8, 8)]), resolutions=[(4, 4), (6, 2)])['data']['batch_resolution']
             for _ in range(50)}
    assert drawn == {(4, 4), (6, 2)}
    with pytest.raises(ValueError, match='2 weights for 3 resolutions'):
        collate_func_gen(image_samples([(8, 8)]), resolutions=[(4, 4), (6, 2), (2, 6)], resolutions_ratio=[1, 1])


def test_collate_concat_as_harmon_s_runner_and_as_mmengine_build_it():
    from functools import partial

    from src.datasets.collate_functions import CollateConcat
    cfg = dict(collate_fns=[dict(type=collate_func_gen, pad_index=7)], keys=['text2image'])
    samples_ = image_samples([(8, 8), (8, 8)])
    samples_[1]['input_ids'] = torch.tensor([3])
    built = CollateConcat(**cfg)(samples_)  # Harmon's CustomRunner: build, then call per batch
    called = partial(CollateConcat, **cfg)(samples_)  # mmengine's Runner.build_dataloader
    for batch in (built, called):
        assert set(batch['data']) == {'text2image'} and batch['data_samples'] is None
        assert batch['data']['text2image']['input_ids'].tolist() == [[1, 2], [3, 7]]
    assert cfg['collate_fns'][0]['type'] is collate_func_gen  # the config is left as it was
    mixed = image_samples([(8, 8)]) + [{**image_samples([(8, 8)])[0], 'type': 'image2text'}]
    with pytest.raises(ValueError, match='one type'):
        CollateConcat(**cfg)(mixed)
