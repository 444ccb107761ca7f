"""Train a config with mmengine's Runner: the runnable end of the data path.

    .venv/bin/python tools/train.py configs/examples/tiny_t2i.py --work-dir work
    .venv/bin/python tools/train.py configs/examples/tiny_t2i.py --work-dir work --resume   # after a stop
    torchrun --nproc_per_node 8 tools/train.py CONFIG --launcher pytorch --work-dir work

Checkpoints go to --work-dir (the config's checkpoint hook says how often). --resume continues from
the latest one there: with ResumableTrainLoop in the config's train_cfg, at the very next batch of
the uninterrupted run, without reading the skipped samples. --tokenizer points every dataset's
tokenizer at a local copy; the training log (and vis_data/*.json, one line per logged iteration)
is in a timestamped folder of --work-dir.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger('train')


def parse_args(argv=None) -> argparse.Namespace:
    from src.cli.config import add_config_options
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='a training config: a model, its optimizer and train_cfg, a train_dataloader')
    parser.add_argument('--work-dir', help='checkpoints and logs (default: work_dirs/<config name>)')
    parser.add_argument('--resume', action='store_true', help='continue from the latest checkpoint in --work-dir')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='pytorch under torchrun (default: %(default)s, one process)')
    add_config_options(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from src.cli.logs import setup_logging
    setup_logging('train')
    from src.cli.config import load_config
    from src.cli.hub import HubUnreachable
    from src.datasets.extras import MissingExtra

    try:  # before the Runner and torch are imported: a model out of reach is said in seconds
        cfg = load_config(args.config, args.cfg_options, args.tokenizer, builds='train_dataloader')
    except (HubUnreachable, MissingExtra) as e:
        logger.error('%s', e)
        return 2
    from mmengine.runner import Runner

    import src.engine  # noqa: F401 (every checkpoint --resume or load_from reads is loaded weights-only)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or os.path.join('work_dirs', Path(args.config).stem)
    cfg.launcher = args.launcher
    if args.resume:
        from src.engine.resume import NoCheckpoint, latest_whole_checkpoint
        cfg.resume = True  # from the latest whole checkpoint of work_dir (mmengine's own pick may be cut short)
        try:
            if cfg.get('load_from') is None:
                cfg.load_from = latest_whole_checkpoint(cfg.work_dir)
        except NoCheckpoint as e:
            logger.error('%s', e)
            return 2
    Runner.from_cfg(cfg).train()
    return 0


if __name__ == '__main__':
    sys.exit(main())
