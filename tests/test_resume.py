"""ResumableTrainLoop with mmengine's Runner, a toy model and the project's dataset configs (CPU, 2
DataLoader workers): a run resumed from its checkpoint at iteration 6 sees the batches 7-12 of the
uninterrupted run (image files, input ids, pixels) and reads no sample of batches 1-6."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import IterBasedTrainLoop

from src.datasets.samplers.multi_source_sampler import FixedBatchMultiSourceSampler
from src.engine.checkpoint import history_buffer_statistic
from src.engine.data_facts import DataFacts
from src.engine.positions import ResumeError, plan_resume
from src.prepare import datasets as prepare
from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS
from src.synthetic.local_config import localize

from config_helpers import CONFIGS
from resume_helpers import collate_with_files, train

REPO = Path(__file__).resolve().parents[1]
ITERS, EVERY, BATCH = 12, 6, 4


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Prepared miniature midjourney, laion6m and blip3o60k downloads under <workdir>/data."""
    workdir = tmp_path_factory.mktemp('resume')
    for name in ('midjourney23m', 'laion6m', 'blip3o60k'):
        MAKERS[name](workdir / DEFAULT_ROOTS[name], n=10, faults=False)
        assert getattr(prepare, f'prepare_{name}')(str(workdir / DEFAULT_ROOTS[name]), num_processes=1).exit_code() == 0
    return workdir


@pytest.fixture
def in_data(data, monkeypatch):
    monkeypatch.chdir(data)
    return data


def loader_cfg(name: str, tokenizer_path: str, sampler: dict | None = None, **dataset) -> dict:
    cfg = Config.fromfile(str(CONFIGS / f'{name}.py'))
    loader = localize(cfg, tokenizer_path, dataset_overrides=dict(image_size=32, **dataset), batch_size=BATCH,
                      num_workers=2, pin_memory=False, persistent_workers=False)
    loader.collate_fn = dict(type=collate_with_files, pad_index=0)
    if sampler is not None:
        loader.sampler = sampler
    return loader.to_dict() if hasattr(loader, 'to_dict') else loader


def read_positions(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


@pytest.mark.parametrize('sampler', [dict(type='InfiniteSampler', shuffle=True),
                                     dict(type='DefaultSampler', shuffle=True)])
def test_resume_gives_the_uninterrupted_batches_without_reading_the_skipped_ones(in_data, tmp_path, tokenizer_path,
                                                                               monkeypatch, sampler):
    cfg = loader_cfg('midjourney23m', tokenizer_path, sampler, type='RecordingCaptionDataset')
    whole = train(tmp_path / 'whole', cfg, ITERS, EVERY)
    log = tmp_path / 'reads.log'
    monkeypatch.setenv('T2I_READ_LOG', str(log))

    resumed = train(tmp_path / 'resumed', cfg, ITERS, EVERY, resume_from=str(tmp_path / 'whole' / f'iter_{EVERY}.pth'))

    assert len(whole) == ITERS and resumed == whole[EVERY:]
    # Draws are numbered from 0 without gaps: batches 1-6 were draws 0 .. (their samples - 1).
    skipped = sum(len(batch['image_files']) for batch in whole[:EVERY])
    reads = read_positions(log)
    assert reads and min(reads) == skipped  # not one draw of batches 1-6 (prefetching reads ahead only)


def test_multi_source_sampler_over_a_mix_resumes_and_keeps_the_repeat_shares(in_data, tmp_path, tokenizer_path):
    cfg = Config.fromfile(str(CONFIGS / 'mix.py'))
    mix = localize(cfg, tokenizer_path, dataset_overrides=dict(image_size=32), batch_size=BATCH, num_workers=2,
                   pin_memory=False, persistent_workers=False)
    parts = mix.dataset.datasets
    mix.dataset.datasets = [parts[0], parts[1], parts[4]]  # midjourney, laion6m, blip3o60k
    mix.sampler = dict(type=FixedBatchMultiSourceSampler, repeat=[1, 2, 1], batch_size=BATCH)
    mix.collate_fn = dict(type=collate_with_files, pad_index=0)

    whole = train(tmp_path / 'whole', mix, ITERS, EVERY)
    resumed = train(tmp_path / 'resumed', mix, ITERS, EVERY, resume_from=str(tmp_path / 'whole' / f'iter_{EVERY}.pth'))

    assert resumed == whole[EVERY:]
    sources = []
    for batch in whole:
        kinds = {('images/' in f, f.count('/')) for f in batch['image_files']}
        assert len(kinds) == 1  # one source per batch
        sources.append(kinds.pop())
    assert sorted(sources.count(kind) for kind in set(sources)) == [3, 3, 6]  # repeat [1, 2, 1] of 12


def test_a_checkpoint_of_mmengine_s_own_loop_resumes_from_its_iteration(in_data, tmp_path, tokenizer_path,
                                                                       monkeypatch):
    cfg = loader_cfg('midjourney23m', tokenizer_path, dict(type='InfiniteSampler'), type='RecordingCaptionDataset')
    train(tmp_path / 'mmengine', cfg, EVERY, EVERY, loop=IterBasedTrainLoop)  # loads, with weights_only
    log = tmp_path / 'reads.log'
    monkeypatch.setenv('T2I_READ_LOG', str(log))
    resumed = train(tmp_path / 'resumed', cfg, ITERS, EVERY,
                    resume_from=str(tmp_path / 'mmengine' / f'iter_{EVERY}.pth'))
    assert len(resumed) == ITERS - EVERY and min(read_positions(log)) == EVERY * BATCH


def test_other_records_under_the_same_count_are_refused_or_resumed_when_asked(in_data, tmp_path, tokenizer_path):
    index = tmp_path / 'data.json'
    records = json.loads((in_data / 'data/midjourney-23m/data.json').read_text())
    index.write_text(json.dumps(records))
    cfg = loader_cfg('midjourney23m', tokenizer_path, dict(type='InfiniteSampler'), data_path=str(index))
    train(tmp_path / 'whole', cfg, EVERY, EVERY)
    index.write_text(json.dumps(records[::-1]))  # the same records, in another order: the same count
    checkpoint = str(tmp_path / 'whole' / f'iter_{EVERY}.pth')
    with pytest.raises(ResumeError, match=r'other records than when the checkpoint was made \(fingerprint \d+:\w+ '
                                          r'then, \d+:\w+ now.*allow_data_change=True'):
        train(tmp_path / 'refused', cfg, ITERS, EVERY, resume_from=checkpoint)
    resumed = train(tmp_path / 'asked', cfg, ITERS, EVERY, resume_from=checkpoint, allow_data_change=True)
    assert len(resumed) == ITERS - EVERY


@pytest.mark.slow
def test_two_ranks_resume_rank_by_rank(data, tmp_path, tokenizer_path):
    cfg = loader_cfg('midjourney23m', tokenizer_path, dict(type='InfiniteSampler', shuffle=True),
                     type='RecordingCaptionDataset')
    cfg['collate_fn'] = None  # set by the helper
    (tmp_path / 'loader.json').write_text(json.dumps(cfg))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
         str(REPO / 'tests' / 'resume_helpers.py'), '--loader', str(tmp_path / 'loader.json'), '--out', str(tmp_path),
         '--iters', str(ITERS), '--every', str(EVERY)],
        cwd=data, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]
    for rank, runs in enumerate(ranks):
        assert len(runs['whole']) == ITERS and runs['resumed'] == runs['whole'][EVERY:], rank
        # Draws are numbered in the global stream, dealt to the ranks in turn.
        assert min(read_positions(tmp_path / f'reads{rank}.log')) == EVERY * BATCH * 2 + rank
    assert ranks[0]['whole'] != ranks[1]['whole']  # each rank its own share


# ---- the position arithmetic and what it refuses -----------------------------------------------
def facts(**changes) -> DataFacts:
    base = dict(batch_size=4, world_size=2, dataset_size=100, sampler='InfiniteSampler', seed=0, samples_per_epoch=None)
    return DataFacts(**{**base, **changes})


def test_an_endless_sampler_skips_iterations_times_batch():
    start = plan_resume(1000, facts(), facts())
    assert (start.epoch, start.skip, start.position) == (0, 4000, 4000)


def test_an_epoch_sampler_resumes_inside_its_epoch():
    now = facts(sampler='DefaultSampler', samples_per_epoch=50)  # 13 batches an epoch, the last of 2
    start = plan_resume(30, now, now)
    assert (start.epoch, start.skip, start.position) == (2, 16, 116)
    assert plan_resume(30, now, now, drop_last=True).epoch == 2  # 12 batches an epoch


def test_a_new_world_size_is_mapped_whether_the_samples_divide_evenly_or_not():
    start = plan_resume(1000, facts(world_size=2), facts(world_size=4))
    assert start.skip == 2000 and 'world size changed from 2 to 4' in start.note
    uneven = plan_resume(8, facts(world_size=3), facts(world_size=5))  # 96 samples drawn, 5 ranks
    assert uneven.drawn == 96  # the ranks take the stream's positions from the 96th on, in turn


@pytest.mark.parametrize('change, words', [(dict(dataset_size=99), 'dataset size 100, this run has 99'),
                                           (dict(sampler='DefaultSampler', samples_per_epoch=50), 'sampler')])
def test_another_dataset_or_sampler_is_refused_with_the_numbers(change, words):
    with pytest.raises(ResumeError, match=words):
        plan_resume(10, facts(), facts(**change))


def test_only_history_buffer_statistics_pass_the_weights_only_getattr():
    from mmengine.logging.history_buffer import HistoryBuffer
    assert history_buffer_statistic(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for owner, name in ((HistoryBuffer, '__init__'), (torch, 'load'), (os, 'system')):
        with pytest.raises(Exception, match='refused getattr'):
            history_buffer_statistic(owner, name)
