"""The batch handoff: what a DataLoader worker spends per sample to give its batch to the main
process, with the pixels stacked into private memory (``torch.stack``: the worker then copies the
batch into shared memory a second time when it sends it) against stacked straight into shared
memory (``collate_functions.stack``, as torch's ``default_collate`` does in a worker), against
uint8 pixels (``CaptionDataset(pixel_dtype='uint8')``) normalised after the handoff by
``T2IDataPreprocessor`` (on a GPU, on the device; here on the main process's CPU, counted).

2 workers, batch 32, JPEGs of 1024-1536 px cropped and resized to 512 (a 96 MiB batch of float32
pixels): worker CPU per sample (the workers' user + system time, from ``RUSAGE_CHILDREN`` once they
have exited), main-process CPU per sample and pixel bytes handed over per sample, in interleaved
rounds, medians; the batches the model sees are compared bit for bit.

    PYTHONPATH=. .venv/bin/python bench/bench_handoff.py [--small]
"""
from __future__ import annotations

import argparse
import copy
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
from src.datasets.data_preprocessor import T2IDataPreprocessor  # noqa: E402


def collate_private(instances, pad_index=0):
    """collate_func_gen as it was: the pixels stacked into the worker's private memory."""
    original = collate_functions.stack
    collate_functions.stack = lambda tensors: torch.stack(list(tensors))
    try:
        return collate_func_gen(instances, pad_index)
    finally:
        collate_functions.stack = original


def run(dataset, collate, batches: int, batch_size: int, preprocess=None) -> tuple[float, float, float, list]:
    """Worker and main-process CPU seconds per sample, pixel bytes handed over per sample, and a
    digest of every batch as the model sees it (after ``preprocess``, on the main process's CPU
    here: on a GPU it is one elementwise kernel on the device)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=2, collate_fn=collate,
                        sampler=[i % len(dataset) for i in range(batches * batch_size)],
                        persistent_workers=False)
    digests, moved = [], 0
    main_start = time.process_time()
    for batch in loader:
        moved += batch['data']['pixel_values'].nbytes
        if preprocess is not None:
            batch = preprocess(batch)
        data = batch['data']
        digests.append((float(data['pixel_values'].double().sum()), data['input_ids'].sum().item()))
    main_cpu = time.process_time() - main_start
    del loader  # its workers exit: their time is in RUSAGE_CHILDREN now
    time.sleep(0.5)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    samples = batches * batch_size
    return cpu / samples, main_cpu / samples, moved / samples, digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--small', action='store_true', help='fewer batches and rounds')
    args = parser.parse_args()
    batches, rounds, batch_size = (2, 1, 32) if args.small else (6, 3, 32)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp), 'JPEG', JPEG_SIZES, 48, 512, _template())
        light = copy.copy(dataset)
        light.pixel_dtype = 'uint8'  # as CaptionDataset(pixel_dtype='uint8') reads
        preprocessor = T2IDataPreprocessor()
        cases = {'torch.stack (private memory)': (dataset, collate_private, None),
                 'stack into shared memory': (dataset, collate_func_gen, None),
                 'uint8 + T2IDataPreprocessor': (light, collate_func_gen, preprocessor)}
        results = {label: [] for label in cases}
        digests = {}
        for _ in range(rounds):
            for label, (data, collate, preprocess) in cases.items():
                *figures, digest = run(data, collate, batches, batch_size, preprocess)
                results[label].append(figures)
                digests.setdefault(label, digest)
        assert len({tuple(d) for d in digests.values()}) == 1, 'the handoffs gave different batches'
        print(f'{batches} batches of {batch_size} (512 px) per round, {rounds} rounds, 2 workers; per sample, medians '
              '(main: receiving the batch, and the uint8 row normalising it on this CPU)')
        print(f'   {"":<32}{"worker CPU":>12}{"main CPU":>12}{"bytes moved":>14}')
        medians = {}
        for label, rows in results.items():
            worker, main_cpu, moved = (statistics.median(column) for column in zip(*rows))
            medians[label] = worker, main_cpu
            print(f'   {label:<32}{1e3 * worker:9.2f} ms{1e3 * main_cpu:9.2f} ms{moved / 2 ** 20:10.2f} MiB'
                  f'   (worker rounds: {", ".join(f"{1e3 * row[0]:.2f}" for row in rows)})')
        (old, _), (new, new_main), (light_worker, light_main) = medians.values()
        print(f'   shared memory saved: {1e3 * (old - new):.2f} ms a sample ({old / new:.2f}x)')
        print(f'   uint8 against shared memory: worker {1e3 * (new - light_worker):.2f} ms a sample less '
              f'({new / light_worker:.2f}x), main {1e3 * (light_main - new_main):+.2f} ms; '
              'the batches the model sees are bit for bit the same')


if __name__ == '__main__':
    main()
