"""Join per-record values (aesthetic, CLIP similarity, NSFW and watermark probabilities, duplicate
clusters, ...) from a parquet into the index of a config's dataset, by key, without touching its
images; the dataset's filters (filters=dict(where=[...])) and extra_keys can then use them.

    .venv/bin/python tools/add_columns.py configs/datasets/midjourney23m.py scores.parquet --key image

--key image: the record's image path as the index holds it (data.json's "image", the dalle3
table's "filename"); --key url / --key key: the URL or sample key the URL route keeps from
img2dataset; or any column the index and the parquet both have. A record without a value gets
null. A summary says how many records got values and how many keys of the parquet matched none.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger('add_columns')


def main(argv=None) -> int:
    from src.cli.options import ConfigOptions
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('scores', help='a parquet: the key column and the columns to join')
    parser.add_argument('--key', default='image', help='the column to join by (default: %(default)s)')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions, default={},
                        help="override config keys, as mmengine's tools take them (key=value ...)")
    args = parser.parse_args(argv)

    from src.cli.config import read_config
    from src.cli.logs import setup_logging
    from src.datasets.build import dataset_config
    from src.datasets.errors import IndexFormatError
    from src.prepare.columns import index_paths, join_columns
    setup_logging('add_columns')
    cfg = read_config(args.config, args.cfg_options)  # a JSON or YAML config through the data-config rule
    paths = index_paths(dataset_config(cfg))
    if not paths:
        logger.error('%s: no dataset with a data_path', args.config)
        return 2
    for data_path, image_key in dict.fromkeys(paths):
        try:
            logger.info('%s', join_columns(data_path, args.scores, args.key, image_key=image_key).summary())
        except (IndexFormatError, OSError) as e:
            logger.error('%s', e)
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
