"""uint8 pixels -> float32 planes in [-1, 1]: the one-pass compiled loop against the array code a
user would write, and what compiling it costs a DataLoader worker.

1. The conversion alone, on the layouts the pipeline hands it (Pillow's 4-byte pixels as the resize
   leaves them, a 3-byte array as pyspng decodes, planes), with the caches flushed before each call
   as they are after a decode: torch.s ``x.float().div_(127.5).sub_(1)``, numpy in three passes (planes,
   buffered division, subtraction: this project's code before ``pixel_planes``), and
   ``pixel_planes.float_planes``. CPU ms, medians of interleaved rounds.
2. A DataLoader worker's first sample and its own memory (USS growth after 20 samples), with the
   loop compiled in the process that built the dataset (what ``CaptionDataset`` does) and, for
   comparison, left to each worker. Each case in a fresh interpreter; numba's disk cache is warm.

    PYTHONPATH=. .venv/bin/python bench/bench_pixel_planes.py [--small]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench._mem import MiB, private_and_proportional

_FLUSH = np.zeros(32 << 20, np.uint8)  # larger than the last-level cache


def torch_naive(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div_(127.5).sub_(1)


def numpy_three_passes(pixels: torch.Tensor) -> torch.Tensor:
    planar = np.ascontiguousarray(pixels.numpy())
    out = np.empty(planar.shape, np.float32)
    np.divide(planar, np.float32(127.5), out=out, dtype=np.float32)
    np.subtract(out, np.float32(1), out=out)
    return torch.from_numpy(out)


def float_planes(pixels: torch.Tensor) -> torch.Tensor:
    # Imported here: the worker cases below run in processes that must not have imported numba.
    from src.datasets.pixel_planes import float_planes as compiled
    return compiled(pixels)


METHODS = {'torch float().div_().sub_()': torch_naive, 'numpy, three passes': numpy_three_passes,
           'pixel_planes (numba)': float_planes}


def layouts(size: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    padded = torch.from_numpy(rng.integers(0, 256, (size, size, 4), dtype=np.uint8))
    packed = torch.from_numpy(rng.integers(0, 256, (size + 40, size + 60, 3), dtype=np.uint8))
    return {"Pillow's 4-byte pixels": padded.permute(2, 0, 1)[:3],
            'a crop of 3-byte pixels': packed[20:20 + size, 30:30 + size].permute(2, 0, 1),
            'planes': packed[:size, :size].permute(2, 0, 1).contiguous()}


def conversion(size: int, rounds: int) -> None:
    print(f'\n1. {size} x {size} px, CPU ms per conversion, caches flushed before each, '
          f'medians of {rounds} rounds')
    print(f'{"layout":<26}' + ''.join(f'{name:>26}' for name in METHODS)
          + f'{"numba vs numpy":>16}{"vs torch":>10}')
    for label, pixels in layouts(size).items():
        expected = torch_naive(pixels)
        for method in METHODS.values():
            assert torch.equal(method(pixels), expected), f'{method.__name__} differs on {label}'
        times = {name: [] for name in METHODS}
        for round_ in range(rounds):
            names = list(METHODS)
            for name in names[round_ % 3:] + names[:round_ % 3]:
                _FLUSH[::64] += 1
                start = time.process_time()
                METHODS[name](pixels)
                times[name].append((time.process_time() - start) * 1e3)
        medians = {name: statistics.median(values) for name, values in times.items()}
        torch_ms, numpy_ms, ours = medians.values()
        print(f'{label:<26}' + ''.join(f'{ms:>26.3f}' for ms in medians.values())
              + f'{numpy_ms / ours:>15.2f}x{torch_ms / ours:>9.2f}x')


def worker_case(compile_in_parent: bool, samples: int) -> dict:
    """Build a dataset in this (fresh) process, then read it through one forked DataLoader worker."""
    from torch.utils.data import DataLoader, Dataset
    from transformers import AutoTokenizer

    from bench.bench_sample import _template
    from src.datasets.text2image import caption_datasets
    from src.synthetic.images import encode_image
    from src.synthetic.tokenizer import build_tokenizer

    class Probe(Dataset):
        """The dataset's samples, each with how long it took and the worker's own memory after it."""
        def __init__(self, dataset):
            self.dataset = dataset

        def __len__(self):
            return samples

        def __getitem__(self, idx):
            start = time.perf_counter()
            self.dataset[idx]
            return dict(seconds=time.perf_counter() - start, uss_mib=_uss_mib(), start_uss_mib=_START['uss_mib'])

    if not compile_in_parent:
        caption_datasets.compile_pixel_loop = lambda: None  # the counterfactual: each worker compiles
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / 'images').mkdir()
        for i in range(samples):
            (folder / 'images' / f'{i}.jpg').write_bytes(encode_image(1024, 768, 'JPEG', 'RGB', seed=i))
        (folder / 'data.json').write_text(json.dumps([{'image': f'{i}.jpg', 'caption': f'picture {i}'}
                                                      for i in range(samples)]))
        tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(folder / 'tokenizer'))
        dataset = caption_datasets.CaptionDataset(
            data_path=str(folder / 'data.json'), image_folder=str(folder / 'images'), tokenizer=tokenizer,
            prompt_template=_template(), image_size=512, seed=0)
        loader = DataLoader(Probe(dataset), batch_size=None, num_workers=1,
                            multiprocessing_context='fork', worker_init_fn=_record_start)
        results = list(loader)
    return dict(first_sample_s=results[0]['seconds'],
                uss_growth_mib=results[-1]['uss_mib'] - results[-1]['start_uss_mib'])


_START: dict = {}  # set in the worker


def _record_start(_worker_id: int) -> None:
    torch.set_num_threads(1)
    _START['uss_mib'] = _uss_mib()


def _uss_mib() -> float:
    return private_and_proportional()[0] / MiB


def workers(samples: int) -> None:
    print(f'\n2. one forked DataLoader worker, {samples} samples of 1024 x 768 JPEGs to 512 px')
    print(f'{"loop compiled":<34}{"first sample":>14}{"worker USS growth":>19}')
    for compile_in_parent, label in [(True, 'in the parent (CaptionDataset)'), (False, 'in each worker')]:
        out = subprocess.run([sys.executable, __file__, '--worker-case', str(int(compile_in_parent)),
                              '--samples', str(samples)], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f'{label:<34}{result["first_sample_s"]:>12.2f} s{result["uss_growth_mib"]:>15.0f} MiB')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--small', action='store_true', help='fewer rounds and samples: a quick check')
    parser.add_argument('--worker-case', type=int, choices=(0, 1), help=argparse.SUPPRESS)
    parser.add_argument('--samples', type=int, default=20, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_case is not None:
        print(json.dumps(worker_case(bool(args.worker_case), args.samples)))
        return
    torch.set_num_threads(1)  # as in a DataLoader worker
    conversion(512, 20 if args.small else 200)
    workers(5 if args.small else 20)


if __name__ == '__main__':
    main()
