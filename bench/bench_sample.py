"""What one training sample costs against its decode floor, and where the rest goes.

``CaptionDataset.__getitem__`` (index record, caption, file read, header checks, crop, decode,
resize, normalisation, prompt tokenization) is timed per sample against the decode alone: the
picture's bytes, already in memory, decoded by the decoder the dataset uses at the scale the sample
needs (a JPEG drafted as ``image_io`` drafts it; a PNG decoded whole, with pyspng where the dataset
uses it, else Pillow) and nothing else. The ratio is what the data pipeline adds to the work no
loader can avoid. Each stage is then timed alone on the same samples.

CPU time of one thread, as a DataLoader worker runs (torch.set_num_threads(1)); medians of
interleaved rounds. A shared machine slows every path alike, so ratios hold where absolute
milliseconds drift. Files stay in the page cache: storage is bench_tar / bench_object_store's concern.

    PYTHONPATH=. .venv/bin/python bench/bench_sample.py [--small]
"""
from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import pyspng
import torch
from PIL import Image

from src.datasets.sample import image_io, planes
from src.datasets.index.captions import resolve_caption
from src.datasets.storage import images
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.prepare.resize import shrink_image
from src.synthetic.images import encode_image
from src.synthetic.tokenizer import build_tokenizer

# The JPEGs (1024-1536 px a side, as LAION / Midjourney downloads hold), the same prepared
# with pretokenize=True (prompt ids stored once: src.datasets.index.prompt_ids), the same prepared with
# --resize-to 512 (src.prepare.resize.shrink_image), and DALL-E 3's PNGs: (format, sizes, short
# side the files are shrunk to, pretokenize).
JPEG_SIZES = [(1024, 1024), (1536, 1024), (1024, 1536), (1280, 1280), (1536, 1536), (1344, 1024)]
CASES = {
    'JPEG 1024-1536 px': ('JPEG', JPEG_SIZES, None, False),
    'JPEG 1024-1536 px, pretokenize=True': ('JPEG', JPEG_SIZES, None, True),
    'JPEG 1024-1536 px prepared with --resize-to 512': ('JPEG', JPEG_SIZES, 512, False),
    'PNG 1024 px': ('PNG', [(1024, 1024), (1024, 1024), (1280, 1024)], None, False),
}
# Captions of the length these datasets hold: a short one, a Midjourney prompt, a long recaption.
CAPTIONS = [
    'a red fox sitting in the snow at dawn, photorealistic',
    'An astronaut riding a horse on the moon, digital art, trending on artstation --ar 3:2 --v 5.2',
    'A watercolor painting of a lighthouse on a cliff above a stormy sea. Waves crash against the '
    'rocks below while gulls circle the lamp; the sky is a deep grey with a single break of warm '
    'light on the horizon, and the brush strokes are loose and wet, in the style of a sketchbook.',
]


def make_dataset(folder: Path, fmt: str, shapes: list[tuple[int, int]], count: int, image_size: int,
                 template: dict, resize_to: int | None = None, pretokenize: bool = False) -> CaptionDataset:
    (folder / 'images').mkdir(parents=True)
    records = []
    for i in range(count):
        width, height = shapes[i % len(shapes)]
        name = f'{i:04d}.{fmt.lower()}'
        (folder / 'images' / name).write_bytes(encode_image(width, height, fmt, 'RGB', seed=i, quality=90))
        if resize_to:
            shrink_image(str(folder / 'images' / name), resize_to)
        records.append({'image': name, 'caption': CAPTIONS[i % len(CAPTIONS)]})
    (folder / 'data.json').write_text(json.dumps(records))
    tokenizer = build_tokenizer(folder / 'tokenizer')
    return CaptionDataset(data_path=str(folder / 'data.json'), image_folder=str(folder / 'images'),
                          tokenizer=_tokenizer(tokenizer), prompt_template=template,
                          image_size=image_size, unconditional=0.1, seed=0, pretokenize=pretokenize)


def _tokenizer(path: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def _template() -> dict:
    from mmengine.config import Config
    return Config.fromfile(str(Path(__file__).parents[1] / 'configs' / 'processors.py')).prompt_template.to_dict()


class Sample:
    """One sample's inputs, computed once, so that each stage can be timed alone."""

    def __init__(self, dataset: CaptionDataset, idx: int):
        self.dataset, self.idx = dataset, idx
        self.record = dataset.index[idx]
        self.file = self.record[dataset.image_key]
        self.data = dataset.read_image(self.file)
        self.rng = random.Random(idx)
        self.target = (dataset.image_size, dataset.image_size)
        img = images.open_image(self.data, self.file)
        self.box = image_io.random_square_box(images.oriented_size(img), random.Random(idx))
        self.stored_box = image_io._stored_box(self.box, images.exif_orientation(img), img.size)
        self.spng = image_io._spng_decodes(img)  # decided here: the floor is the decode alone
        self.region = image_io._decode_region(img, self.stored_box, self.target)
        self.square = image_io._resize(self.region, self.target)
        self.caption = resolve_caption(self.record, dataset.cap_keys, dataset.read_annotation)

    def decode_floor(self) -> None:
        """The decode alone, as the dataset's decoder does it for this sample."""
        if self.spng:
            pyspng.load(self.data, 'RGB')
        else:
            self.pillow_decode()

    def pillow_decode(self) -> None:
        """Pillow's decode at the scale the sample needs, whatever the dataset uses (the reference)."""
        img = Image.open(io.BytesIO(self.data))
        reduction = image_io._draft_reduction(image_io._ratio(self.stored_box, self.target))
        if reduction > 1:
            img.draft('RGB', (img.width // reduction, img.height // reduction))
        img.load()

    # The stages of __getitem__, each alone.
    def index(self) -> None:
        resolve_caption(self.dataset.index[self.idx], self.dataset.cap_keys, self.dataset.read_annotation)

    def read(self) -> None:
        self.dataset.read_image(self.file)

    def header(self) -> None:
        img = images.open_image(self.data, self.file)
        size = images.oriented_size(img)
        image_io.check_size(size, self.file)
        image_io.random_square_box(size, random.Random(self.idx))

    def decode_and_crop(self) -> None:
        image_io._decode_region(images.open_image(self.data, self.file), self.stored_box, self.target)

    def resize(self) -> None:
        image_io._resize(self.region, self.target)

    def normalise(self) -> None:
        planes.float_planes(self.square)

    def tokenize(self) -> None:
        self.dataset.process_text(self.caption, self.rng, self.dataset._stored_ids(self.idx))

    def whole(self) -> None:
        self.dataset[self.idx]


BATCH = 16  # samples a __getitems__ call reads, as a DataLoader worker asks for a batch
STAGES = ['index', 'read', 'header', 'decode_and_crop', 'resize', 'normalise', 'tokenize']


def measure(samples: list[Sample] | list[SampleBatch], methods: list[str], rounds: int) -> dict[str, list[float]]:
    """CPU ms per sample of each method, one value per round: within a round the methods take
    turns on each sample (the order turning too), so that drift on a shared machine falls on all
    of them alike and a ratio of two methods is taken within one round. One untimed round first."""
    times = {method: [] for method in methods}
    for round_ in range(rounds + 1):
        spent = dict.fromkeys(methods, 0.0)
        for i, sample in enumerate(samples):
            turn = (i + round_) % len(methods)
            for method in methods[turn:] + methods[:turn]:
                start = time.process_time()
                getattr(sample, method)()
                spent[method] += time.process_time() - start
        if round_:
            for method in methods:
                times[method].append(spent[method] / len(samples) * 1e3)
    return times


class SampleBatch:
    """Samples read as a DataLoader worker reads a batch (``__getitems__``), against their floors."""

    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def decode_floor(self) -> None:
        for sample in self.samples:
            sample.decode_floor()

    def batch(self) -> None:
        self.samples[0].dataset.__getitems__([sample.idx for sample in self.samples])


def measure_batches(samples: list[Sample], rounds: int, size: int) -> dict[str, list[float]]:
    """``measure`` of batches of ``size`` samples, in CPU ms per sample."""
    batches = [SampleBatch(samples[i:i + size]) for i in range(0, len(samples) - size + 1, size)]
    times = measure(batches, ['decode_floor', 'batch'], rounds)
    return {method: [value / size for value in values] for method, values in times.items()}


def ratio(times: dict[str, list[float]], over: str, under: str = 'decode_floor') -> float:
    return statistics.median(a / b for a, b in zip(times[over], times[under]))


def median(times: dict[str, list[float]], method: str) -> float:
    return statistics.median(times[method])


def report(label: str, samples: list[Sample], rounds: int) -> None:
    by_shape: dict[tuple[int, int], list[Sample]] = {}
    for sample in samples:
        by_shape.setdefault(Image.open(io.BytesIO(sample.data)).size, []).append(sample)
    print(f'\n{label}: {len(samples)} samples to {samples[0].dataset.image_size} px, '
          f'CPU ms per sample, medians of {rounds} rounds; ratios taken within each round')
    print(f'{"picture":<12}{"decode floor":>14}{"Pillow decode":>15}{"__getitem__":>13}{"vs floor":>10}')
    methods = ['decode_floor', 'pillow_decode', 'whole']
    for (width, height), group in sorted(by_shape.items()) + [(('all', ''), samples)]:
        t = measure(group, methods, rounds)
        name = f'{width}x{height}' if height else width
        print(f'{name:<12}{median(t, "decode_floor"):>14.2f}{median(t, "pillow_decode"):>15.2f}'
              f'{median(t, "whole"):>13.2f}{ratio(t, "whole"):>9.2f}x')
    size = min(BATCH, len(samples))
    t = measure_batches(samples, rounds, size)
    print(f'{"batches":<12}{median(t, "decode_floor"):>14.2f}{"":>15}{median(t, "batch"):>13.2f}{ratio(t, "batch"):>9.2f}x'
          f'  (all, through __getitems__ {size} at a time, as a DataLoader worker reads them)')

    stages = measure(samples, STAGES + ['decode_floor', 'whole'], rounds)
    print('where __getitem__ goes (each stage alone, in turn with the others):')
    for stage in STAGES:
        note = f'  (the decode floor: {median(stages, "decode_floor"):.2f})' if stage == 'decode_and_crop' else ''
        print(f'  {stage:<18}{median(stages, stage):>7.2f} ms{note}')
    rest = median(stages, 'whole') - sum(median(stages, s) for s in STAGES)
    print(f'  {"the rest":<18}{rest:>7.2f} ms  (dispatch, failure accounting, caches the stages alone keep warm)')
    print(f'  {"__getitem__":<18}{median(stages, "whole"):>7.2f} ms = {ratio(stages, "whole"):.2f}x the decode floor')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--small', action='store_true', help='a few samples and 2 rounds: a quick check')
    parser.add_argument('--per-shape', type=int, default=8, help='samples of each picture size')
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--image-size', type=int, default=512)
    parser.add_argument('--cases', type=int, nargs='+', default=range(len(CASES)), metavar='N',
                        help='which cases to run, by position (0: JPEG, 1: pretokenize, 2: --resize-to, 3: PNG)')
    args = parser.parse_args()
    per_shape, rounds = (2, 2) if args.small else (args.per_shape, args.rounds)
    torch.set_num_threads(1)  # as in a DataLoader worker; more threads would count in CPU time
    template = _template()
    with tempfile.TemporaryDirectory() as tmp:
        for n, (label, (fmt, shapes, resize_to, pretokenize)) in enumerate(CASES.items()):
            if n not in args.cases:
                continue
            dataset = make_dataset(Path(tmp) / str(n), fmt, shapes, per_shape * len(shapes), args.image_size,
                                   template, resize_to, pretokenize)
            report(label, [Sample(dataset, i) for i in range(len(dataset))], rounds)


if __name__ == '__main__':
    main()
