"""A report of what a dataset config holds, to look at before training on it: counts and drop
reasons (from prepare_report.json and the index), records that fail when read as training reads
them, prompt lengths against max_length (how many prompts upstream's cut shortens, and how many
lose IMG_START_TOKEN), image sizes and aspect ratios, aspect-ratio buckets (records per bucket, and
the share of picture area kept against square crops: for a square dataset, under the table its
image_size would use), caption lengths and duplicates, and a preview
grid of samples as the model sees them.

    .venv/bin/python tools/inspect_dataset.py configs/datasets/laion6m.py --out report/ [--tokenizer PATH]

Writes <out>/report.html (one self-contained page) and <out>/report.json (the numbers). Statistics
come from --sample records drawn with a fixed seed; --decode of them are read as training reads them
(the image decoded, the caption and prompt made), or every record with --verify. The prompt lengths
are also counted over every record where the dataset stores its prompt ids (pretokenize=True), or
with --all-prompts, which tokenizes them all once and stores them where a training run with
pretokenize=True reads them.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger('inspect_dataset')


def parse_args(argv=None) -> argparse.Namespace:
    from src.cli.config import add_config_options
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    add_config_options(parser)
    parser.add_argument('--out', required=True, help='folder for report.html and report.json')
    parser.add_argument('--sample', type=int, default=2000, help='records looked at per dataset (default: %(default)s)')
    parser.add_argument('--decode', type=int, default=200,
                        help='of them, records read as training reads them, image decoded (default: %(default)s)')
    parser.add_argument('--verify', action='store_true', help='read every record as training does (a progress bar)')
    parser.add_argument('--preview', type=int, default=8, help='samples shown per dataset (default: %(default)s)')
    parser.add_argument('--all-prompts', action='store_true',
                        help='count prompt lengths over every record: stores the prompt ids as pretokenize=True '
                             'does (once per tokenizer and template; training with pretokenize=True reuses them)')
    parser.add_argument('--filters', metavar='DICT',
                        help='preview filters before training: the funnel and score histograms with these in '
                             'place of the config\'s, as a Python literal, e.g. "{\'min_side\': 512, \'where\': '
                             '[(\'aesthetic\', \'>=\', 5.0)]}" (see docs/dataset-options.md)')
    return parser.parse_args(argv)


def inspect(dataset, args) -> tuple:
    """The statistics of one dataset and its section of the page."""
    from src.report.html import dataset_section, image_data_url
    from src.report.statistics import check_decoding, dataset_stats

    if args.all_prompts and dataset.prompt_ids is None:
        dataset.prompt_ids = dataset.load_prompt_ids()
    stats = dataset_stats(dataset, args.sample)
    rows = (range(len(dataset)) if args.verify else
            sorted(random.Random(1).sample(range(len(dataset)), min(args.decode, len(dataset)))))
    tiles = []

    def preview(row, sample):
        if len(tiles) < args.preview and 'pixel_values' in sample:
            tiles.append((image_data_url(sample['pixel_values']), dataset.caption_of(dataset.index[row])))

    check_decoding(dataset, rows, stats, on_sample=preview, progress=args.verify)
    stats.decoded_all = args.verify
    return stats, dataset_section(stats, tiles)


def main(argv=None) -> int:
    args = parse_args(argv)
    from src.cli.logs import setup_logging
    setup_logging('inspect_dataset')
    from src.cli.data_paths import DataMissing
    from src.cli.hub import HubUnreachable
    from src.cli.models import preflight
    from src.datasets.errors import DatasetConfigError
    from src.datasets.extras import MissingExtra
    try:
        # before torch and mmengine: the models are checked in seconds
        preflight(args.config, args.tokenizer, cfg_options=args.cfg_options)
        from src.cli.config import dataset_roots, load_config
        from src.datasets.index.filters import normalize, set_in_config
        try:
            filters = None if args.filters is None else normalize(ast.literal_eval(args.filters))
        except (ValueError, SyntaxError) as e:
            logger.error('--filters %s: %s', args.filters, e)
            return 2
        cfg = load_config(args.config, args.cfg_options, args.tokenizer)
        if args.filters is not None:
            for root in dataset_roots(cfg):
                set_in_config(root, filters)
        from src.datasets.progress import tqdm

        from src.datasets.build import build_leaf_datasets
        from src.report.html import page
        sections, numbers, summaries = [], [], []
        for dataset in tqdm(build_leaf_datasets(cfg), desc='datasets', unit='dataset'):
            stats, section = inspect(dataset, args)
            sections.append(section)
            numbers.append(stats.to_dict())
            cut, _, prompts = stats.prompt_counts()
            failed = sum(stats.decode_failures.values())
            kept = stats.buckets.get('kept_area')
            summaries.append(
                f'{stats.data_path}: {stats.usable} usable of {stats.records} records; {failed} of {stats.decoded} '
                f'read as training reads them failed{f" ({stats.decode_failures})" if failed else ""}; {cut} of '
                f'{prompts} longer than max_length {stats.max_length}' + ('' if kept is None else
                f'; {"buckets" if stats.buckets["configured"] else stats.buckets["label"] + " buckets would"} '
                f'keep {kept:.0%} of a picture, square crops {stats.buckets["kept_area_square"]:.0%}'))
        for summary in summaries:  # once the progress bar has ended its line
            logger.info('%s', summary)
        html = page(f'Dataset report: {args.config}', sections)
    except (HubUnreachable, DataMissing, DatasetConfigError, MissingExtra) as e:
        logger.error('%s', e)
        return 2
    from src.datasets.storage.atomic import atomic_write
    try:  # each file whole or the previous one kept: a full disk never leaves a cut report
        with atomic_write(os.path.join(args.out, 'report.html')) as f:
            f.write(html)
        with atomic_write(os.path.join(args.out, 'report.json')) as f:
            json.dump(numbers, f, indent=1)
    except OSError as e:
        logger.error('report not written: %s', e)
        return 1
    logger.info('report: %s', os.path.join(args.out, 'report.html'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
