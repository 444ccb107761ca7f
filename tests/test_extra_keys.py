"""extra_keys: index columns returned in each sample and collated into the batch (scores as
conditioning); a model that does not read them trains as before."""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoTokenizer

from src.datasets.collate_functions import collate_func_gen, collate_func_gen_latents
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.synthetic.images import encode_image

from resume_helpers import RecordingModel, collate_with_files, train


@pytest.fixture
def data(tmp_path):
    (tmp_path / 'images').mkdir()
    records = []
    for i in range(6):
        (tmp_path / 'images' / f'{i}.jpg').write_bytes(encode_image(120, 100, seed=i))
        records.append({'image': f'{i}.jpg', 'caption': f'picture {i}', 'aesthetic': 4.0 + i, 'source': f's{i}'})
    del records[2]['aesthetic']
    (tmp_path / 'data.json').write_text(json.dumps(records))
    return tmp_path


def build(data, tokenizer, prompt_template, **options):
    return CaptionDataset(str(data / 'data.json'), image_folder=str(data / 'images'), tokenizer=tokenizer,
                          prompt_template=prompt_template, image_size=32, **options)


def test_chosen_columns_come_in_each_sample_and_in_the_batch(data, tokenizer, prompt_template):
    dataset = build(data, tokenizer, prompt_template, extra_keys=['aesthetic', 'source'])
    samples = [dataset[i] for i in range(4)]
    assert [s['aesthetic'] for s in samples] == [4.0, 5.0, None, 7.0]
    batch = collate_func_gen(samples)['data']
    assert batch['aesthetic'].dtype == torch.float32 and batch['aesthetic'].shape == (4,)
    assert batch['aesthetic'][:2].tolist() == [4.0, 5.0] and math.isnan(batch['aesthetic'][2])
    assert batch['source'] == ['s0', 's1', 's2', 's3']
    plain = collate_func_gen([build(data, tokenizer, prompt_template)[i] for i in range(2)])['data']
    assert set(plain) == {'pixel_values', 'input_ids', 'attention_mask'}  # nothing asked, nothing added
    latent = {'image_latents': torch.zeros(4, 2, 2), 'input_ids': torch.ones(3, dtype=torch.long), 'aesthetic': 1.5}
    latents = collate_func_gen_latents([latent])['data']
    assert latents['aesthetic'].tolist() == [1.5]


def test_a_sample_key_cannot_be_an_extra(data, tokenizer, prompt_template):
    with pytest.raises(ValueError, match='extra_keys'):
        build(data, tokenizer, prompt_template, extra_keys=['pixel_values'])


def test_a_model_that_ignores_them_trains_as_before(data, tmp_path, tokenizer_path, prompt_template):
    def loader(**options):
        return dict(batch_size=2, num_workers=0, collate_fn=dict(type=collate_with_files, pad_index=0),
                    sampler=dict(type='InfiniteSampler', shuffle=True, seed=0),
                    dataset=dict(type=CaptionDataset, data_path=str(data / 'data.json'),
                                 image_folder=str(data / 'images'), image_size=32, prompt_template=prompt_template,
                                 tokenizer=dict(type=AutoTokenizer.from_pretrained,
                                                pretrained_model_name_or_path=tokenizer_path), **options))
    plain = train(tmp_path / 'plain', loader(seed=0), 3, 3, model=RecordingModel())
    scored = train(tmp_path / 'scored', loader(seed=0, extra_keys=['aesthetic']), 3, 3, model=RecordingModel())
    assert scored == plain


def test_editing_samples_carry_them_too(tmp_path, tokenizer, prompt_template):
    from src.datasets.collate_functions import collate_func_img2img
    from src.datasets.image2image.edit_datasets import ReconstructDataset
    (tmp_path / 'images').mkdir()
    records = []
    for i in range(3):
        (tmp_path / 'images' / f'{i}.jpg').write_bytes(encode_image(120, 100, seed=i))
        records.append({'image': f'{i}.jpg', 'caption': f'picture {i}', 'aesthetic': float(i)})
    (tmp_path / 'data.json').write_text(json.dumps(records))
    dataset = ReconstructDataset(str(tmp_path / 'data.json'), image_folder=str(tmp_path / 'images'),
                                 tokenizer=tokenizer, prompt_template=prompt_template, image_size=32,
                                 extra_keys=['aesthetic'], filters=dict(where=[('aesthetic', '>', 0)]))
    assert len(dataset) == 2
    batch = collate_func_img2img([dataset[0], dataset[1]])['data']
    assert batch['aesthetic'].tolist() == [1.0, 2.0]
