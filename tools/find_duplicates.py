"""Find exact duplicates (the same bytes) and near duplicates (the same picture re-encoded or
resized: a perceptual hash within --max-distance bits) among the pictures of a config's datasets,
and join the clusters into each index as the column dup_cluster; then filters=dict(dedup=True)
keeps one record of each cluster. Needs the dedup extra (imagehash).

    .venv/bin/python tools/find_duplicates.py configs/datasets/midjourney23m.py [--tokenizer PATH]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger('find_duplicates')


def main(argv=None) -> int:
    from src.cli.config import add_config_options
    from src.prepare.duplicates import MAX_DISTANCE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    add_config_options(parser)
    parser.add_argument('--max-distance', type=int, default=MAX_DISTANCE,
                        help='perceptual hash bits (of 64) two near duplicates may differ by (default: %(default)s)')
    args = parser.parse_args(argv)
    from src.cli.config import dataset_roots, load_config
    from src.cli.logs import setup_logging
    from src.datasets.build import build_leaf_datasets
    from src.datasets.errors import IndexFormatError
    from src.datasets.extras import MissingExtra
    from src.prepare.duplicates import find_duplicates, without_dedup
    setup_logging('find_duplicates')
    try:
        cfg = load_config(args.config, args.cfg_options, args.tokenizer)
        for root in dataset_roots(cfg):
            without_dedup(root)
        for dataset in build_leaf_datasets(cfg):
            report = find_duplicates(dataset, args.max_distance)
            logger.info('%s: %s', dataset.data_path, report.summary())
            logger.info('%s', report.join.summary())
    except (MissingExtra, IndexFormatError) as e:
        logger.error('%s', e)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
