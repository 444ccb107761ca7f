"""The uint8 handoff (``CaptionDataset(pixel_dtype='uint8')`` + ``T2IDataPreprocessor``): the
pixels after the preprocessor are the default path's float32 [-1, 1] bit for bit, square and
bucketed, every format and mode, in DataLoader workers too; the default stays float32."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from src.datasets.sample import planes
from src.datasets.collate_functions import collate_func_gen
from src.datasets.data_preprocessor import T2IDataPreprocessor, normalise_pixels
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.synthetic.images import EXTENSIONS, FORMAT_MODES, encode_image

SIZES = [(97, 131), (160, 120), (300, 300), (83, 400)]


@pytest.fixture(scope='module')
def miniatures(tmp_path_factory) -> Path:
    """Every format and mode the miniatures use, at assorted sizes and aspect ratios."""
    root = tmp_path_factory.mktemp('uint8')
    (root / 'images').mkdir()
    records = []
    for fmt, modes in FORMAT_MODES.items():
        for mode in modes:
            for number, (width, height) in enumerate(SIZES):
                name = f'{fmt}-{mode}-{number}{EXTENSIONS[fmt]}'
                (root / 'images' / name).write_bytes(encode_image(width, height, fmt, mode, seed=len(records)))
                records.append({'image': name, 'caption': f'a {mode} {fmt} picture {number}'})
    (root / 'data.json').write_text(json.dumps(records))
    return root


def build(root: Path, tokenizer, prompt_template, **options) -> CaptionDataset:
    return CaptionDataset(str(root / 'data.json'), image_folder=str(root / 'images'), tokenizer=tokenizer,
                          prompt_template=prompt_template, image_size=48, unconditional=0.2, seed=0, **options)


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and a.shape == b.shape and torch.equal(a.view(torch.int32),
                                                                                      b.view(torch.int32))


def test_every_byte_value_normalises_to_the_default_path_s_float():
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(3, 16, 16).contiguous()
    assert bit_equal(normalise_pixels(values), planes.float_planes(values))
    assert bit_equal(normalise_pixels(values), values.float() / 127.5 - 1)


@pytest.mark.parametrize('compiled', [True, False])
def test_square_batches_after_the_preprocessor_equal_the_default_batches(miniatures, tokenizer, prompt_template,
                                                                          monkeypatch, compiled):
    if not compiled:  # the numpy fallback of the default path, where the compiled loop is not built
        monkeypatch.setattr(planes, '_compiled_normalise', None)
    default, light = (build(miniatures, tokenizer, prompt_template, **options)
                      for options in ({}, dict(pixel_dtype='uint8')))
    indices = list(range(len(default)))
    floats = collate_func_gen(default.__getitems__(indices))
    bytes_ = collate_func_gen(light.__getitems__(indices))
    assert floats['data']['pixel_values'].dtype == torch.float32  # the default is unchanged
    assert bytes_['data']['pixel_values'].dtype == torch.uint8
    assert bytes_['data']['pixel_values'].nbytes * 4 == floats['data']['pixel_values'].nbytes
    out = T2IDataPreprocessor()(bytes_, training=True)['data']
    assert bit_equal(out['pixel_values'], floats['data']['pixel_values'])
    assert torch.equal(out['input_ids'], floats['data']['input_ids'])
    again = T2IDataPreprocessor()(floats, training=True)['data']['pixel_values']  # float passes unchanged
    assert bit_equal(again, floats['data']['pixel_values'])


def test_bucketed_batches_from_workers_after_the_preprocessor_equal_the_default(tmp_path, tokenizer,
                                                                                 prompt_template):
    from test_buckets import make_dataset, write_bucket_data
    root = write_bucket_data(tmp_path / 'data', count=12)
    default, light = (make_dataset(root, tokenizer, prompt_template, **options)
                      for options in ({}, dict(pixel_dtype='uint8')))
    bucket = default.bucket_ids[0]
    batch = [i for i in range(len(default)) if default.bucket_ids[i] == bucket][:3]
    loaders = [DataLoader(dataset, batch_sampler=[batch, batch[::-1]], num_workers=2, collate_fn=collate_func_gen)
               for dataset in (default, light)]
    preprocessor = T2IDataPreprocessor()
    for floats, bytes_ in zip(*loaders):
        out = preprocessor(bytes_)['data']
        assert bytes_['data']['pixel_values'].dtype == torch.uint8
        assert bit_equal(out['pixel_values'], floats['data']['pixel_values'])
        assert out['pixel_values'].shape[-2:] == tuple(default.target_of(batch[0]))
        assert torch.equal(out['crop_coords'], floats['data']['crop_coords'])


def test_nested_batches_and_editing_sources_are_normalised_too():
    pixels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    batch = {'data': {'image2image': {'pixel_values': pixels, 'pixel_values_src': pixels,
                                      'input_ids': torch.ones(2, 3, dtype=torch.long)}}, 'data_samples': None}
    out = T2IDataPreprocessor()(batch)['data']['image2image']
    assert bit_equal(out['pixel_values'], pixels.float() / 127.5 - 1)
    assert bit_equal(out['pixel_values_src'], out['pixel_values']) and out['input_ids'].dtype == torch.long


def test_wrong_settings_say_what_works(miniatures, tokenizer, prompt_template):
    with pytest.raises(ValueError, match=r"pixel_dtype='float16': one of \('float32', 'uint8'\)"):
        build(miniatures, tokenizer, prompt_template, pixel_dtype='float16')
    light = build(miniatures, tokenizer, prompt_template, pixel_dtype='uint8')
    with pytest.raises(ValueError, match="pixel_dtype='float32'"):
        collate_func_gen([light[0], light[1]], resolutions=(32, 32))


def test_the_example_config_hands_uint8_and_its_model_normalises():
    from mmengine.config import Config
    from mmengine.registry import MODELS

    from config_helpers import CONFIGS
    cfg = Config.fromfile(str(CONFIGS.parent / 'examples' / 'tiny_t2i.py'))
    assert cfg.train_dataloader.dataset.pixel_dtype == 'uint8'
    model = MODELS.build(cfg.model)
    assert isinstance(model.data_preprocessor, T2IDataPreprocessor)
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    batch = {'data': {'pixel_values': pixels, 'input_ids': torch.ones(2, 4, dtype=torch.long),
                      'attention_mask': torch.ones(2, 4, dtype=torch.bool)}, 'data_samples': None}
    losses = model.train_step(batch, optim_wrapper=_NoStep())
    assert torch.isfinite(losses['loss'])


class _NoStep:
    """An optimizer wrapper that computes nothing further: train_step's data path only."""

    def optim_context(self, model):
        import contextlib
        return contextlib.nullcontext()

    def update_params(self, loss):
        pass
