"""What a dataset holds, as numbers: records and drops, prompt lengths against ``max_length`` (and
what upstream's cut of ``input_ids`` costs), captions, image sizes. Computed on a sample of
records drawn with a fixed seed, so a report can be made again and checked; the prompt lengths also
over every record where the prompt ids are stored (``src.datasets.index.prompt_ids``)."""
from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from src.datasets.errors import SampleError
from src.datasets.storage.files import read_text_file
from src.datasets.storage.images import open_image
from src.report.funnel import filter_stats

logger = logging.getLogger(__name__)


EXAMPLES = 5


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
    # The same over every record whose prompt ids are stored (pretokenize, or --all-prompts), not a
    # sample: stored, not_stored, cut, lose_image_start, median, p95, longest, histogram.
    all_prompts: dict = field(default_factory=dict)
    # Records read as training reads them (image decoded, or latent loaded; caption; prompt): a
    # sample of them, or every one with --verify. The index cannot tell a broken image from a good one.
    decoded: int = 0
    decoded_all: bool = False
    decode_failures: dict = field(default_factory=dict)  # by reason
    decode_examples: list = field(default_factory=list)  # the first messages
    # Aspect-ratio buckets (src.datasets.sample.buckets): the dataset's own, or for a square dataset the
    # table it could use; records per bucket (every record, or the sampled sizes), and the share of
    # each sampled picture's area a sample keeps against a square crop.
    buckets: dict = field(default_factory=dict)
    # The filters' funnel, a histogram per score column and the duplicate clusters, over every record
    # (src.report.funnel).
    filters: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def prompt_counts(self) -> tuple[int, int, str]:
        """(prompts cut, of them losing IMG_START_TOKEN, over what) for a headline: over all the
        prompts where the stored ones were counted, else over the sample."""
        whole = self.all_prompts
        if whole.get('stored'):
            return whole['cut'], whole['lose_image_start'], f'{whole["stored"]} prompts'
        return self.cut, self.lose_image_start, f'{len(self.prompt_tokens)} sampled prompts'


def prepare_drops(data_path: str) -> dict:
    """Drop reasons -> counts of the preparation run, from ``prepare_report.json`` beside the index."""
    path = os.path.join(os.path.dirname(os.path.abspath(data_path)), 'prepare_report.json')
    try:
        report = json.loads(read_text_file(path))
    except (SampleError, ValueError, RecursionError):
        return {}
    if not isinstance(report, dict):
        return {}
    drops = Counter()
    try:
        groups = [('', index['dropped']) for index in report.get('indexes', []) if 'dropped' in index]
        groups.append(('member refused: ', report.get('members_refused', {})))
        for prefix, group in groups:
            for reason, entry in group.items():
                count = entry.get('count', 0)
                if not isinstance(count, int) or isinstance(count, bool):
                    raise TypeError(f'the count of {reason!r} is not a number')
                drops[f'{prefix}{reason}'] += count
    except (AttributeError, TypeError):
        logger.warning('%s is not a report that prepare writes (a field of the wrong type): its drop counts are left '
                       'out', path)
        return {}
    return dict(drops)


def dataset_stats(dataset, sample: int = 2000, seed: int = 0) -> DatasetStats:
    """The statistics of ``dataset`` (a CaptionDataset) over ``sample`` of its records."""
    from src.datasets.index.sample_index import SampleIndex
    records = len(SampleIndex.load(dataset.index_source))
    rows = sorted(random.Random(seed).sample(range(len(dataset)), min(sample, len(dataset))))
    stats = DatasetStats(dataset.data_path, records, len(dataset), len(rows), dataset.max_length,
                         prepare_drops=prepare_drops(dataset.index_source))
    index_sizes = 'width' in dataset.index.columns and 'height' in dataset.index.columns
    stats.sizes_from = 'index' if index_sizes else 'image headers'
    failures, seen = Counter(), set()
    for row in rows:
        record = dataset.index[row]
        try:
            caption = dataset.caption_of(record).strip()
            if index_sizes:
                width, height = record.get('width'), record.get('height')
            else:
                image_file = record[dataset.image_key]  # the header only: nothing is decoded
                width, height = open_image(dataset.read_image(image_file), image_file).size
        except SampleError as err:
            failures[err.reason] += 1
            continue
        tokens = dataset.prompt_length(caption)
        stats.prompt_tokens.append(tokens)
        stats.caption_chars.append(len(caption))
        if width and height:
            stats.widths.append(int(width))
            stats.heights.append(int(height))
        if caption in seen:
            stats.duplicate_captions += 1
        seen.add(caption)
    stats.buckets = bucket_stats(dataset, np.array(stats.widths, np.float64), np.array(stats.heights, np.float64))
    stats.cut, stats.lose_image_start = _cuts(dataset, np.array(stats.prompt_tokens, dtype=np.int64))
    stats.failures = dict(failures)
    if dataset.prompt_ids is not None:
        stats.all_prompts = all_prompts(dataset)
    stats.filters = filter_stats(dataset)
    return stats


def bucket_stats(dataset, widths: np.ndarray, heights: np.ndarray) -> dict:
    """Records per bucket (every record where the dataset has buckets, else the sampled sizes under
    the table that fits its image_size) and the mean share of picture area kept, bucketed and square."""
    from src.datasets.sample.buckets import TABLES, Buckets, kept_area
    buckets = dataset.buckets
    if buckets is None:
        table = f'pixart-{dataset.image_size}'
        buckets = Buckets.from_options(dict(table=table) if table in TABLES else
                                       dict(area=dataset.image_size ** 2, divisor=32))
    sampled = buckets.assign(widths, heights)
    ids = dataset.bucket_ids if dataset.buckets is not None else sampled[sampled >= 0]
    counts = np.bincount(ids.astype(np.int64), minlength=len(buckets))
    fits = sampled >= 0
    kept = [kept_area(w, h, buckets.shapes[b]) for w, h, b in zip(widths[fits], heights[fits], sampled[fits])]
    square = [kept_area(w, h, (1, 1)) for w, h in zip(widths[fits], heights[fits])]
    return {'configured': dataset.buckets is not None, 'label': buckets.label(),
            'over': 'every record' if dataset.buckets is not None else f'{int(fits.sum())} sampled sizes',
            'counts': {buckets.key(b): int(n) for b, n in enumerate(counts) if n},
            'outside': int((sampled == -1).sum()), 'measured': len(kept),
            'kept_area': float(np.mean(kept)) if kept else None,
            'kept_area_square': float(np.mean(square)) if square else None}


def check_decoding(dataset, rows, stats: DatasetStats, on_sample=None, progress: bool = False) -> None:
    """Read each of ``rows`` as training reads it (``dataset.prepare_data``: caption, image decoded or
    latent loaded, prompt); count what fails by reason in ``stats``. ``on_sample(row, sample)`` sees
    each sample that works (the report's preview)."""
    from src.datasets.progress import tqdm
    failures = Counter(stats.decode_failures)
    for row in tqdm(rows, desc=f'reading {dataset.data_path}', unit='sample', disable=not progress):
        stats.decoded += 1
        try:
            sample = dataset.prepare_data(row)
        except SampleError as err:
            failures[err.reason] += 1
            if len(stats.decode_examples) < EXAMPLES:
                stats.decode_examples.append(f'[{err.reason}] {err}')
            continue
        if on_sample is not None:
            on_sample(row, sample)
    stats.decode_failures = dict(failures)


def _cuts(dataset, lengths: np.ndarray) -> tuple[int, int]:
    """Prompts longer than ``max_length``, and how many of them lose IMG_START_TOKEN to upstream's
    cut (all of them where the template ends with it: it is the prompt's last token)."""
    if not dataset.cuts_prompts:  # an editing prompt is never cut (as upstream)
        return 0, 0
    cut = int((lengths > dataset.max_length).sum())
    return cut, cut if dataset.image_start_token else 0


def all_prompts(dataset, bins: int = 40) -> dict:
    """Prompt-length numbers over every record of ``dataset`` whose prompt ids are stored
    (``dataset.prompt_ids``): exact counts from the stored offsets, nothing tokenized again."""
    rows = dataset.index.table_rows()
    lengths = dataset.prompt_ids.lengths(rows)
    cut, lose_image_start = _cuts(dataset, lengths)
    counts, edges = np.zeros(0), np.zeros(0)
    if len(lengths):  # bins of whole tokens centred on them, so that none straddles max_length + 0.5
        low, high = int(lengths.min()), int(lengths.max())
        width = -(-(high - low + 1) // bins)
        counts, edges = np.histogram(lengths, bins=np.arange(low, high + width + 1, width) - 0.5)
    summary = dict(stored=len(lengths), not_stored=len(rows) - len(lengths), cut=cut,
                   lose_image_start=lose_image_start,
                   histogram=dict(edges=edges.tolist(), counts=counts.astype(int).tolist()))
    if len(lengths):
        summary.update(median=float(np.median(lengths)), p95=float(np.percentile(lengths, 95)),
                       longest=int(lengths.max()))
    return summary
