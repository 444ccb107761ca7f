"""What ``tools/train.py`` decides and says around mmengine's Runner: whether ``--resume`` has a
checkpoint to resume, a config whose batch sizes disagree, and one screen before the first
iteration (what is trained on, how many records, the sampler, where checkpoints go) in place of
mmengine's environment, config and hook dumps, which stay in the run's log file (and on the
console with ``--verbose``)."""
from __future__ import annotations

import logging
import os

# mmengine's console lines that ``--verbose`` keeps: the start of each dump's message
DUMPS = ('\n' + '-' * 60 + '\nSystem environment:', 'Config:\n', 'Hooks will be executed in the following order',
         'Distributed training is not used', 'Checkpoints will be saved to')
FRESH = 'auto'  # --resume auto: the latest checkpoint if there is one, else a fresh start
logger = logging.getLogger(__name__)


class TrainConfigError(ValueError):
    """The run cannot start as asked; the message says why and what to do."""


def resume_plan(resume: str | None, work_dir: str) -> tuple[bool, str | None]:
    """``(resume, load_from)`` for the Runner from ``--resume`` (None: not given; 'latest': the
    option alone; 'auto'; or a checkpoint file). 'latest' with no checkpoint in ``work_dir`` is an
    error: a mistyped or empty --work-dir would otherwise start from iteration 0 unnoticed."""
    if resume is None:
        return False, None
    if resume not in ('latest', FRESH):
        if not os.path.isfile(resume):
            raise TrainConfigError(f'--resume {resume}: no such checkpoint file ({os.path.abspath(resume)})')
        return True, resume
    if not os.path.isfile(os.path.join(work_dir, 'last_checkpoint')):
        there = 'holds no checkpoint' if os.path.isdir(work_dir) else 'does not exist'
        if resume == FRESH:
            logger.info('--resume auto: the work dir %s %s: starting fresh', os.path.abspath(work_dir), there)
            return False, None
        raise TrainConfigError(f'--resume: the work dir {os.path.abspath(work_dir)} {there} (no last_checkpoint): '
                               'check --work-dir, or pass --resume auto to start fresh when there is nothing to '
                               'resume')
    return True, None


def check_batch_sizes(cfg) -> None:
    """A sampler that takes ``batch_size`` (BucketSampler, FixedBatchMultiSourceSampler) must be
    given the DataLoader's: each ``batch_size`` indices it yields are one batch."""
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name) or {}
        sampler = loader.get('sampler') or {}
        if 'batch_size' in sampler and 'batch_size' in loader and sampler['batch_size'] != loader['batch_size']:
            kind = getattr(sampler.get('type'), '__name__', sampler.get('type'))
            raise TrainConfigError(
                f'{name}: the sampler ({kind}) has batch_size={sampler["batch_size"]} but the DataLoader '
                f'batch_size={loader["batch_size"]}; they must be the same (each batch_size indices the sampler '
                f'yields are one batch): set both, e.g. --cfg-options {name}.batch_size={sampler["batch_size"]}')


def _not_a_dump(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(DUMPS)


def runner_class(verbose: bool):
    """mmengine's Runner; unless ``verbose``, one whose console leaves out the dumps (its log file keeps them)."""
    from mmengine.runner import Runner
    if verbose:
        return Runner

    class QuietRunner(Runner):
        def build_logger(self, *args, **kwargs):
            logger = super().build_logger(*args, **kwargs)
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler:  # the console, not the FileHandler subclass
                    handler.addFilter(_not_a_dump)
            return logger

    return QuietRunner


def describe_run(runner) -> list[str]:
    """The screen before iteration 1: data, sampler, loop, checkpoints."""
    from src.datasets.build import leaf_datasets
    loader = runner.train_dataloader
    dataset = loader.dataset
    leaves = leaf_datasets(dataset)
    lines = [f'training {type(runner.model).__name__} on {len(dataset)} records'
             + (f' of {len(leaves)} datasets:' if len(leaves) > 1 else ':')]
    for leaf in leaves[:8]:
        where = getattr(leaf, 'data_path', None) or type(leaf).__name__
        extra = ''.join(f', {key} {getattr(leaf, key)}' for key in ('image_size', 'image_latents_folder')
                        if getattr(leaf, key, None) is not None)
        lines.append(f'  {where}: {len(leaf)} records{extra}')
    if len(leaves) > 8:
        lines.append(f'  ... and {len(leaves) - 8} more')
    sampler = loader.batch_sampler if getattr(loader, 'batch_sampler', None) is not None else loader.sampler
    inner = getattr(sampler, 'sampler', None)
    what = type(sampler).__name__ + (f' over {type(inner).__name__}' if inner is not None and
                                     type(sampler).__name__ == 'BatchSampler' else '')
    details = ''.join(f', {key}={getattr(source, key)}' for source in (inner, sampler) if source is not None
                      for key in ('shuffle', 'seed') if hasattr(source, key))
    batch = loader.batch_size or getattr(sampler, 'batch_size', None)  # a batch sampler holds it
    lines.append(f'sampler: {what}{details}; batch {batch} per rank x {runner.world_size} '
                 f'rank(s), {loader.num_workers} worker(s) per rank')
    loop = runner.train_loop
    start = f'resumed at iteration {runner.iter}' if runner.iter else 'from iteration 0'
    lines.append(f'loop: {type(loop).__name__}, {getattr(loop, "max_iters", "?")} iterations, {start}')
    checkpoint = next((hook for hook in runner.hooks if type(hook).__name__ == 'CheckpointHook'), None)
    every = (f'every {checkpoint.interval} {"epochs" if checkpoint.by_epoch else "iterations"} '
             if checkpoint is not None else 'none configured, ')
    lines.append(f'checkpoints: {every}into {os.path.abspath(runner.work_dir)} (--resume goes on from the latest); '
                 f'full log with the environment and config: {os.path.abspath(runner.log_dir)}')
    return lines


def run_summary_hook():
    """A hook that logs :func:`describe_run` once, before the first iteration (after a resume)."""
    from mmengine.hooks import Hook

    class RunSummary(Hook):
        priority = 'VERY_LOW'

        def before_train(self, runner) -> None:
            for line in describe_run(runner):
                runner.logger.info(line)

    return RunSummary()


def stop_hook(iteration: int):
    """``--stop-at``: the process ends right after iteration ``iteration`` and its checkpoint, with no
    clean-up, as a killed job does: a rehearsal of a stop, to try ``--resume`` on."""
    from mmengine.hooks import Hook

    class StopAt(Hook):
        priority = 'LOWEST'  # after the CheckpointHook of the same iteration

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if runner.iter + 1 == iteration:  # runner.iter counts the iterations before this one
                runner.logger.info(f'stopped after iteration {iteration} as asked (--stop-at), without clean-up '
                                   'as a killed job; the same command with --resume goes on from the latest '
                                   f'checkpoint in {runner.work_dir}')
                logging.shutdown()
                os._exit(0)

    return StopAt()
