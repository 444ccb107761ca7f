"""Time to resume training at iteration N: mmengine's IterBasedTrainLoop (xtuner's TrainLoop is it),
which replays N batches through the dataloader, against ResumableTrainLoop, which places the sampler.

The data is a prepared miniature midjourney download read through configs/datasets/midjourney23m.py
(2 DataLoader workers, batch 8, 256 px), the model a toy. The checkpoint at iteration N is the one
of a 1-iteration run with its iteration count set to N (what a loop reads back of it is the same).
Timed: from ``runner.train()`` to the end of the first iteration after N, in a fresh process each.

    PYTHONPATH=. .venv/bin/python bench/bench_resume.py [--iters 1000 10000 | --small]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tests'))  # the recording toy model and Runner set-up of the tests


def loader_cfg(tokenizer_path: str) -> dict:
    from mmengine.config import Config

    from src.synthetic.local_config import localize
    cfg = Config.fromfile(str(REPO / 'configs' / 'datasets' / 'midjourney23m.py'))
    loader = localize(cfg, tokenizer_path, dataset_overrides=dict(image_size=256), batch_size=8, num_workers=2,
                      pin_memory=False, persistent_workers=False)
    return loader


def child(args) -> None:
    """One timed resume (a fresh process, so that no page cache of decoded state carries over)."""
    from mmengine.runner import IterBasedTrainLoop

    from resume_helpers import collate_with_files, train
    from src.engine import ResumableTrainLoop
    loader = loader_cfg(args.tokenizer)
    loader.collate_fn = dict(type=collate_with_files, pad_index=0)
    loop = ResumableTrainLoop if args.loop == 'ours' else IterBasedTrainLoop
    start = time.perf_counter()
    train(Path(args.work) / f'{args.loop}-{args.at}', loader, args.at + 1, 10 ** 9, resume_from=args.checkpoint,
          loop=loop)
    print(json.dumps({'seconds': time.perf_counter() - start}))


def checkpoint_at(iteration: int, base: str, out: str) -> str:
    import torch

    from src.engine.checkpoint import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    state = torch.load(base, weights_only=True)
    state['meta']['iter'] = iteration
    state['message_hub']['runtime_info']['iter'] = iteration
    torch.save(state, out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=int, nargs='+', default=[1000, 10000])
    parser.add_argument('--small', action='store_true', help='N = 100 and 300')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--loop', help=argparse.SUPPRESS)
    parser.add_argument('--at', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--checkpoint', help=argparse.SUPPRESS)
    parser.add_argument('--tokenizer', help=argparse.SUPPRESS)
    parser.add_argument('--work', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    iters = [100, 300] if args.small else args.iters

    from resume_helpers import collate_with_files, train
    from src.prepare.datasets import prepare_midjourney23m
    from src.synthetic.downloads import make_midjourney23m
    from src.synthetic.tokenizer import build_tokenizer

    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        make_midjourney23m(Path('data/midjourney-23m'), n=64, faults=False)
        prepare_midjourney23m('data/midjourney-23m', num_processes=2)
        tokenizer = build_tokenizer(Path(work) / 'tokenizer')
        loader = loader_cfg(tokenizer)
        loader.collate_fn = dict(type=collate_with_files, pad_index=0)
        train(Path(work) / 'base', loader, 1, 1)
        print('resume at iteration N (batch 8, 2 workers, 256 px), seconds until the next iteration is done')
        print(f'{"N":>7} {"mmengine loop":>14} {"ResumableTrainLoop":>19} {"ratio":>8}')
        for n in iters:
            checkpoint = checkpoint_at(n, str(Path(work) / 'base' / 'iter_1.pth'), str(Path(work) / f'at{n}.pth'))
            seconds = {}
            for loop in ('mmengine', 'ours'):
                result = subprocess.run(
                    [sys.executable, __file__, '--child', '--loop', loop, '--at', str(n), '--checkpoint', checkpoint,
                     '--tokenizer', tokenizer, '--work', work], capture_output=True, text=True,
                    env=dict(os.environ, PYTHONPATH=str(REPO)))
                if result.returncode:
                    print(result.stderr[-3000:], file=sys.stderr)
                    return 1
                seconds[loop] = json.loads(result.stdout.strip().splitlines()[-1])['seconds']
            print(f'{n:>7} {seconds["mmengine"]:>14.2f} {seconds["ours"]:>19.2f} '
                  f'{seconds["mmengine"] / seconds["ours"]:>7.1f}x', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
