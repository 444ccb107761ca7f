"""Each dataset config loads, has the contract's keys, and reads a prepared miniature download."""
from __future__ import annotations

import os

import pytest
import torch

from src.prepare import datasets as prepare
from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS
from src.synthetic.local_config import dataset_configs

from config_helpers import assert_reads_expected_samples, build, load

NAMES = list(MAKERS)

# The contract's table: what each config reads.
CONTRACT = {
    'midjourney23m': dict(type='CaptionDataset', data_path='data/midjourney-23m/data.json',
                          image_folder='data/midjourney-23m', cap_source='caption'),
    'laion6m': dict(type='CaptionDataset', data_path='data/laion6m/data.json',
                    image_folder='data/laion6m/raw', cap_folder='data/laion6m/captions',
                    cap_source=['re_caption', 'caption']),
    'dalle3': dict(type='CaptionDataset', data_path='data/dalle3/dalle3.parquet',
                   image_folder='data/dalle3/data', image_key='filename', cap_source='caption'),
    'redcaps5m': dict(type='CaptionDataset', data_path='data/redcaps5m/redcaps5m_data.json',
                      image_folder='data/redcaps5m/raw', cap_folder='data/redcaps5m/raw',
                      cap_source=['re_caption', 'caption']),
    'blip3o60k': dict(type='BLIP3oDataset', data_path='data/BLIP3o-60k/data.json',
                      image_folder='data/BLIP3o-60k/raw', cap_folder='data/BLIP3o-60k/raw'),
}
UPSTREAM_KEYS = {'image_size', 'unconditional', 'prompt_template', 'ceph_folder', 'ceph_config',
                 'tokenizer', 'max_length'}


@pytest.mark.parametrize('name', NAMES)
def test_config_has_the_contract_keys(name):
    cfg = load(name)
    dataset = cfg.dataset
    assert cfg.train_dataloader.dataset == dataset
    assert dataset.type.__name__ == CONTRACT[name]['type']
    for key, value in CONTRACT[name].items():
        if key != 'type':
            assert dataset[key] == value, key
    assert UPSTREAM_KEYS <= set(dataset)
    assert dataset.tokenizer.pretrained_model_name_or_path  # from configs/processors.py
    loader = cfg.train_dataloader
    assert loader.sampler.type.__name__ == 'InfiniteSampler'
    assert loader.collate_fn.type.__name__ == 'collate_func_gen' and loader.collate_fn.pad_index == 0


def test_mix_combines_the_five():
    cfg = load('mix')
    assert cfg.train_dataloader.dataset.type.__name__ == 'ConcatDataset'
    leaves = list(dataset_configs(cfg.train_dataloader.dataset))
    assert [leaf.data_path for leaf in leaves] == [CONTRACT[name]['data_path'] for name in NAMES]


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    """The five miniature downloads, prepared by the tools' library, under ``<workdir>/data``."""
    workdir = tmp_path_factory.mktemp('work')
    expected = {}
    for name, make in MAKERS.items():
        expected[name] = make(workdir / DEFAULT_ROOTS[name], n=6)
        report = getattr(prepare, f'prepare_{name}')(str(workdir / DEFAULT_ROOTS[name]), num_processes=1)
        assert report.exit_code() == 0, report.summary()
    return workdir, expected


@pytest.fixture
def in_workdir(prepared):
    cwd = os.getcwd()
    os.chdir(prepared[0])
    yield prepared[1]
    os.chdir(cwd)


@pytest.mark.parametrize('name', NAMES)
def test_config_reads_every_expected_sample_with_its_caption(in_workdir, name, tokenizer_path, tokenizer,
                                                             prompt_template):
    expected = in_workdir[name]
    loader = build(name, tokenizer_path)
    assert_reads_expected_samples(loader.dataset, expected.samples, tokenizer, prompt_template)
    batch = next(iter(loader))
    assert batch['data']['pixel_values'].shape == (4, 3, 64, 64)
    assert batch['data']['input_ids'].dtype == torch.int64
    assert batch['data']['attention_mask'].shape == batch['data']['input_ids'].shape


def test_mix_builds_with_xtuner_concat(in_workdir, tokenizer_path):
    loader = build('mix', tokenizer_path)
    assert len(loader.dataset) >= sum(len(e.samples) for e in in_workdir.values())
    batch = next(iter(loader))
    assert batch['data']['pixel_values'].shape == (4, 3, 64, 64)
