"""The ledger: one epoch of a bucketed two-source mix, under torchrun with gloo on 127.0.0.1, read
uninterrupted (2 ranks x 2 workers x batch 3) and interrupted and resumed on other cluster shapes.

- Global batch kept (6): 2 ranks x 2 workers -> 3 ranks x 1 worker -> 1 rank x 2 workers. Every
  global batch, sample for sample (record, pixels as cropped, prompt as dropped or kept), equals the
  uninterrupted run's; so do the multisets.
- Global batch changed (6 -> 4, 2 ranks x 2 then 2 ranks x 1 worker): every record of each bucket's
  interrupted pass is read exactly once across the two runs, every batch one bucket of one source,
  and the epoch ends where the loop says (max_epochs=1). A sample's crop and dropout are keyed on its
  place in its bucket's stream (source, bucket, pass, slot), which batching does not move: every
  place both runs read gives the same (record, pixels, prompt) hash, so the multisets of hashes are
  equal over those places, which hold every pass of a bucket that both runs complete. (Which places
  of the streams' last, partial passes an epoch reaches depends on the global batch: the turns of
  the mix and the buckets' batch counts are counted in batches; those few differ.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from test_buckets import write_bucket_data

REPO = Path(__file__).resolve().parents[1]
STOPS = (5, 9)  # the interruptions, in global batches of the one epoch (13 batches of 6)


def leg(tmp_path, data, tokenizer_path, name, ranks, workers, batch, stop=None, resume=None) -> list[list]:
    """One torchrun leg; its global batches (the ranks' ledger entries, rank after rank, per step)."""
    work = tmp_path / name
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(ranks),
               str(REPO / 'tests' / 'ledger_run.py'), '--data', *map(str, data), '--tokenizer', tokenizer_path,
               '--work-dir', str(work), '--batch-size', str(batch), '--workers', str(workers)]
    command += ['--stop-at', str(stop)] if stop else []
    command += ['--resume-from', str(tmp_path / resume)] if resume else []
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', TOKENIZERS_PARALLELISM='false')
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    per_rank = [json.loads((work / f'ledger-rank{r}.json').read_text()) for r in range(ranks)]
    assert len({len(batches) for batches in per_rank}) == 1  # every rank ends on the same step
    return [sum(step, []) for step in zip(*per_rank)]


@pytest.mark.slow
def test_the_ledger_of_an_epoch_resumed_on_other_cluster_shapes(tmp_path, tokenizer_path):
    # 52 records in 4 buckets (24, 16, 8, 4) and 26 in 4 (12, 8, 4, 2): 78, an epoch of 13 batches of 6.
    data = [write_bucket_data(tmp_path / 'a', count=56, sizes_in_index='all'),
            write_bucket_data(tmp_path / 'b', count=28, sizes_in_index='all')]
    whole = leg(tmp_path, data, tokenizer_path, 'whole', 2, 2, 3)
    assert len(whole) == 13 and all(len(batch) == 6 for batch in whole)

    first = leg(tmp_path, data, tokenizer_path, 'first', 2, 2, 3, stop=STOPS[0])
    second = leg(tmp_path, data, tokenizer_path, 'second', 3, 1, 2, stop=STOPS[1], resume=f'first/iter_{STOPS[0]}.pth')
    third = leg(tmp_path, data, tokenizer_path, 'third', 1, 2, 6, resume=f'second/iter_{STOPS[1]}.pth')
    kept = first + second + third
    assert kept == whole  # the same global batches, sample for sample
    assert Counter(e[2] for b in kept for e in b) == Counter(e[2] for b in whole for e in b)

    changed = first + leg(tmp_path, data, tokenizer_path, 'changed', 2, 1, 2, resume=f'first/iter_{STOPS[0]}.pth')
    assert [len(batch) for batch in changed] == [6] * STOPS[0] + [4] * (len(changed) - STOPS[0])
    streams = defaultdict(list)
    for batch in changed:
        assert len({entry[0] for entry in batch}) == 1  # one bucket of one source a batch
        streams[batch[0][0]] += [entry[1] for entry in batch]
    members = defaultdict(set)  # each stream's records, as far as any run read them
    for batch in whole + changed:
        for stream, record, _ in batch:
            members[stream].add(record)
    for stream, records in streams.items():  # each record once in each pass of its bucket's stream
        size = len(members[stream])
        for k in range(0, len(records), size):
            one_pass = records[k:k + size]
            assert len(set(one_pass)) == len(one_pass), stream
            assert len(one_pass) < size or set(one_pass) == members[stream], stream

    # The same samples at the same places of the bucket streams: equal multisets of hashes.
    ours, theirs = places(whole), places(changed)
    common = ours.keys() & theirs.keys()
    assert Counter(ours[p] for p in common) == Counter(theirs[p] for p in common)
    assert all(ours[p] == theirs[p] for p in common)
    for stream in streams:  # every pass that both runs complete is among them
        complete = min(passes_done(run, stream, len(members[stream])) for run in (ours, theirs))
        assert {p for p in ours if p[0] == stream and p[2] < complete} <= common, stream
        assert {p for p in theirs if p[0] == stream and p[2] < complete} <= common, stream
    assert len(common) >= 0.8 * sum(map(len, whole))  # the places the epoch's tails differ in are few


def places(batches) -> dict:
    """Each sample's place in its bucket's stream, (stream, record, pass), and its hash: a stream is
    read in order, batch after batch and rank after rank, each record once a pass."""
    seen, out = Counter(), {}
    for batch in batches:
        for stream, record, digest in batch:
            out[stream, record, seen[stream, record]] = digest
            seen[stream, record] += 1
    return out


def passes_done(run: dict, stream: str, size: int) -> int:
    """The passes of ``stream`` (``size`` records) that ``run`` read whole."""
    per_pass = Counter(p[2] for p in run if p[0] == stream)
    done = 0
    while per_pass[done] == size:
        done += 1
    return done
