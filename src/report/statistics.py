"""What a dataset holds, as numbers: records and drops, prompt lengths against ``max_length`` (and
what upstream's cut of ``input_ids`` costs), captions, image sizes. Computed on a sample of
records drawn with a fixed seed, so a report can be made again and checked."""
from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from src.datasets.captions import resolve_caption
from src.datasets.errors import SampleError
from src.datasets.image_io import open_image


@dataclass
class DatasetStats:
    data_path: str
    records: int  # in the index file
    usable: int  # kept by the dataset (image present, size and aspect within bounds)
    sampled: int
    max_length: int
    prompt_tokens: list = field(default_factory=list)
    caption_chars: list = field(default_factory=list)
    widths: list = field(default_factory=list)
    heights: list = field(default_factory=list)
    sizes_from: str = ''  # 'index' or 'image headers'
    failures: dict = field(default_factory=dict)  # sampled records whose caption or image failed, by reason
    duplicate_captions: int = 0  # sampled captions equal to an earlier sampled one
    prepare_drops: dict = field(default_factory=dict)  # from prepare_report.json beside the index
    cut: int = 0  # prompts longer than max_length: cut by upstream
    lose_image_start: int = 0  # of those, the ones whose IMG_START_TOKEN is cut away

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_drops(data_path: str) -> dict:
    """Drop reasons -> counts of the preparation run, from ``prepare_report.json`` beside the index."""
    path = os.path.join(os.path.dirname(os.path.abspath(data_path)), 'prepare_report.json')
    try:
        with open(path, encoding='utf-8') as f:
            report = json.load(f)
    except (OSError, ValueError):
        return {}
    drops = Counter()
    for index in report.get('indexes', []):
        for reason, entry in index.get('dropped', {}).items():
            drops[reason] += entry.get('count', 0)
    for reason, entry in report.get('members_refused', {}).items():
        drops[f'member refused: {reason}'] += entry.get('count', 0)
    return dict(drops)


def dataset_stats(dataset, sample: int = 2000, seed: int = 0) -> DatasetStats:
    """The statistics of ``dataset`` (a CaptionDataset) over ``sample`` of its records."""
    from src.datasets.sample_index import SampleIndex
    records = len(SampleIndex.load(dataset.index_source))
    rows = sorted(random.Random(seed).sample(range(len(dataset)), min(sample, len(dataset))))
    stats = DatasetStats(dataset.data_path, records, len(dataset), len(rows), dataset.max_length,
                         prepare_drops=prepare_drops(dataset.index_source))
    index_sizes = 'width' in dataset.index.columns and 'height' in dataset.index.columns
    stats.sizes_from = 'index' if index_sizes else 'image headers'
    failures, seen = Counter(), set()
    start_token = dataset.prompt_template.get('IMG_START_TOKEN') if dataset.prompt_template.get(
        'IMG_START_TOKEN_FOR_GENERATION', True) else None
    for row in rows:
        record = dataset.index[row]
        try:
            caption = resolve_caption(record, dataset.cap_keys, dataset.read_annotation).strip()
            if index_sizes:
                width, height = record.get('width'), record.get('height')
            else:
                image_file = record[dataset.image_key]  # the header only: nothing is decoded
                width, height = open_image(dataset.read_image(image_file), image_file).size
        except SampleError as err:
            failures[err.reason] += 1
            continue
        tokens = len(dataset.tokenizer.encode(dataset.prompt_of(caption), **dataset.tokenizer_kwargs))
        stats.prompt_tokens.append(tokens)
        stats.caption_chars.append(len(caption))
        if width and height:
            stats.widths.append(int(width))
            stats.heights.append(int(height))
        if caption in seen:
            stats.duplicate_captions += 1
        seen.add(caption)
    lengths = np.array(stats.prompt_tokens, dtype=np.int64)
    stats.cut = int((lengths > dataset.max_length).sum())
    stats.lose_image_start = stats.cut if start_token else 0  # the start token is the prompt's last
    stats.failures = dict(failures)
    return stats
