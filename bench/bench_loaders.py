"""Loaders from local disk: the project's ``CaptionDataset`` reading webdataset-style tar shards in
place through its member index, against the loaders a user would pick for the same shards:
webdataset (a stream of shards through a shuffle buffer), wids (webdataset's indexed reader, over a
shard list JSON) and LitData (``litdata.optimize`` rewrites the samples into chunks, read by
``StreamingDataset``). The same samples, in one run, ratios printed.

The data: ``--images`` JPEG pictures of 1024-1536 px a side (as LAION / Midjourney downloads hold
them) with a caption json each, ``<shard>/<id>.jpg`` + ``<shard>/<id>.json`` in tars of 256 samples
(RedCaps' layout, which ``prepare_redcaps5m --no-extract`` indexes). Every loader turns bytes into
the same sample: ``image_io.load_pixel_values`` at 512 px (a random square crop; the peers seed it
with the sample's name) and the prompt's ids by the same tokenizer; all batch with the project's
``collate_func_gen`` (batch 16) in a DataLoader of 2 workers. Only the storage and loading layer
differs.

Each measurement runs in a fresh process (``_child.run_child``): one shuffled epoch, timed from the
construction of the dataset to its last batch. Printed per loader (medians over ``--rounds``, the
loaders' order rotated each round):

- samples/s over the epoch after the first batch;
- worker CPU per sample (the workers' user + system time, ``RUSAGE_CHILDREN`` once they exit);
- construction and time to the first batch;
- the workers' peak RSS and largest USS (a file a worker maps, as wids does, counts in both);
- preparation: the project's member index and index cache, wids' shard list, LitData's
  ``optimize``, and the bytes each writes beside the tars.

A last row, the decode floor, makes the same samples from bytes already in memory in the
DataLoader's workers: the cost no loading layer can remove. The files stay in the page cache (they
were just written, and are read once before the first round): this measures the loaders, not the
disk.

    PYTHONPATH=. .venv/bin/python bench/bench_loaders.py [--images 2048 --rounds 3 | --small] [--profile]

``--profile`` measures instead the project's sample path against the decode floor in one process
(no workers), and prints where the project's time goes.

Needs the ``bench`` extra (webdataset, which holds wids, and litdata) and psutil (``dev``).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import statistics
import sys
import tarfile
import tempfile
import time
from contextlib import redirect_stderr
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'bench'))
# The workers fork after the tokenizer has run: it runs single-threaded there (and says nothing).
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from _child import run_child  # noqa: E402
from bench_litdata import folder_bytes  # noqa: E402
from src.datasets.collate_functions import collate_func_gen  # noqa: E402
from src.datasets.sample.image_io import load_pixel_values  # noqa: E402

BATCH, WORKERS, IMAGE_SIZE, PER_SHARD = 16, 2, 512, 256
LOADERS = ('project', 'webdataset', 'wids', 'LitData')
FLOOR = 'decode floor'
IMG_START = '<img>'
WORDS = ('a red fox', 'an old lighthouse', 'a bowl of ramen', 'a mountain range', 'a cat with green eyes',
         'a city at night', 'a watercolor', 'a close-up photo', 'under a starry sky', 'in the snow at dawn',
         'digital art', 'studio lighting', 'top view', 'warm colours', 'on a cliff', 'by the sea')


# ---- the data -----------------------------------------------------------------------------------
def caption_of(i: int) -> str:
    rng = random.Random(f'caption-{i}')
    return f'{i}: ' + ', '.join(rng.sample(WORDS, rng.randint(3, 7)))


def write_shard(job: tuple[str, int, list[int]]) -> int:
    """One tar of ``<shard>/<id>.jpg`` + ``<shard>/<id>.json`` pairs: pictures of 1024-1536 px a
    side cut from a generated 1536 px one, each with a mark of its own (distinct bytes). Returns
    the bytes of the pictures."""
    from PIL import ImageDraw

    from src.synthetic.images import make_picture
    path, shard, ids = job
    base = make_picture(1536, 1536, seed=shard)
    total = 0
    with tarfile.open(path, 'w') as tar:
        for i in ids:
            rng = random.Random(i)
            width, height = rng.randint(1024, 1536), rng.randint(1024, 1536)
            left, top = rng.randint(0, 1536 - width), rng.randint(0, 1536 - height)
            picture = base.crop((left, top, left + width, top + height))
            x, y = rng.randrange(width - 200), rng.randrange(height - 200)
            ImageDraw.Draw(picture).rectangle((x, y, x + 200, y + 120), fill=tuple(rng.randrange(256) for _ in 'rgb'))
            buffer = io.BytesIO()
            picture.save(buffer, format='JPEG', quality=90)
            total += buffer.tell()
            for name, data in ((f'{shard:05d}/{i:06d}.jpg', buffer.getvalue()),
                               (f'{shard:05d}/{i:06d}.json', json.dumps({'re_caption': caption_of(i)}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return total


def write_shards(raw: Path, count: int) -> tuple[list[str], int]:
    """``count`` samples in tars of ``PER_SHARD`` (two at least: one a worker), written by 2
    processes; returns the tars and the bytes of the pictures."""
    raw.mkdir(parents=True)
    shards = max(2, -(-count // PER_SHARD))
    jobs = [(str(raw / f'{s:05d}.tar'), s, list(range(s, count, shards))) for s in range(shards)]
    with Pool(2) as pool:
        total = sum(pool.map(write_shard, jobs))
    return [path for path, _, _ in jobs], total


# ---- preparation: what each loader needs before it reads -----------------------------------------
def project_dataset(work: Path, tokenizer):
    from src.datasets.storage.tar_index import INDEX_NAME
    from src.datasets.text2image.caption_datasets import CaptionDataset
    root = work / 'data'
    template = dict(INSTRUCTION='{input}', GENERATION='{input}', CFG='', IMG_START_TOKEN=IMG_START)
    return CaptionDataset(str(root / 'redcaps5m_data.json'), image_folder=str(root / 'raw'),
                          cap_folder=str(root / 'raw'), tar_index=str(root / INDEX_NAME),
                          index_cache_dir=str(work / 'index_cache'), tokenizer=tokenizer,
                          prompt_template=template, image_size=IMAGE_SIZE, cap_source='re_caption',
                          unconditional=0, seed=0)


def prepare_project(work: Path, tokenizer) -> None:
    """The member index (``prepare_redcaps5m --no-extract``: data.json and tar_index.arrow), then
    the dataset's index cache (built on the first construction)."""
    from src.prepare.datasets import prepare_redcaps5m
    from src.prepare.tar_members import INDEX_MEMBERS
    report = prepare_redcaps5m(str(work / 'data'), num_processes=2, step=INDEX_MEMBERS)
    assert not report.index_error and report.exit_code() == 0, report.summary()
    project_dataset(work, tokenizer)


def prepare_wids(work: Path, shards: list[str]) -> None:
    """The shard list wids reads (what ``widsindex create`` writes, less the md5 sums): each tar's
    sample count and size."""
    import wids
    shardlist = [dict(url=shard, nsamples=wids.wids.compute_num_samples(shard), filesize=os.path.getsize(shard))
                 for shard in shards]
    (work / 'wids').mkdir()
    (work / 'wids' / 'shards.json').write_text(json.dumps(
        dict(__kind__='wids-shard-index-v1', wids_version=1, name='bench', shardlist=shardlist)))


def litdata_samples(shard: str):
    """``optimize``'s function: every sample of one tar, as LitData stores it (the JPEG as it came)."""
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    for name, data in members.items():
        if name.endswith('.jpg'):
            yield {'name': name, 'image': data,
                   'caption': json.loads(members[name[:-len('.jpg')] + '.json'])['re_caption']}


def prepare_litdata(work: Path, shards: list[str]) -> None:
    from litdata import optimize
    optimize(fn=litdata_samples, inputs=shards, output_dir=str(work / 'litdata'), chunk_bytes='64MB',
             num_workers=2, verbose=False, start_method='fork')  # spawn would re-import this script


# ---- the loaders ----------------------------------------------------------------------------------
def make_sample(name: str, image: bytes, caption: str, tokenizer) -> dict:
    """The peers' sample: the project's pixels (crop seeded by the name) and the same prompt ids."""
    return {'pixel_values': load_pixel_values(image, name, IMAGE_SIZE, random.Random(name)),
            'input_ids': torch.tensor(tokenizer.encode(caption + IMG_START), dtype=torch.long)}


def project_loader(work: Path, tokenizer):
    from mmengine.dataset import DefaultSampler
    dataset = project_dataset(work, tokenizer)
    return DataLoader(dataset, batch_size=BATCH, sampler=DefaultSampler(dataset, shuffle=True, seed=0),
                      num_workers=WORKERS, collate_fn=collate_func_gen)


def webdataset_loader(work: Path, tokenizer):
    import webdataset as wds

    def sample(item: dict) -> dict:
        return make_sample(item['__key__'] + '.jpg', item['jpg'], json.loads(item['json'])['re_caption'], tokenizer)

    shards = sorted(str(p) for p in (work / 'data' / 'raw').glob('*.tar'))
    dataset = (wds.WebDataset(shards, shardshuffle=len(shards), seed=0, empty_check=False).shuffle(1000)
               .map(sample).batched(BATCH, collation_fn=collate_func_gen, partial=True))
    return wds.WebLoader(dataset, batch_size=None, num_workers=WORKERS)


def in_place(url: str) -> str:
    """wids' local name of a shard: the file itself (by default it copies every shard to /tmp)."""
    return url


def wids_loader(work: Path, tokenizer):
    import wids

    def sample(item: dict) -> dict:  # wids hands each file as a stream over its mapped tar
        caption = json.loads(item['.json'].read())['re_caption']
        return make_sample(item['__key__'] + '.jpg', item['.jpg'].read(), caption, tokenizer)

    with redirect_stderr(io.StringIO()):  # it prints a line about itself on every construction
        dataset = wids.ShardListDataset(str(work / 'wids' / 'shards.json'), localname=in_place,
                                        transformations=[sample])
    sampler = wids.ChunkedSampler(dataset, chunksize=1000, shuffle=True, shufflefirst=True, seed=0)
    return DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=WORKERS, collate_fn=collate_func_gen)


def litdata_loader(work: Path, tokenizer):
    from litdata import StreamingDataLoader, StreamingDataset

    class Samples(StreamingDataset):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            return make_sample(item['name'], item['image'], item['caption'], tokenizer)

    dataset = Samples(str(work / 'litdata'), shuffle=True, seed=0)
    return StreamingDataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, collate_fn=collate_func_gen)


class InMemory(torch.utils.data.Dataset):
    """The decode floor: the same samples from bytes already in memory (read before the fork)."""

    def __init__(self, work: Path, tokenizer):
        self.tokenizer = tokenizer
        self.items = [item for shard in sorted((work / 'data' / 'raw').glob('*.tar'))
                      for item in litdata_samples(str(shard))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        item = self.items[index]
        return make_sample(item['name'], item['image'], item['caption'], self.tokenizer)


def floor_loader(work: Path, tokenizer):
    dataset = InMemory(work, tokenizer)
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS, collate_fn=collate_func_gen,
                      generator=torch.Generator().manual_seed(0))


BUILD = {'project': project_loader, 'webdataset': webdataset_loader, 'wids': wids_loader,
         'LitData': litdata_loader, FLOOR: floor_loader}


# ---- one epoch, in a fresh process --------------------------------------------------------------
class WorkerMemory:
    """The largest peak RSS and USS seen among this process's children (the DataLoader's workers)."""

    def __init__(self):
        self.rss = self.uss = 0

    def probe(self, uss: bool) -> None:
        import psutil

        from _mem import peak_rss, private_and_proportional
        for child in psutil.Process().children(recursive=True):
            try:
                self.rss = max(self.rss, peak_rss(child.pid))
                if uss:
                    self.uss = max(self.uss, private_and_proportional(child.pid)[0])
            except (OSError, RuntimeError, psutil.Error):
                pass  # a worker that has just exited


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def epoch(name: str, work: Path) -> dict:
    """One shuffled epoch of loader ``name``: times, worker CPU and memory, and what it yielded (each
    sample's prompt ids, the pixel shapes) for the check that all loaders give the same samples."""
    from transformers import AutoTokenizer
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(str(work / 'tokenizer'))
    tokenizer.encode('warm')
    memory = WorkerMemory()
    cpu = children_cpu()
    start = time.perf_counter()
    loader = BUILD[name](work, tokenizer)
    built = time.perf_counter()
    first, first_size, prompts, shapes = None, 0, [], set()
    for number, batch in enumerate(loader):
        data = batch['data']
        if first is None:
            first, first_size = time.perf_counter(), len(data['pixel_values'])
        shapes.add(tuple(data['pixel_values'].shape[1:]))
        prompts += [ids[mask.bool()].tolist() for ids, mask in zip(data['input_ids'], data['attention_mask'])]
        memory.probe(uss=number % 16 == 1)
    end = time.perf_counter()
    del loader
    time.sleep(0.5)  # the workers have exited and been waited for: their time is in RUSAGE_CHILDREN
    count = len(prompts)
    return dict(name=name, construct=built - start, first=first - built,
                rate=(count - first_size) / (end - first), cpu=(children_cpu() - cpu) / count,
                rss=memory.rss, uss=memory.uss, prompts=sorted(prompts), shapes=sorted(shapes))


def profile(work: Path, count: int) -> None:
    """In this process, without workers: CPU per sample of the project's batches (``__getitems__``
    and the collate) against the decode floor's on the same samples, then where the project's time
    goes (cProfile, by each function's own time)."""
    import cProfile
    import pstats

    from transformers import AutoTokenizer
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(str(work / 'tokenizer'))
    project, floor = project_dataset(work, tokenizer), InMemory(work, tokenizer)
    order = random.Random(0).sample(range(count), count)
    batches = [order[i:i + BATCH] for i in range(0, count, BATCH)]
    passes = {'project': lambda: [collate_func_gen(project.__getitems__(batch)) for batch in batches],
              FLOOR: lambda: [collate_func_gen([floor[i] for i in batch]) for batch in batches]}
    for name, run in list(passes.items()) * 2:
        start = time.process_time()
        run()
        print(f'{name}: {(time.process_time() - start) / count * 1e3:.2f} ms CPU a sample, in one process')
    profiler = cProfile.Profile()
    profiler.runcall(passes['project'])
    pstats.Stats(profiler, stream=sys.stdout).sort_stats('tottime').print_stats(15)


# ---- the run ---------------------------------------------------------------------------------------
def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def prepare_all(work: Path, count: int) -> dict:
    """The data, the tokenizer and each loader's preparation (seconds, bytes written)."""
    from transformers import AutoTokenizer

    from src.synthetic.tokenizer import build_tokenizer
    start = time.perf_counter()
    shards, picture_bytes = write_shards(work / 'data' / 'raw', count)
    written = time.perf_counter() - start
    tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(work / 'tokenizer'))
    tars = folder_bytes(work / 'data')
    prepared = {'project': (timed(prepare_project, work, tokenizer),
                            folder_bytes(work / 'data') - tars + folder_bytes(work / 'index_cache')),
                'webdataset': (0.0, 0),
                'wids': (timed(prepare_wids, work, shards), folder_bytes(work / 'wids'))}
    try:
        prepared['LitData'] = (timed(prepare_litdata, work, shards), folder_bytes(work / 'litdata'))
    except ImportError:
        pass
    expected = sorted(tokenizer.encode(caption_of(i) + IMG_START) for i in range(count))
    return dict(shards=shards, picture_bytes=picture_bytes, tar_bytes=tars, written=written,
                prepared=prepared, expected=expected)


def warm_page_cache(work: Path) -> None:
    for path in work.rglob('*'):
        if path.is_file():
            with open(path, 'rb') as f:
                while f.read(1 << 24):
                    pass


def available(loaders: tuple[str, ...]) -> list[str]:
    import importlib.util
    needs = {'webdataset': 'webdataset', 'wids': 'wids', 'LitData': 'litdata'}
    return [name for name in loaders if name not in needs or importlib.util.find_spec(needs[name])]


def check(results: dict[str, list[dict]], expected: list) -> None:
    """Every loader gave every sample once (its prompt ids) at 512 px: else the comparison is void."""
    for name, runs in results.items():
        for run in runs:
            if run['prompts'] != expected:
                raise SystemExit(f'{name} did not yield the samples written ({len(run["prompts"])} '
                                 f'samples, {len(expected)} expected)')
            if run['shapes'] != [[3, IMAGE_SIZE, IMAGE_SIZE]]:
                raise SystemExit(f'{name} yielded pixels of shapes {run["shapes"]}')


def report(results: dict[str, list[dict]], setup: dict, count: int) -> None:
    median = {name: {key: statistics.median(run[key] for run in runs)
                     for key in ('rate', 'cpu', 'construct', 'first', 'rss', 'uss')}
              for name, runs in results.items()}
    MiB = 2 ** 20
    print(f'\n{"":14} {"prepare":>8} {"written":>10} {"construct":>10} {"1st batch":>10} {"samples/s":>10} '
          f'{"worker CPU":>11} {"worker peak RSS":>16} {"USS":>8}')
    for name, m in median.items():
        seconds, written = setup['prepared'].get(name, (0.0, 0))
        prepared = f'{seconds:7.2f}s {written / 1024:7.0f} KiB' if name != FLOOR else f'{"":8} {"":10}'
        print(f'{name:14} {prepared} {m["construct"]:9.2f}s {m["first"]:9.2f}s {m["rate"]:10.1f} '
              f'{m["cpu"] * 1e3:8.2f} ms {m["rss"] / MiB:12.0f} MiB {m["uss"] / MiB:4.0f} MiB')
    per_round = '; '.join(f'{name} ' + ' '.join(f'{run["rate"]:.1f}' for run in runs) for name, runs in results.items())
    print(f'samples/s of each round: {per_round}')
    ours = median['project']
    for name, theirs in median.items():
        if name in ('project', FLOOR):
            continue
        print(f'project / {name}: {ours["rate"] / theirs["rate"]:.2f}x the samples/s, '
              f'{ours["cpu"] / theirs["cpu"]:.2f}x the worker CPU per sample, '
              f'{ours["first"] / theirs["first"]:.2f}x the time to the first batch')
    if FLOOR in median:
        floor = median[FLOOR]['cpu']
        print(f'worker CPU above the decode floor ({floor * 1e3:.2f} ms a sample): ' + ', '.join(
            f'{name} {(m["cpu"] - floor) * 1e3:+.2f} ms' for name, m in median.items() if name != FLOOR))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=2048)
    parser.add_argument('--rounds', type=int, default=3, help='epochs of each loader, their order rotated')
    parser.add_argument('--small', action='store_true', help='256 images, 1 round')
    parser.add_argument('--json', help='write the results (and what each loader yielded) here')
    parser.add_argument('--workdir', default=None, help='where to write the data (default: a temp dir)')
    parser.add_argument('--profile', action='store_true',
                        help="instead of the loaders: the project's sample path against the decode floor in one "
                             'process, and its profile')
    parser.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(epoch(args.child[0], Path(args.child[1]))))
        return 0
    count, rounds = (256, 1) if args.small else (args.images, args.rounds)
    loaders = available(LOADERS)
    missing = sorted(set(LOADERS) - set(loaders))
    if missing:
        print(f"not installed, not measured: {', '.join(missing)} (pip install -e '.[bench]')")

    with tempfile.TemporaryDirectory(prefix='bench_loaders_', dir=args.workdir) as work:
        work = Path(work)
        setup = prepare_all(work, count)
        warm_page_cache(work)
        if args.profile:
            profile(work, count)
            return 0
        print(f'{count} samples: JPEG pictures of 1024-1536 px a side with a caption json each, '
              f'{setup["picture_bytes"] / count / 1024:.0f} KiB a picture, in {len(setup["shards"])} tars '
              f'({setup["tar_bytes"] / 2 ** 20:.0f} MiB, written in {setup["written"]:.0f} s), in the page cache; '
              f'{IMAGE_SIZE} px, DataLoader of {WORKERS} workers, batch {BATCH}, one shuffled epoch a '
              f'measurement, medians of {rounds} round(s)')
        print('load average (1, 5, 15 min) at the start: %.2f %.2f %.2f' % os.getloadavg())
        results: dict[str, list[dict]] = {name: [] for name in loaders + [FLOOR]}
        for number in range(rounds):
            order = loaders[number % len(loaders):] + loaders[:number % len(loaders)] + [FLOOR]
            for name in order:
                results[name].append(run_child(__file__, name, str(work)))
        if args.json:
            Path(args.json).write_text(json.dumps(dict(expected=setup['expected'], results=results)))
        check(results, setup['expected'])
        print(f'every loader yielded the same samples (prompt ids) at {IMAGE_SIZE} px, each once')
        report(results, setup, count)
        print('load average (1, 5, 15 min) at the end: %.2f %.2f %.2f' % os.getloadavg())
    return 0


if __name__ == '__main__':
    sys.exit(main())
