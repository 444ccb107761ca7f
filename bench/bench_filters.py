"""What filters cost at start-up: ``CaptionDataset`` on a cached 1M-record index with
``filters=dict(...)`` (a joined score, an aspect range, caption words, min_side) against the same
dataset without filters, in fresh processes, the imports and the tokenizer made before the clock.

The first construction with a filter decides it (whole-column passes over the memory-mapped index,
once per index cache and options); every later one, in every rank and run, maps the kept rows
(``src.datasets.index.selection``): the cost that repeats should stay that of a construction without a
filter. Also timed: joining a 1M-row score parquet into the index (``tools/add_columns.py``).

    PYTHONPATH=. .venv/bin/python bench/bench_filters.py [--n 1000000 | --small] [--repeat 5]
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._child import records_parser, run_child as run_script_child  # noqa: E402
from bench.bench_index import write_data_json  # noqa: E402

FILTERS = dict(min_side=600, aspect=(0.5, 2.0), caption_words=(10, 40), where=[('aesthetic', '>=', 5.0)])


def child(filtered: str, path: str, folder: str, tokenizer_path: str) -> dict:
    from mmengine.config import Config
    from transformers import AutoTokenizer

    from src.datasets.text2image.caption_datasets import CaptionDataset
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    template = Config.fromfile(str(ROOT / 'configs/processors.py')).prompt_template.to_dict()
    options = dict(filters=FILTERS) if filtered == 'yes' else {}
    start = time.perf_counter()
    dataset = CaptionDataset(path, image_folder=folder, tokenizer=tokenizer, prompt_template=template, **options)
    return {'seconds': time.perf_counter() - start, 'records': len(dataset)}


def run_child(filtered: str, path: str, folder: str, tokenizer_path: str) -> dict:
    return run_script_child(__file__, filtered, path, folder, tokenizer_path)


def main() -> None:
    parser = records_parser(__doc__, child_args=4)
    parser.add_argument('--repeat', type=int, default=5, help='fresh processes per variant, alternating')
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from src.prepare.columns import join_columns
    from src.synthetic.tokenizer import build_tokenizer
    n = 100_000 if args.small else args.n
    with tempfile.TemporaryDirectory() as tmp:
        path, folder = os.path.join(tmp, 'data.json'), os.path.join(tmp, 'images')
        os.mkdir(folder)
        write_data_json(path, n)
        images = [f'images/{i // 10000:04d}/{i:08d}.png' for i in range(n)]
        scores = os.path.join(tmp, 'scores.parquet')
        pq.write_table(pa.table({'image': images, 'aesthetic': np.random.default_rng(0).uniform(3, 8, n)}), scores)
        tokenizer = build_tokenizer(Path(tmp) / 'tokenizer')
        run_child('no', path, folder, tokenizer)  # the index cache
        start = time.perf_counter()
        report = join_columns(path, scores, 'image')
        join = time.perf_counter() - start
        first = {kind: run_child(kind, path, folder, tokenizer) for kind in ('no', 'yes')}  # rebuilt cache, decided
        runs = {'no': [], 'yes': []}
        for _ in range(args.repeat):
            for kind in runs:
                runs[kind].append(run_child(kind, path, folder, tokenizer))
        print(f'data.json: {n} records, {os.path.getsize(path) / 2 ** 20:.0f} MiB')
        print(f'joining a {n}-row score parquet (add_columns): {join:.1f} s, {report.matched} records matched\n')
        print('first construction after the join (index cache rebuilt; the filter decided):')
        print(f'   without filters {first["no"]["seconds"]:.3f} s, then with them {first["yes"]["seconds"]:.3f} s\n')
        print(f'cached, {args.repeat} fresh processes each    median (s)   min (s)   records')
        medians = {}
        for kind, label in (('no', 'without filters'), ('yes', 'with filters')):
            seconds = [r['seconds'] for r in runs[kind]]
            medians[kind] = statistics.median(seconds)
            print(f'   {label:<38}{medians[kind]:8.3f}   {min(seconds):7.3f}   {runs[kind][0]["records"]}')
        print(f'   with / without: {medians["yes"] / medians["no"]:.2f}x (filters: {FILTERS})')


if __name__ == '__main__':
    main()
