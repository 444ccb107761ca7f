"""Which decoder a data worker should use, per format: every one a user could install, side by side.

For each format the same files are decoded to an RGB uint8 array by each decoder this environment
has (the others are listed as missing), single-threaded as in a DataLoader worker, median of
interleaved rounds (CPU time, which holds steady when other jobs share the machine). Each decoder's
pixels are compared with Pillow's full decode: mean and largest absolute difference in 0..255.

- JPEG (1536x1024 / 1024x1536, quality 90): Pillow full and draft (libjpeg's DCT scaling to 1/2,
  what the dataset uses when it trains at 512), simplejpeg and PyTurboJPEG (libjpeg-turbo, also
  scaled), torchvision.io (full size only; it cannot scale).
- PNG (1024x1024 RGB, as DALL-E 3's data): Pillow, pyspng, torchvision.io.
- WebP (1024x1024, quality 90): Pillow, torchvision.io.

``--workers 2`` decodes the same files as DataLoader workers do (forked, one thread each, two at
once on two cores): each decode's CPU time in its worker, and the files a second together. One
thread alone has the caches and the memory bus to itself; two workers share them, so a ranking
measured on one thread may not hold in workers (see bench/RESULTS.md).

pillow-simd replaces Pillow in its environment, so it is measured by running this script with that
environment's Python (see bench/RESULTS.md); the rows then say which Pillow was loaded.

    PYTHONPATH=. .venv/bin/python bench/bench_decoders.py [--small] [--workers 2]
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Callable

import numpy as np
from PIL import Image

from src.synthetic.images import encode_image


def _pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def _pillow_draft(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.draft('RGB', (img.width // 2, img.height // 2))
    return np.asarray(img.convert('RGB'))


def _optional_decoders() -> dict[str, dict[str, Callable[[bytes], np.ndarray] | str]]:
    """Per format: name -> decoder, or name -> why it is missing."""
    decoders = {'JPEG': {}, 'PNG': {}, 'WEBP': {}}
    try:
        import simplejpeg
        decoders['JPEG']['simplejpeg'] = lambda data: simplejpeg.decode_jpeg(data, 'RGB')
        decoders['JPEG']['simplejpeg 1/2'] = lambda data: simplejpeg.decode_jpeg(data, 'RGB', min_factor=2)
        decoders['JPEG']['simplejpeg 1/2 fastdct+fastupsample'] = lambda data: simplejpeg.decode_jpeg(
            data, 'RGB', fastdct=True, fastupsample=True, min_factor=2)
    except ImportError as exc:
        decoders['JPEG']['simplejpeg'] = f'not installed ({exc.name})'
    try:
        import turbojpeg
        jpeg = turbojpeg.TurboJPEG()
        decoders['JPEG']['PyTurboJPEG'] = lambda data: jpeg.decode(data, pixel_format=turbojpeg.TJPF_RGB)
        decoders['JPEG']['PyTurboJPEG 1/2'] = lambda data: jpeg.decode(
            data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(1, 2))
    except (ImportError, RuntimeError, OSError) as exc:  # the Python module, or libturbojpeg itself
        decoders['JPEG']['PyTurboJPEG'] = f'not usable ({exc})'.splitlines()[0]
    try:
        import pyspng
        decoders['PNG']['pyspng'] = lambda data: pyspng.load(data, 'RGB')
    except ImportError as exc:
        decoders['PNG']['pyspng'] = f'not installed ({exc.name})'
    try:
        import torch
        import torchvision.io as tio

        def via(decode):
            return lambda data: decode(torch.frombuffer(bytearray(data), dtype=torch.uint8)).permute(1, 2, 0).numpy()
        decoders['JPEG']['torchvision.io'] = via(lambda t: tio.decode_jpeg(t, mode=tio.ImageReadMode.RGB))
        decoders['PNG']['torchvision.io'] = via(lambda t: tio.decode_png(t, mode=tio.ImageReadMode.RGB))
        decoders['WEBP']['torchvision.io'] = via(lambda t: tio.decode_webp(t, mode=tio.ImageReadMode.RGB))
    except ImportError as exc:
        for fmt in decoders:
            decoders[fmt]['torchvision.io'] = f'not installed ({exc.name})'
    return decoders


def make_files(fmt: str, count: int) -> list[bytes]:
    shapes = [(1536, 1024), (1024, 1536)] if fmt == 'JPEG' else [(1024, 1024)]
    return [encode_image(*shapes[i % len(shapes)], fmt, 'RGB', seed=i, quality=90) for i in range(count)]


def cpu_ms(decode: Callable[[bytes], np.ndarray], files: list[bytes]) -> float:
    start = time.process_time()
    for data in files:
        decode(data)
    return (time.process_time() - start) / len(files) * 1e3


class _Decodes:
    """A map-style dataset whose item ``i`` decodes file ``i % len(files)`` and returns the CPU ms
    it took in its worker (not the pixels: the handoff is bench_handoff's concern)."""

    def __init__(self, decode: Callable[[bytes], np.ndarray], files: list[bytes], repeats: int):
        self.decode, self.files, self.repeats = decode, files, repeats

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    def __getitem__(self, i: int) -> float:
        start = time.process_time()
        self.decode(self.files[i % len(self.files)])
        return (time.process_time() - start) * 1e3


def _worker_init(_):
    import torch
    torch.set_num_threads(1)


def worker_ms(decode: Callable[[bytes], np.ndarray], files: list[bytes], workers: int) -> tuple[float, float]:
    """(median CPU ms per file in a worker, files per second) decoding ``files`` twice over in
    ``workers`` DataLoader workers at once."""
    from torch.utils.data import DataLoader
    loader = DataLoader(_Decodes(decode, files, 2), batch_size=None, num_workers=workers,
                        worker_init_fn=_worker_init, prefetch_factor=4)
    it = iter(loader)
    next(it)  # the workers started and warm: the first decode loads libraries and tables
    start = time.perf_counter()
    times = [float(ms) for ms in it]
    return statistics.median(times), len(times) / (time.perf_counter() - start)


def survey(fmt: str, decoders: dict, files: list[bytes], rounds: int) -> list[tuple]:
    usable = {name: d for name, d in decoders.items() if callable(d)}
    for decode in usable.values():  # warm-up: first calls load libraries and tables
        decode(files[0])
    times = {name: [] for name in usable}
    for _ in range(rounds):  # interleaved, so drift on a shared machine hits every decoder alike
        for name, decode in usable.items():
            times[name].append(cpu_ms(decode, files))
    reference = [_pillow(data).astype(np.int16) for data in files]
    rows = []
    for name, decoder in decoders.items():
        if not callable(decoder):
            rows.append((name, None, None, None, decoder))
            continue
        means, worst = [], 0
        for data, ref in zip(files, reference):
            pixels = np.asarray(decoder(data)).astype(np.int16)
            if pixels.shape != ref.shape:  # a scaled decode: compare with Pillow's at the same scale
                ref = _pillow_draft(data).astype(np.int16)
            diff = np.abs(pixels - ref)
            means.append(float(diff.mean()))
            worst = max(worst, int(diff.max()))
        rows.append((name, statistics.median(times[name]), statistics.mean(means), worst, ''))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--small', action='store_true', help='4 files and 2 rounds: a quick check')
    parser.add_argument('--num-files', type=int, default=20)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--workers', type=int, default=0,
                        help='also decode in this many DataLoader workers at once (the decode floor as workers read)')
    args = parser.parse_args()
    num_files, rounds = (4, 2) if args.small else (args.num_files, args.rounds)
    try:  # torch's intra-op threads would count in CPU time; a DataLoader worker runs with one
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass

    pillow = f'Pillow {Image.__version__}' + (' (pillow-simd)' if 'post' in Image.__version__ else '')
    optional = _optional_decoders()
    print(f'{pillow}; {num_files} files per format, median CPU ms per file of {rounds} interleaved rounds, '
          f'one thread; |diff| against Pillow\'s full decode (a scaled decode: against Pillow\'s draft)')
    for fmt in ('JPEG', 'PNG', 'WEBP'):
        files = make_files(fmt, num_files)
        decoders = {pillow: _pillow}
        if fmt == 'JPEG':
            decoders[f'{pillow} draft 1/2'] = _pillow_draft
        decoders.update(optional[fmt])
        rows = survey(fmt, decoders, files, rounds)
        bits = statistics.mean(len(d) for d in files) * 8 / (1024 * 1536 if fmt == 'JPEG' else 1024 * 1024)
        print(f'\n{fmt} ({bits:.1f} bits per pixel)')
        print(f'{"decoder":<44}{"CPU ms":>8}{"vs Pillow":>11}{"mean|diff|":>12}{"max|diff|":>11}')
        baseline = rows[0][1]
        for name, ms, mean, worst, note in rows:
            if ms is None:
                print(f'{name:<44}{note}')
            else:
                print(f'{name:<44}{ms:>8.2f}{baseline / ms:>10.2f}x{mean:>12.3f}{worst:>11d}')
        if args.workers:
            print_workers(decoders, files, rounds, args.workers)


def print_workers(decoders: dict, files: list[bytes], rounds: int, workers: int) -> None:
    """The same decoders in ``workers`` DataLoader workers: CPU ms per file in a worker (against one
    thread alone above) and files a second, medians of interleaved rounds."""
    usable = {name: d for name, d in decoders.items() if callable(d)}
    runs = {name: [] for name in usable}
    for _ in range(rounds):
        for name, decode in usable.items():
            runs[name].append(worker_ms(decode, files, workers))
    print(f'  in {workers} DataLoader workers at once{"":<11}{"CPU ms":>8}{"vs Pillow":>11}{"files/s":>12}')
    base = statistics.median(ms for ms, _ in runs[next(iter(usable))])
    for name, results in runs.items():
        ms = statistics.median(m for m, _ in results)
        rate = statistics.median(r for _, r in results)
        print(f'  {name:<42}{ms:>8.2f}{base / ms:>10.2f}x{rate:>12.1f}')


if __name__ == '__main__':
    main()
