"""Train a config with mmengine's Runner: the runnable end of the data path.

    .venv/bin/python tools/train.py CONFIG --work-dir work                # from the folder holding data/
    .venv/bin/python tools/train.py CONFIG --work-dir work --resume       # after a stop
    .venv/bin/torchrun --nproc_per_node 8 tools/train.py CONFIG --launcher pytorch --work-dir work

Checkpoints go to --work-dir (the config's checkpoint hook says how often). --resume continues from
the latest one there (an error when there is none: --resume auto starts fresh then; --resume FILE
takes that checkpoint): with ResumableTrainLoop in the config's train_cfg, at the very next batch of
the uninterrupted run, without reading the skipped samples (tools/compare_runs.py checks that
against an uninterrupted run; --stop-at ITER rehearses a stop). --tokenizer points every dataset's
tokenizer at a local copy. Before the first iteration the tool says what it trains on, the sampler
and where checkpoints go; mmengine's environment, config and hook dumps are in the training log
(a timestamped folder of --work-dir, with vis_data/*.json, one line per logged iteration), and on
the console too with --verbose.
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
    parser.add_argument('--resume', nargs='?', const='latest', metavar='auto|FILE',
                        help='continue from the latest checkpoint in --work-dir (an error when there is none); '
                             '--resume auto: the same, or a fresh start when there is none; --resume FILE: that '
                             'checkpoint')
    parser.add_argument('--stop-at', type=int, metavar='ITER',
                        help='end the process after iteration ITER (and its checkpoint) without clean-up, as a killed '
                             'job: to rehearse --resume')
    parser.add_argument('--verbose', action='store_true',
                        help="mmengine's environment, config and hook dumps on the console too (always in the log)")
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='pytorch under torchrun (default: %(default)s, one process)')
    add_config_options(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from src.cli.logs import setup_logging
    setup_logging('train')
    from src.cli.data_paths import DataMissing
    from src.cli.hub import HubUnreachable
    from src.cli.models import preflight
    from src.cli.training import (TrainConfigError, check_batch_sizes, resume_plan, run_summary_hook, runner_class,
                                  stop_hook)
    from src.datasets.errors import DatasetConfigError
    from src.datasets.extras import MissingExtra

    try:  # before the Runner and torch are imported: a model out of reach is said in seconds
        preflight(args.config, args.tokenizer, cfg_options=args.cfg_options)
        from src.cli.config import load_config
        cfg = load_config(args.config, args.cfg_options, args.tokenizer, builds='train_dataloader')
        cfg.work_dir = args.work_dir or cfg.get('work_dir') or os.path.join('work_dirs', Path(args.config).stem)
        resume, load_from = resume_plan(args.resume, cfg.work_dir)
        check_batch_sizes(cfg)
    except (HubUnreachable, DataMissing, MissingExtra, TrainConfigError) as e:
        logger.error('%s', e)
        return 2
    import src.engine  # noqa: F401 (every checkpoint --resume or load_from reads is loaded weights-only)
    from src.engine.resume import NoCheckpoint, latest_whole_checkpoint
    cfg.launcher = args.launcher
    if resume:
        cfg.resume = True
        try:  # the latest whole checkpoint of work_dir (mmengine's own pick may be cut short), or --resume FILE
            cfg.load_from = load_from or cfg.get('load_from') or latest_whole_checkpoint(cfg.work_dir)
        except NoCheckpoint as e:
            logger.error('%s', e)
            return 2
    runner = runner_class(args.verbose).from_cfg(cfg)
    runner.register_hook(run_summary_hook())
    if args.stop_at is not None:
        runner.register_hook(stop_hook(args.stop_at))
    try:
        runner.train()
    except DatasetConfigError as e:  # found when the dataset is built
        logger.error('%s', e)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
