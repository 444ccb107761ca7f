"""Epochs that end: a bucketed dataset (and a mix) read epoch by epoch ends each epoch after
``len(loader)`` batches, under mmengine's EpochBasedTrainLoop and IterBasedTrainLoop, xtuner's
TrainLoop(max_epochs), ResumableTrainLoop (max_iters and max_epochs) and a plain ``for`` loop, on
one process and on 2 gloo ranks under torchrun (every rank ending every epoch on the same step)."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data import ConcatDataset, DataLoader

from src.datasets.collate_functions import collate_func_gen
from src.datasets.samplers.bucket_sampler import BucketBatches, BucketSampler, bucket_ids_of
from src.datasets.samplers.multi_source_sampler import FixedBatchMultiSourceSampler
from src.engine import ResumableTrainLoop

from epoch_run import BucketedRecords, train
from test_buckets import make_dataset, write_bucket_data

REPO = Path(__file__).resolve().parents[1]
EPOCHS, BATCH = 3, 4


def epoch_lengths(global_batch: int, epochs: int = EPOCHS) -> list[int]:
    plan = BucketBatches(*bucket_ids_of(BucketedRecords()), global_batch, 0, 1, seed=0)
    return [plan.epoch_length(e) for e in range(epochs)]


def check_epochs(batches: list[dict], lengths: list[int], global_batch: int, rank_slice=(0, None)) -> list[int]:
    """Each batch is one bucket, of one sampler epoch, at the next global positions; the batches
    each epoch held, in order."""
    counts = [len(list(group)) for _, group in itertools.groupby(b['epoch'][0] for b in batches)]
    assert [b['epoch'][0] for b in batches] == sorted(b['epoch'][0] for b in batches)
    for step, batch in enumerate(batches):
        assert len(set(batch['epoch'])) == 1 and len(set(batch['bucket'])) == 1, step
        first = step * global_batch + rank_slice[0]
        assert batch['position'] == list(range(first, first + len(batch['position']))), step
    assert counts[:-1] == lengths[:len(counts) - 1] and counts[-1] <= lengths[len(counts) - 1]  # the last may stop
    return counts


def test_the_sampler_s_length_is_its_epoch_s_and_one_iteration_is_one_epoch():
    sampler = BucketSampler(BucketedRecords(), batch_size=BATCH, seed=0)
    lengths = epoch_lengths(BATCH)
    assert len(set(lengths)) > 1  # carried records complete batches: the epochs differ
    stream = []
    for epoch, length in enumerate(lengths):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert len(indices) == len(sampler) == length * BATCH
        assert {draw.epoch for draw in indices} == {epoch}
        stream += indices
    assert [draw.position for draw in stream] == list(range(len(stream)))


@pytest.mark.parametrize('loop', ['EpochBasedTrainLoop', 'xtuner TrainLoop', 'IterBasedTrainLoop',
                                  'ResumableTrainLoop max_iters', 'ResumableTrainLoop max_epochs'])
def test_every_loop_ends_each_epoch_after_its_batches(tmp_path, loop):
    lengths = epoch_lengths(BATCH)
    if loop == 'xtuner TrainLoop':
        from xtuner.engine.runner import TrainLoop
        cfg = dict(type=TrainLoop, max_epochs=EPOCHS)
    else:
        cfg = {'EpochBasedTrainLoop': dict(by_epoch=True, max_epochs=EPOCHS),
               'IterBasedTrainLoop': dict(type='IterBasedTrainLoop', max_iters=sum(lengths)),
               'ResumableTrainLoop max_iters': dict(type=ResumableTrainLoop, max_iters=sum(lengths)),
               'ResumableTrainLoop max_epochs': dict(type=ResumableTrainLoop, max_epochs=EPOCHS)}[loop]
    counts = check_epochs(train(tmp_path / 'run', cfg, BATCH), lengths, BATCH)
    if loop == 'xtuner TrainLoop':  # xtuner counts max_epochs x len(loader) of the first epoch
        assert sum(counts) == EPOCHS * lengths[0] and counts[:2] == lengths[:2]
    else:
        assert counts == lengths


@pytest.mark.parametrize('cfg,checkpoint,done', [(dict(by_epoch=True, max_epochs=EPOCHS), 'epoch_1.pth', 1),
                                                 (dict(type=ResumableTrainLoop, max_epochs=EPOCHS), 'iter_7.pth', 7)])
def test_a_resumed_run_ends_its_epochs_where_the_uninterrupted_one_does(tmp_path, cfg, checkpoint, done):
    whole = train(tmp_path / 'whole', cfg, BATCH)
    resumed = train(tmp_path / 'resumed', cfg, BATCH, resume_from=str(tmp_path / 'whole' / checkpoint))
    skipped = sum(epoch_lengths(BATCH)[:done]) if checkpoint.startswith('epoch') else done
    assert resumed == whole[skipped:]


def test_a_plain_for_loop_over_a_bucketed_caption_dataset_ends_every_epoch(tmp_path, tokenizer, prompt_template):
    dataset = make_dataset(write_bucket_data(tmp_path / 'data'), tokenizer, prompt_template)
    sampler = BucketSampler(dataset, batch_size=2, seed=0)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=2, collate_fn=collate_func_gen)
    seen = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        batches = [batch['data']['pixel_values'].shape for batch in loader]
        assert len(batches) == len(loader) == sampler.batches.epoch_length(epoch)
        seen += batches
    assert len(seen) == sampler.batches.batches_before(EPOCHS)


def test_a_mix_s_epoch_is_the_mix_s_size_and_the_next_epoch_goes_on():
    mix = ConcatDataset([BucketedRecords(), list(range(10))])
    sampler = FixedBatchMultiSourceSampler([2, 1], mix, batch_size=BATCH, seed=0)
    assert len(sampler) == -(-len(mix) // BATCH) * BATCH
    loader = DataLoader(mix, batch_size=BATCH, sampler=sampler, collate_fn=lambda batch: batch)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append([sample for batch in loader for sample in batch])
        assert len(epochs[-1]) == len(sampler)
    first = [s['position'] if isinstance(s, dict) else None for s in epochs[1][:1]]
    assert first in ([len(sampler)], [None])  # the stream goes on: no epoch replays the last
    assert epochs[0] != epochs[1]


@pytest.mark.slow
def test_two_ranks_end_every_epoch_on_the_same_step(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
         str(REPO / 'tests' / 'epoch_run.py'), '--out', str(tmp_path), '--batch-size', '2'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]
    lengths = epoch_lengths(4)  # 2 ranks x batch 2
    for name in ('epoch-loop', 'resumable'):
        counts = [check_epochs(run[name], lengths, 4, (2 * rank, None)) for rank, run in enumerate(ranks)]
        assert counts == [lengths, lengths], name
        for step0, step1 in zip(ranks[0][name], ranks[1][name]):  # the same bucket and epoch at every step
            assert (step0['bucket'][0], step0['epoch'][0]) == (step1['bucket'][0], step1['epoch'][0])
