"""The path at 1M, 4M and 23M records (Midjourney-23M's size), by simulation: real shapes, no
pixels worth keeping. Each step runs in a fresh process; its wall time and peak memory (the
process's maximum RSS) are reported per size, with the growth from one size to the next.

Steps, on a Midjourney-like download (parquet tables of filename, prompt, width, height; prompts
of 5-60 words):
- ``metadata``: prepare_midjourney23m's index build (``src.prepare.midjourney.build_index``): the
  tables read, every row checked (unsafe path, listed image, caption, size, duplicate), data.json
  written. The listing of the images is given as extraction or ``--no-extract`` would list them
  (a ``PathListing`` of every image but 0.1%), so that no 23M files are made;
- ``first construction``: the first ``CaptionDataset`` on the new data.json, which makes its
  memory-mapped index cache and decides the kept records (``src.datasets.index.selection``), once;
- ``start-up``: ``CaptionDataset`` built again in a fresh process, as every rank and spawned worker
  of every run builds it (the imports and the tokenizer before the clock);
- ``pretokenize``: the first construction with ``pretokenize=True`` (every prompt tokenized once);
- ``report``: ``inspect_dataset``'s statistics over its default sample of 2000 records;
- ``8 ranks x 4 workers``: 8 processes each building the dataset and forking 4 DataLoader workers
  that read 20k random records each; the unique memory (USS) they add beyond a process that
  imported the same modules, summed over the 40 processes.

Goals (issue 26): peak memory within 4 GB at 23M, time linear in records, start-up independent
of the record count, and the 8 x 4 processes adding under 1 GB at 23M.

    PYTHONPATH=. .venv/bin/python bench/bench_scale.py [--sizes 1000000 4000000 23000000] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 2 ** 20
STEPS = ('metadata', 'first construction', 'start-up', 'report', '8 ranks x 4 workers', 'pretokenize')  # the longest last
RANKS, WORKERS, READS = 8, 4, 20_000
WORDS = ('a photo of the red fox sitting in snow at dawn under a violet sky with mountains behind cinematic '
         'lighting highly detailed digital art trending on artstation watercolor portrait of an old sailor '
         'city street at night neon rain reflections').split()


# --------------------------------------------------------------------------- the synthetic download
def write_tables(root: Path, n: int) -> None:
    """Midjourney's tables: ``raw/table-*.parquet`` of 1M rows each."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    (root / 'raw').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = np.array(WORDS)
    for part, start in enumerate(range(0, n, 1_000_000)):
        rows = np.arange(start, min(start + 1_000_000, n))
        lengths = rng.integers(5, 60, len(rows))
        picks = words[rng.integers(0, len(words), int(lengths.sum()))]
        prompts = [' '.join(p) for p in np.split(picks, np.cumsum(lengths)[:-1])]
        sizes = rng.choice(np.array([[1024, 1024], [1456, 816], [816, 1456], [1232, 928], [1344, 896]]), len(rows))
        table = pa.table({'filename': [f'{r // 10_000:05d}/{r:09d}.png' for r in rows], 'prompt': prompts,
                          'width': sizes[:, 0].astype(float), 'height': sizes[:, 1].astype(float)})
        pq.write_table(table, root / 'raw' / f'table-{part:03d}.parquet')


def tokenizer_and_template(work: Path):
    from mmengine.config import Config
    from transformers import AutoTokenizer

    from src.synthetic.tokenizer import build_tokenizer
    path = work / 'tokenizer'
    if not path.exists():
        build_tokenizer(path)
    template = Config.fromfile(str(ROOT / 'configs' / 'processors.py')).prompt_template.to_dict()
    return AutoTokenizer.from_pretrained(str(path)), template


def dataset(root: Path, work: Path, processors=None, **options):
    from src.datasets.text2image.caption_datasets import CaptionDataset
    tokenizer, template = processors or tokenizer_and_template(work)
    return CaptionDataset(str(root / 'data.json'), image_folder=str(root), tokenizer=tokenizer,
                          prompt_template=template, image_size=512, **options)


# ------------------------------------------------------------------------------------- the steps
def step_metadata(root: Path, work: Path) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    from src.prepare.listing import PathListing
    from src.prepare.midjourney import build_index, read_tables
    from src.prepare.report import Report
    from src.prepare.runner import Files
    names = read_tables(str(root), roles=('filename',))['filename']
    listing = PathListing.of(pc.binary_join_element_wise('images/', names, '').filter(
        pc.not_equal(pc.utf8_slice_codeunits(names, -7, -4), '999')))  # 0.1% of the images missing
    del names
    pa.default_memory_pool().release_unused()  # the names this simulation read: not the step's
    start = time.perf_counter()
    report = Report('midjourney23m', str(root))
    build_index(Files(str(root), listing, None), report)
    return {'seconds': time.perf_counter() - start, 'records': report.indexes[0].entries}


def step_first_construction(root: Path, work: Path) -> dict:
    """The first construction on a new data.json: its index cache and its kept records, made once."""
    processors = tokenizer_and_template(work)
    mark_baseline()
    start = time.perf_counter()
    records = len(dataset(root, work, processors))
    return {'seconds': time.perf_counter() - start, 'records': records}


def step_start_up(root: Path, work: Path) -> dict:
    processors = tokenizer_and_template(work)  # the imports and the tokenizer, before the clock
    mark_baseline()
    start = time.perf_counter()
    records = len(dataset(root, work, processors))
    return {'seconds': time.perf_counter() - start, 'records': records}


def step_pretokenize(root: Path, work: Path) -> dict:
    processors = tokenizer_and_template(work)
    mark_baseline()
    start = time.perf_counter()
    built = dataset(root, work, processors, pretokenize=True, index_cache_dir=str(work / 'prompt-cache'))
    return {'seconds': time.perf_counter() - start, 'records': int(built.prompt_ids.known.sum())}


def step_report(root: Path, work: Path) -> dict:
    from src.report.statistics import dataset_stats
    built = dataset(root, work)
    mark_baseline()
    start = time.perf_counter()
    stats = dataset_stats(built, 2000)
    return {'seconds': time.perf_counter() - start, 'records': stats.sampled}


def step_ranks(root: Path, work: Path) -> dict:
    """8 spawned ranks, each with 4 forked workers: the USS each adds, summed."""
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, '--rank', str(root), str(work)], stdout=subprocess.PIPE,
                              text=True, env=_env()) for _ in range(RANKS)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    added = sum(r['rank'] + sum(r['workers']) for r in results)
    return {'seconds': time.perf_counter() - start, 'added_mib': added / MiB, 'records': results[0]['records']}


class _Reads:
    """Item k: worker k reads READS random records (path and caption), then reports its USS."""

    def __init__(self, built):
        self.built = built

    def __len__(self):
        return WORKERS

    def __getitem__(self, k):
        from bench._mem import private_and_proportional
        rng = random.Random(k)
        total = 0
        for _ in range(READS):
            record = self.built.index[rng.randrange(len(self.built))]
            total += len(record['image']) + len(record.get('caption', ''))
        return {'uss': private_and_proportional()[0], 'total': total}


def rank_child(root: Path, work: Path) -> dict:
    import torch

    from bench._mem import private_and_proportional
    import src.datasets.text2image.caption_datasets  # noqa: F401 - the imports count for both
    tokenizer_and_template(work)
    before = private_and_proportional()[0]
    built = dataset(root, work)
    rank = private_and_proportional()[0] - before
    loader = torch.utils.data.DataLoader(_Reads(built), batch_size=None, num_workers=WORKERS,
                                         multiprocessing_context='fork')
    # A forked worker starts sharing all of its parent's pages: what it holds alone is what it adds.
    workers = [item['uss'] for item in loader]
    return {'rank': rank, 'workers': workers, 'records': len(built)}


STEP_FUNCTIONS = {'metadata': step_metadata, 'first construction': step_first_construction, 'start-up': step_start_up,
                  'pretokenize': step_pretokenize, 'report': step_report, '8 ranks x 4 workers': step_ranks}


# ------------------------------------------------------------------------------------ the driver
def _env(step: str = '') -> dict:
    # The batch tokenizer uses every core where nothing forked after it ran (pretokenize's case).
    return dict(os.environ, PYTHONPATH=str(ROOT), **({} if step == 'pretokenize' else {'TOKENIZERS_PARALLELISM': 'false'}))


def run_step(step: str, root: Path, work: Path) -> dict:
    """``step`` in a fresh process: its result, with the process's peak RSS."""
    process = subprocess.Popen([sys.executable, __file__, '--step', step, str(root), str(work)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(step))
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f'{step} failed:\n{err[-3000:]}')
    return json.loads(out.strip().splitlines()[-1])


_BASELINE = [0]


def mark_baseline() -> None:
    """The RSS a step's work is measured from: after the imports and what the step sets up."""
    import psutil
    _BASELINE[0] = psutil.Process().memory_info().rss


def _status(field: str) -> int:
    """A field of /proc/self/status in bytes: VmHWM, this process's peak RSS (of its own memory
    since exec; ru_maxrss would carry the parent's from before the exec), RssAnon (its own memory
    now), RssFile (pages of mapped files now: the index's, shared with every process mapping them
    and given back under pressure)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise OSError(f'no {field} in /proc/self/status')


def _high_water_mark() -> int:
    return _status('VmHWM')


def child_main(step: str, root: Path, work: Path) -> None:
    import torch  # noqa: F401 - the modules every step's process holds, before the baseline
    import transformers  # noqa: F401

    import src.datasets.text2image.caption_datasets  # noqa: F401
    import src.prepare.midjourney  # noqa: F401
    mark_baseline()
    result = STEP_FUNCTIONS[step](root, work)
    peak = _high_water_mark()
    result.update(peak_mib=peak / MiB, added_peak_mib=(peak - _BASELINE[0]) / MiB,
                  anon_mib=_status('RssAnon') / MiB, file_mib=_status('RssFile') / MiB)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[1_000_000, 4_000_000, 23_000_000])
    parser.add_argument('--small', action='store_true', help='100k and 400k records: a quick check')
    parser.add_argument('--steps', nargs='+', default=list(STEPS), choices=STEPS)
    parser.add_argument('--dir', help='where the synthetic downloads go (default: a temporary folder)')
    parser.add_argument('--step', nargs=3, help=argparse.SUPPRESS)
    parser.add_argument('--rank', nargs=2, help=argparse.SUPPRESS)
    parser.add_argument('--tables', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tables:  # in a process of its own: the driver stays small
        write_tables(Path(args.tables[0]), int(args.tables[1]))
        return
    if args.step:
        child_main(args.step[0], Path(args.step[1]), Path(args.step[2]))
        return
    if args.rank:
        print(json.dumps(rank_child(Path(args.rank[0]), Path(args.rank[1]))))
        return
    if args.small:
        args.sizes = [100_000, 400_000]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        results = {}
        for n in args.sizes:
            root, work = Path(tmp) / f'{n}' / 'midjourney-23m', Path(tmp) / f'{n}' / 'work'
            work.mkdir(parents=True)
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, '--tables', str(root), str(n)], check=True, env=_env())
            print(f'{n:>11,} records: tables written in {time.perf_counter() - started:.0f} s', flush=True)
            for step in args.steps:
                results[(step, n)] = result = run_step(step, root, work)
                extra = f', adds {result["added_mib"]:.0f} MiB' if 'added_mib' in result else ''
                print(f'   {step:<22}{result["seconds"]:9.2f} s   peak {result["peak_mib"]:7.0f} MiB '
                      f'(+{result["added_peak_mib"]:.0f} over the imports; at the end {result["anon_mib"]:.0f} own, '
                      f'{result["file_mib"]:.0f} of mapped files){extra}', flush=True)
        _table(results, args.sizes, args.steps)


def _table(results: dict, sizes: list[int], steps: list[str]) -> None:
    print('\nstep                 ' + ''.join(f'{_label(n):>8} s  +MiB' for n in sizes) + '   time per record, last / first')
    for step in steps:
        cells = ''
        for n in sizes:
            r = results[(step, n)]
            cells += f'{r["seconds"]:>10.2f} {r["added_peak_mib"]:>5.0f}'
        first, last = results[(step, sizes[0])], results[(step, sizes[-1])]
        growth = (last['seconds'] / sizes[-1]) / max(first['seconds'] / sizes[0], 1e-12) if len(sizes) > 1 else 1
        print(f'{step:<22}{cells}   x{growth:.2f}')
    if '8 ranks x 4 workers' in steps:
        print('8 ranks x 4 workers add (USS, MiB): ' + ', '.join(
            f'{_label(n)}: {results[("8 ranks x 4 workers", n)]["added_mib"]:.0f}' for n in sizes))


def _label(n: int) -> str:
    return f'{n / 1e6:g}M' if n >= 1_000_000 else f'{n / 1e3:g}k'


if __name__ == '__main__':
    main()
