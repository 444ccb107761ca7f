"""What a new user meets first: the models a tool needs named all at once (before anything heavy is
imported), a mistyped path called a missing folder, `--cfg-options` with dicts, `--resume` that will
not start fresh unasked, disagreeing batch sizes refused, data that is not there named, a mix of the
datasets one has, train.py's screen before iteration 1, and the failure-rate warning that says what
it judged."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from src.cli import hub
from src.cli.data_paths import DataMissing, check_data
from src.cli.models import Model, check, config_tokenizers, preflight
from src.cli.options import ConfigOptionError, parse_options
from src.cli.training import TrainConfigError, check_batch_sizes, resume_plan

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = 'OpenGVLab/InternVL3-2B'


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'empty-hub-cache'))
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'empty-hub-cache' / 'hub'))
    monkeypatch.chdir(tmp_path)


def test_every_missing_model_is_named_in_one_message_with_the_stand_ins(offline, tmp_path):
    (tmp_path / 'demo_output' / 'tokenizer').mkdir(parents=True)
    (tmp_path / 'demo_output' / 'tiny-vae').mkdir()
    with pytest.raises(hub.HubUnreachable) as caught:
        preflight(str(REPO / 'configs/datasets/midjourney23m.py'), None,
                  Model('mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers', 'the autoencoder', '--vae'))
    message = str(caught.value)
    assert message.startswith('2 models cannot be had')
    assert repr(TOKENIZER) in message and "'mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers'" in message
    assert '--tokenizer demo_output/tokenizer' in message and '--vae demo_output/tiny-vae' in message
    assert 'HF_HUB_OFFLINE' in message and '.venv/bin/huggingface-cli download' in message


def test_a_path_that_is_not_there_is_a_missing_folder_not_a_hub_id(offline, tmp_path):
    for typo in ('./tokenizr', 'models/tok/enizer', '/nowhere/tokenizer', '~/tokenizer-nowhere'):
        with pytest.raises(hub.HubUnreachable) as caught:
            check([Model(typo, 'the tokenizer', '--tokenizer')])
        assert 'no such folder' in str(caught.value) and 'huggingface-cli' not in str(caught.value), typo
        with pytest.raises(hub.HubUnreachable, match='no such folder'):
            hub.resolve(typo, 'the tokenizer', '--tokenizer')
    (tmp_path / 'tok').mkdir()
    check([Model('./tok', 'the tokenizer', '--tokenizer'), Model(str(tmp_path / 'tok'), 'x', '--tokenizer')])


def test_a_config_outside_the_clone_names_the_tokenizers_of_the_configs_it_reads(tmp_path):
    mine = tmp_path / 'my_t2i.py'
    mine.write_text('from mmengine.config import read_base\n\nwith read_base():\n'
                    '    from configs.examples.tiny_t2i import *\n')
    assert config_tokenizers(mine) == [TOKENIZER]
    assert config_tokenizers(REPO / 'configs/datasets/mix.py') == [TOKENIZER]


def test_cfg_options_read_as_mmengine_reads_them_and_dicts_too():
    options = parse_options(['a=1', 'b=0.5', 'c=True', 'd=none', 'e=data/x.json', 'f=[1,2]', 'g=(1,2)', 'h=a,b',
                             "dataset.buckets=dict(table='pixart-512', divisor=32)", "i={'x': [1, -2]}",
                             'j=pixart-512', 'k=s3://bucket/x'])
    assert options == {'a': 1, 'b': 0.5, 'c': True, 'd': None, 'e': 'data/x.json', 'f': [1, 2], 'g': (1, 2),
                       'h': ['a', 'b'], 'dataset.buckets': {'table': 'pixart-512', 'divisor': 32},
                       'i': {'x': [1, -2]}, 'j': 'pixart-512', 'k': 's3://bucket/x'}
    with pytest.raises(ConfigOptionError, match='dict of literals'):
        parse_options(['dataset.buckets=dict(table=pixart-512)'])
    with pytest.raises(ConfigOptionError, match='key=value'):
        parse_options(['buckets'])


def test_resume_needs_a_checkpoint_unless_told_starting_fresh_is_fine(tmp_path):
    with pytest.raises(TrainConfigError, match='does not exist.*--resume auto'):
        resume_plan('latest', str(tmp_path / 'mistyped'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(TrainConfigError, match='holds no checkpoint'):
        resume_plan('latest', str(tmp_path / 'empty'))
    assert resume_plan('auto', str(tmp_path / 'empty')) == (False, None)  # nothing to resume: fresh
    assert resume_plan(None, str(tmp_path / 'empty')) == (False, None)
    (tmp_path / 'work').mkdir()
    (tmp_path / 'work' / 'last_checkpoint').write_text(str(tmp_path / 'work' / 'iter_20.pth'))
    assert resume_plan('latest', str(tmp_path / 'work')) == resume_plan('auto', str(tmp_path / 'work')) == (True, None)
    with pytest.raises(TrainConfigError, match='no such checkpoint file'):
        resume_plan(str(tmp_path / 'iter_5.pth'), str(tmp_path / 'work'))


def test_a_sampler_batch_size_other_than_the_dataloaders_is_refused():
    from mmengine.config import Config
    cfg = Config(dict(train_dataloader=dict(batch_size=32, sampler=dict(type='BucketSampler', batch_size=16))))
    with pytest.raises(TrainConfigError, match=r'batch_size=16 but the DataLoader batch_size=32'):
        check_batch_sizes(cfg)
    cfg.train_dataloader.batch_size = 16
    check_batch_sizes(cfg)


def test_data_that_is_not_there_is_named_all_at_once_with_the_mix_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'data' / 'a').mkdir(parents=True)
    (tmp_path / 'data' / 'a' / 'data.json').write_text('[]')
    mix = dict(type='ConcatDataset', datasets=[
        dict(type='CaptionDataset', data_path='data/a/data.json'),
        dict(type='src.datasets.text2image.blip3_o.BLIP3oDataset', data_path='data/b/data.json'),
        dict(type='CaptionDataset', data_path='data/c/data.json', image_latents_folder='data/c_dc32_64'),
        dict(type='CaptionDataset', data_path='bucket/x.json', ceph_folder='s3://bucket')])
    with pytest.raises(DataMissing) as caught:
        check_data(mix, 'mix.py')
    message = str(caught.value)
    assert "'data/b/data.json'" in message and "'data/c/data.json'" in message and 'data/c_dc32_64' in message
    assert "'data/a/data.json'" not in message and 'bucket/x.json' not in message
    assert str(tmp_path) in message and 'A mix of the datasets you have' in message


def test_the_docs_mix_of_the_datasets_one_has_builds_from_outside_the_clone(tmp_path, monkeypatch, tokenizer_path):
    from src.cli.config import load_config
    from src.datasets.build import build_leaf_datasets
    from src.prepare.datasets import prepare_blip3o60k, prepare_dalle3
    from src.synthetic.downloads import make_blip3o60k, make_dalle3
    text = (REPO / 'docs' / 'datasets.md').read_text()
    block = re.search(r'```python\n(# my_mix\.py.*?)```', text, re.S).group(1)
    (tmp_path / 'my_mix.py').write_text(block)
    make_blip3o60k(tmp_path / 'data/BLIP3o-60k', n=4, faults=False)
    make_dalle3(tmp_path / 'data/dalle3', n=4, faults=False)
    assert prepare_blip3o60k(str(tmp_path / 'data/BLIP3o-60k'), num_processes=1).exit_code() == 0
    assert prepare_dalle3(str(tmp_path / 'data/dalle3'), num_processes=1).exit_code() == 0
    monkeypatch.chdir(tmp_path)
    cfg = load_config('my_mix.py', {'dataset.datasets.0.image_size': 64}, tokenizer_path)
    leaves = build_leaf_datasets(cfg)
    assert [type(leaf).__name__ for leaf in leaves] == ['BLIP3oDataset', 'CaptionDataset']
    assert all(len(leaf) > 0 for leaf in leaves)


def test_the_streak_warning_says_what_it_judged_once(monkeypatch):
    from src.datasets import failure_policy
    from src.datasets.errors import SampleError
    said = []
    monkeypatch.setattr(failure_policy, 'print_log', lambda msg, **kwargs: said.append(msg))
    tracker = failure_policy.FailureTracker('data.json', max_refetch=3, max_failure_ratio=0.5)
    for streak in range(1, 9):
        tracker.failure(SampleError('no-caption', f'data.json sample #{streak}: no caption'), streak)
    streaks = [line for line in said if 'in a row' in line]
    assert len(streaks) == 1
    assert 'within' not in streaks[0] and 'judged once 50 samples have been tried (4 so far, 4 failed)' in streaks[0]
    skips = [line for line in said if line.startswith('Skipped a sample')]
    assert len(skips) == 1 and 'counted, not logged' in skips[0]  # one sample's message, said once


def run_train(*args, cwd, merged: bool = False) -> subprocess.CompletedProcess:
    """tools/train.py; ``merged``: stderr into stdout, in the order a terminal shows them."""
    streams = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT) if merged else dict(capture_output=True)
    return subprocess.run([sys.executable, str(REPO / 'tools/train.py'), *map(str, args)], cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1'),
                          text=True, timeout=600, **streams)


def test_train_says_one_screen_before_the_first_iteration(tmp_path, tokenizer_path):
    from src.prepare.datasets import prepare_midjourney23m
    from src.synthetic.downloads import make_midjourney23m
    make_midjourney23m(tmp_path / 'data/midjourney-23m', n=8)
    assert prepare_midjourney23m(str(tmp_path / 'data/midjourney-23m'), num_processes=1).exit_code() == 0
    config = REPO / 'configs/examples/tiny_t2i.py'
    refused = run_train(config, '--tokenizer', tokenizer_path, '--work-dir', 'work', '--resume', cwd=tmp_path)
    assert refused.returncode == 2 and 'no last_checkpoint' in refused.stderr and 'Traceback' not in refused.stderr
    result = run_train(config, '--tokenizer', tokenizer_path, '--work-dir', 'work', '--resume', 'auto',
                       '--cfg-options', 'train_cfg.max_iters=2', 'train_dataloader.num_workers=0', cwd=tmp_path,
                       merged=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert 'does not exist: starting fresh' in result.stdout and 'Auto resumed' not in result.stdout
    lines = result.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if 'Iter(train)' in line)
    assert first <= 40, '\n'.join(lines[:first])
    before = '\n'.join(lines[:first])
    assert 'System environment' not in before and 'Hooks will be executed' not in before
    for said in ('training TinyT2I on', 'data/midjourney-23m/data.json:', 'sampler: ', 'checkpoints: every 20 '):
        assert said in before, said
    log = next((tmp_path / 'work').glob('*/*.log')).read_text()
    assert 'System environment' in log and 'Config:' in log  # the dumps are kept in the log


def test_a_cap_source_no_record_has_fails_at_construction(tmp_path, tokenizer, prompt_template):
    import json

    from src.datasets.errors import DatasetConfigError
    from src.datasets.text2image.caption_datasets import CaptionDataset
    (tmp_path / 'data.json').write_text(json.dumps([{'image': 'a.jpg', 'caption': 'a cat'}]))
    options = dict(data_path=str(tmp_path / 'data.json'), image_folder=str(tmp_path), tokenizer=tokenizer,
                   prompt_template=prompt_template)
    with pytest.raises(DatasetConfigError, match=r"cap_source='captoin' is not a key of its records.*'caption'"):
        CaptionDataset(cap_source='captoin', **options)
    assert len(CaptionDataset(cap_source=['captoin', 'caption'], **options)) == 1  # one of the keys is there


def test_report_previews_keep_their_shape():
    """A bucketed sample (256x146) is shown at its shape, scaled into the tile, never stretched square."""
    import base64
    import io

    import torch
    from PIL import Image

    from src.report.html import STYLE, image_data_url
    url = image_data_url(torch.zeros(3, 146, 256))
    with Image.open(io.BytesIO(base64.b64decode(url.split(',', 1)[1]))) as image:
        assert image.size == (256, 146)
    rules = dict(re.findall(r'([^{}]+)\{([^}]*)\}', STYLE))
    img = next(body for selector, body in rules.items() if selector.strip().endswith('img'))
    assert 'max-width' in img and 'max-height' in img and not re.search(r'(^|;)(width|height):', img)


def test_a_stale_index_cache_is_said_once(tmp_path, monkeypatch):
    import json

    from src.datasets.index import index_cache, sample_index
    said = []
    for module in (sample_index, index_cache):
        monkeypatch.setattr(module, 'print_log', lambda msg, **kwargs: said.append(msg))
    source = tmp_path / 'data.json'
    source.write_text(json.dumps([{'image': 'a.jpg', 'caption': 'a'}]))
    sample_index.SampleIndex.load(str(source))
    source.write_text(json.dumps([{'image': 'a.jpg', 'caption': 'a'}, {'image': 'b.jpg', 'caption': 'b'}]))
    assert len(sample_index.SampleIndex.load(str(source))) == 2
    assert len([line for line in said if 'is stale' in line]) == 1
