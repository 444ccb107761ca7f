"""What building a dataset costs every process that builds one: ``CaptionDataset`` on a cached
index against the upstream approach (``json.load`` of the whole index, as upstream's ``_load_data``
does), on a midjourney-like data.json of 1M records.

Every rank builds its dataset, and so does every DataLoader worker started with spawn: what
construction costs is paid that many times. Measured in fresh processes:
1. one process: construction time and peak RSS increase (the tokenizer, the prompt template and
   the imports are made before the baseline: both approaches need them alike);
2. 8 forked DataLoader workers of that process, each reading every record's image path and caption
   once (as a pass over the dataset does): the sum of their USS (memory each holds alone: a list of
   dicts is copied page by page as reference counts are written, a mapped file is not);
3. 8 spawned processes (the per-rank case), each constructing from scratch: the sum of their
   construction peaks and USS, and the slowest one's construction time.

    PYTHONPATH=. .venv/bin/python bench/bench_construct.py [--n 1000000 | --small]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._mem import peak_rss, private_and_proportional, reset_peak  # noqa: E402
from bench.bench_index import write_data_json  # noqa: E402

PROCESSES = 8
MiB = 2 ** 20


# ----------------------------------------------------------------- what runs in a child process

def build(kind: str, path: str, folder: str, tokenizer, template):
    """The dataset's records, built as ``kind`` does."""
    if kind == 'upstream':
        with open(path) as f:  # upstream CaptionDataset._load_data
            return json.load(f)
    from src.datasets.text2image.caption_datasets import CaptionDataset
    return CaptionDataset(path, image_folder=folder, tokenizer=tokenizer, prompt_template=template)


class _ReadAll:
    """Item k: one DataLoader worker reading every record's image path and caption, then its USS."""

    def __init__(self, records, workers: int):
        self.records, self.workers = records, workers

    def __len__(self):
        return self.workers

    def __getitem__(self, k):
        records = self.records.data_list if hasattr(self.records, 'data_list') else self.records
        checksum = sum(len(record['image']) + len(record['caption']) for record in records)
        return {'uss': private_and_proportional()[0], 'checksum': checksum}


def child(kind: str, phase: str, path: str, folder: str, tokenizer_path: str) -> dict:
    import torch
    from mmengine.config import Config
    from transformers import AutoTokenizer
    if kind == 'ours':  # its modules, imported before the baseline as upstream's would be
        import src.datasets.text2image.caption_datasets  # noqa: F401
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    template = Config.fromfile(str(ROOT / 'configs/processors.py')).prompt_template.to_dict()
    uss_before = private_and_proportional()[0]
    baseline = reset_peak()
    start = time.perf_counter()
    records = build(kind, path, folder, tokenizer, template)
    result = {'seconds': time.perf_counter() - start, 'peak_increase': peak_rss() - baseline,
              'uss_increase': private_and_proportional()[0] - uss_before, 'records': len(records)}
    if phase == 'workers':
        loader = torch.utils.data.DataLoader(_ReadAll(records, PROCESSES), batch_size=None, num_workers=PROCESSES,
                                             multiprocessing_context='fork')
        passes = list(loader)
        assert len({p['checksum'] for p in passes}) == 1
        result.update(workers_uss=sum(p['uss'] for p in passes), checksum=passes[0]['checksum'])
    return result


# ------------------------------------------------------------------------------------ the driver

def run_child(kind: str, phase: str, path: str, folder: str, tokenizer_path: str) -> dict:
    done = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', kind, phase, path, folder,
                           tokenizer_path], env=dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM='false'),
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'{kind} {phase} failed:\n{done.stderr[-3000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--n', type=int, default=1_000_000, help='records in data.json')
    parser.add_argument('--small', action='store_true', help='100k records (quick run)')
    parser.add_argument('--child', nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    from src.synthetic.tokenizer import build_tokenizer
    n = 100_000 if args.small else args.n
    with tempfile.TemporaryDirectory() as tmp:
        path, folder = os.path.join(tmp, 'data.json'), os.path.join(tmp, 'images')
        os.mkdir(folder)
        write_data_json(path, n)
        tokenizer = build_tokenizer(Path(tmp) / 'tokenizer')
        run_child('ours', 'one', path, folder, tokenizer)  # builds the index cache: later runs map it
        print(f'data.json: {n} records, {os.path.getsize(path) / MiB:.0f} MiB; the dataset\'s index is cached\n')

        one = {kind: run_child(kind, 'workers', path, folder, tokenizer) for kind in ('upstream', 'ours')}
        assert one['upstream']['checksum'] == one['ours']['checksum'], 'the two read different records'
        with ThreadPoolExecutor(PROCESSES) as pool:
            spawned = {kind: list(pool.map(lambda _: run_child(kind, 'one', path, folder, tokenizer),
                                           range(PROCESSES))) for kind in ('upstream', 'ours')}

        up, ours = one['upstream'], one['ours']
        print('1. one process                     construction (s)   peak RSS increase (MiB)')
        for kind, row in one.items():
            print(f'   {kind:<32}{row["seconds"]:12.3f}   {row["peak_increase"] / MiB:16.1f}')
        print(f'   upstream / ours: {up["seconds"] / ours["seconds"]:.0f}x faster, '
              f'{up["peak_increase"] / max(ours["peak_increase"], 1):.0f}x less peak memory\n')
        print(f'2. {PROCESSES} forked DataLoader workers, each reading every record: sum of their USS (MiB)')
        for kind, row in one.items():
            print(f'   {kind:<32}{row["workers_uss"] / MiB:12.1f}')
        print(f'   upstream / ours: {up["workers_uss"] / ours["workers_uss"]:.1f}x less\n')
        print(f'3. {PROCESSES} spawned processes (ranks)     slowest construction (s)   sum of peak increases (MiB)   '
              'sum of USS added (MiB)')
        sums = {}
        for kind, rows in spawned.items():
            sums[kind] = (max(r['seconds'] for r in rows), sum(r['peak_increase'] for r in rows),
                          sum(max(r['uss_increase'], 0) for r in rows))
            print(f'   {kind:<32}{sums[kind][0]:12.3f}   {sums[kind][1] / MiB:24.1f}   {sums[kind][2] / MiB:22.1f}')
        print(f'   upstream / ours: {sums["upstream"][0] / sums["ours"][0]:.0f}x faster, '
              f'{sums["upstream"][1] / max(sums["ours"][1], 1):.0f}x less peak memory')


if __name__ == '__main__':
    main()
