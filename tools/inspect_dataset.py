"""A report of what a dataset config holds, to look at before training on it: counts and drop
reasons (from prepare_report.json and the index), prompt lengths against max_length (how many
prompts upstream's cut shortens, and how many lose IMG_START_TOKEN), image sizes and aspect ratios,
caption lengths and duplicates, and a preview grid of samples as the model sees them.

    python tools/inspect_dataset.py configs/datasets/laion6m.py --out report/ [--cfg-options ...]

Writes <out>/report.html (one self-contained page) and <out>/report.json (the numbers). Statistics
come from --sample records drawn with a fixed seed. The prompt lengths are also counted over every
record where the dataset stores its prompt ids (pretokenize=True), or with --all-prompts, which
tokenizes them all once and stores them where a training run with pretokenize=True reads them.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger('inspect_dataset')


def main(argv=None) -> int:
    from mmengine.config import Config, DictAction
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    parser.add_argument('--out', required=True, help='folder for report.html and report.json')
    parser.add_argument('--sample', type=int, default=2000, help='records looked at per dataset (default: %(default)s)')
    parser.add_argument('--preview', type=int, default=8, help='samples shown per dataset (default: %(default)s)')
    parser.add_argument('--all-prompts', action='store_true',
                        help='count prompt lengths over every record: stores the prompt ids as pretokenize=True '
                             'does (once per tokenizer and template; training with pretokenize=True reuses them)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    from tqdm import tqdm

    from src.datasets.build import build_leaf_datasets
    from src.datasets.captions import resolve_caption
    from src.datasets.errors import SampleError
    from src.report.html import dataset_section, image_data_url, page
    from src.report.statistics import dataset_stats

    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    sections, numbers = [], []
    for dataset in tqdm(build_leaf_datasets(cfg), desc='datasets', unit='dataset'):
        if args.all_prompts and dataset.prompt_ids is None:
            dataset.prompt_ids = dataset.load_prompt_ids()
        stats = dataset_stats(dataset, args.sample)
        tiles = []
        if dataset.decodes_images:
            for row in range(len(dataset)):
                if len(tiles) == args.preview:
                    break
                try:
                    sample = dataset.prepare_data(row)
                    caption = resolve_caption(dataset.index[row], dataset.cap_keys, dataset.read_annotation)
                except SampleError:
                    continue
                tiles.append((image_data_url(sample['pixel_values']), caption))
        sections.append(dataset_section(stats, tiles))
        numbers.append(stats.to_dict())
        cut, _, prompts = stats.prompt_counts()
        logger.info('%s: %d usable of %d records; %d of %s longer than max_length %d',
                    stats.data_path, stats.usable, stats.records, cut, prompts, stats.max_length)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'report.html'), 'w', encoding='utf-8') as f:
        f.write(page(f'Dataset report: {args.config}', sections))
    with open(os.path.join(args.out, 'report.json'), 'w', encoding='utf-8') as f:
        json.dump(numbers, f, indent=1)
    logger.info('report: %s', os.path.join(args.out, 'report.html'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
