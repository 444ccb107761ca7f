"""The batch handoff: what a DataLoader worker spends per sample to give its batch to the main
process, with the pixels stacked into private memory (``torch.stack``: the worker then copies the
batch into shared memory a second time when it sends it) against stacked straight into shared
memory (``collate_functions.stack``, as torch's ``default_collate`` does in a worker).

2 workers, batch 32, JPEGs of 1024-1536 px cropped and resized to 512 (a 96 MiB batch of float32
pixels): worker CPU per sample (the workers' user + system time, from ``RUSAGE_CHILDREN`` once they
have exited), in interleaved rounds, medians; the batches of both are compared bit for bit.

    PYTHONPATH=. .venv/bin/python bench/bench_handoff.py [--small]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The workers fork after the tokenizer has run: it runs single-threaded there (and says nothing).
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

from bench.bench_sample import JPEG_SIZES, _template, make_dataset  # noqa: E402
from src.datasets import collate_functions  # noqa: E402
from src.datasets.collate_functions import collate_func_gen  # noqa: E402


def collate_private(instances, pad_index=0):
    """collate_func_gen as it was: the pixels stacked into the worker's private memory."""
    original = collate_functions.stack
    collate_functions.stack = lambda tensors: torch.stack(list(tensors))
    try:
        return collate_func_gen(instances, pad_index)
    finally:
        collate_functions.stack = original


def run(dataset, collate, batches: int, batch_size: int) -> tuple[float, list]:
    """Worker CPU seconds per sample, and a digest of every batch."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=2, collate_fn=collate,
                        sampler=[i % len(dataset) for i in range(batches * batch_size)],
                        persistent_workers=False)
    digests = [(float(batch['data']['pixel_values'].double().sum()), batch['data']['input_ids'].sum().item())
               for batch in loader]
    del loader  # its workers exit: their time is in RUSAGE_CHILDREN now
    time.sleep(0.5)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / (batches * batch_size), digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--small', action='store_true', help='fewer batches and rounds')
    args = parser.parse_args()
    batches, rounds, batch_size = (2, 1, 32) if args.small else (6, 3, 32)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp), 'JPEG', JPEG_SIZES, 48, 512, _template())
        results = {'torch.stack (private memory)': [], 'stack into shared memory': []}
        digests = {}
        for _ in range(rounds):
            for label, collate in zip(results, (collate_private, collate_func_gen)):
                seconds, digest = run(dataset, collate, batches, batch_size)
                results[label].append(seconds)
                digests.setdefault(label, digest)
        assert len({tuple(d) for d in digests.values()}) == 1, 'the two collates gave different batches'
        print(f'{batches} batches of {batch_size} (512 px) per round, {rounds} rounds, 2 workers; worker CPU per sample')
        for label, values in results.items():
            print(f'   {label:<32}{1e3 * statistics.median(values):7.2f} ms   (rounds: '
                  f'{", ".join(f"{1e3 * v:.2f}" for v in values)})')
        old, new = (statistics.median(v) for v in results.values())
        print(f'   saved: {1e3 * (old - new):.2f} ms a sample ({old / new:.2f}x); the batches are bit for bit the same')


if __name__ == '__main__':
    main()
