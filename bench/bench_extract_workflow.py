"""Midjourney preparation end to end: the guide's workflow (extract.py's ``tar -xf`` loop on N
processes, then process_metadata.py's ``iterrows`` loop and ``json.dump(indent=2)``) against
``tools/prepare_midjourney23m.py`` (safe extraction, GNU tar for the tars the header scan proves
clean, then data.json), on the same layout, until what each wrote is on disk.

Each step runs as a user runs it, a fresh process (imports and start-up included). Rounds alternate
(guide, tool, guide, tool, ...) with the extracted images and caches dropped between them, so that
the write-back of one run does not fall on the next; medians are reported. After each, the index
alone is rebuilt (the images in place): process_metadata.py again, against a re-run of the tool
(every tar done), data.json removed before each.

    PYTHONPATH=. .venv/bin/python bench/bench_extract_workflow.py [--tars 20 --members 1000 --mean-kb 16]
"""
from __future__ import annotations

import argparse
import os
import shutil
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def drop_caches() -> None:
    os.sync()
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3')  # root only; otherwise the rounds just alternate
    except OSError:
        pass


# The guide's two scripts as it gives them (docs: the Midjourney-23M guide), run where it runs them.
GUIDE_EXTRACT = """import multiprocessing as mp
import argparse
import os
from tqdm import tqdm
from glob import glob
import subprocess


def single_process(tar_list, output_dir):
    for tar_file in tqdm(tar_list):
        # Extract directly to output directory
        subprocess.run(["tar", "-xf", tar_file, "-C", output_dir, "--no-same-owner"])


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--start', default=0, type=int)
    parser.add_argument('--end', default=-1, type=int)
    parser.add_argument('--num-processes', default=8, type=int)
    args = parser.parse_args()
    output_dir = '../../images'
    os.makedirs(output_dir, exist_ok=True)
    tar_files = sorted(glob('**/*.tar', recursive=True))
    if args.end == -1:
        args.end = len(tar_files)
    tar_files = tar_files[args.start:args.end]
    num_tars = len(tar_files)
    num_processes = args.num_processes
    num_tars_per_process = num_tars // num_processes
    res = num_tars % num_processes
    if res > 0:
        num_processes += 1
    processes = [mp.Process(target=single_process,
                            args=(tar_files[process_id * num_tars_per_process:
                                            (process_id + 1) * num_tars_per_process]
                                  if process_id < num_processes - 1
                                  else tar_files[process_id * num_tars_per_process:],
                                  output_dir))
                 for process_id in range(num_processes)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
"""

def guide_metadata_script() -> str:
    """process_metadata.py: bench_metadata's copy of the guide's function, with its imports and call."""
    import inspect

    from bench.bench_metadata import guide_process_metadata
    return ('import glob\nimport json\nimport os\n\nimport pandas as pd\n\n\n'
            f'{inspect.getsource(guide_process_metadata)}\n\nif __name__ == "__main__":\n'
            '    guide_process_metadata()\n')


def run(command: list[str], cwd: str) -> None:
    """A fresh process, as a user starts it: its imports and start-up are part of its time."""
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=str(REPO)))


def guide(root: str, processes: int, scripts: str) -> None:
    run([sys.executable, os.path.join(scripts, 'extract.py'), '--num-processes', str(processes)],
        os.path.join(root, 'raw', 'images'))
    guide_rebuild(root, processes, scripts)


def guide_rebuild(root: str, processes: int, scripts: str) -> None:
    run([sys.executable, os.path.join(scripts, 'process_metadata.py')], root)


def tool(root: str, processes: int, scripts: str) -> None:
    """The whole preparation; a second run (every tar done) rebuilds the index only."""
    run([sys.executable, str(REPO / 'tools' / 'prepare_midjourney23m.py'), '--root', root,
         '--num-processes', str(processes)], str(REPO))


def timed_to_disk(step, *args) -> tuple[float, float]:
    """Seconds until what ``step`` wrote is on disk, and the CPU seconds of its processes (user and
    system: steadier than the wall time on a machine that others load)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    step(*args)
    os.sync()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return time.perf_counter() - start, cpu


def clean(root: str) -> None:
    for name in ('images', '.prepare'):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    for name in ('data.json', 'prepare_report.json'):
        Path(root, name).unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--tars', type=int, default=20)
    parser.add_argument('--members', type=int, default=1000)
    parser.add_argument('--mean-kb', type=int, default=16)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--num-processes', type=int, default=2)
    parser.add_argument('--small', action='store_true', help='4 tars x 200 images, 1 round: a quick check')
    args = parser.parse_args()
    if args.small:
        args.tars, args.members, args.rounds = 4, 200, 1
    from bench.bench_tar import make_layout
    with tempfile.TemporaryDirectory() as work:
        root = os.path.join(work, 'midjourney-23m')
        total = make_layout(root, args.tars, args.members, args.mean_kb * 1024)
        Path(work, 'extract.py').write_text(GUIDE_EXTRACT)
        Path(work, 'process_metadata.py').write_text(guide_metadata_script())
        print(f'{args.tars} tars x {args.members} images of {args.mean_kb} KB on average ({total / 2 ** 20:.0f} MiB), '
              f'{args.num_processes} processes, {args.rounds} alternating rounds, seconds until on disk, '
              'each step a fresh process (its imports included)')
        names = ('guide (extract.py + process_metadata.py)', 'prepare_midjourney23m')
        times = {name: [] for name in names}
        rebuilds = {name: [] for name in names}  # the index alone, the images in place
        for _ in range(args.rounds):
            for name, run_all, rebuild in zip(names, (guide, tool), (guide_rebuild, tool)):
                clean(root)
                drop_caches()
                times[name].append(timed_to_disk(run_all, root, args.num_processes, work))
                Path(root, 'data.json').unlink()  # built again from nothing by both
                rebuilds[name].append(timed_to_disk(rebuild, root, args.num_processes, work))
        for title, table in (('end to end', times), ('index rebuilt (process_metadata.py / a re-run)', rebuilds)):
            print(f' {title}:')
            for name, runs in table.items():
                print(f'  {name:42} median {statistics.median(r[0] for r in runs):6.2f} s   '
                      f'(rounds: {", ".join(f"{r[0]:.2f}" for r in runs)})   CPU median '
                      f'{statistics.median(r[1] for r in runs):6.2f} s')
            guide_s, tool_s = (statistics.median(r[0] for r in runs) for runs in table.values())
            guide_cpu, tool_cpu = (statistics.median(r[1] for r in runs) for runs in table.values())
            print(f'  tool / guide: {guide_s / tool_s:.2f}x the speed of the guide\'s workflow, '
                  f'{tool_cpu / guide_cpu:.2f}x its CPU')
    return 0


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))
    sys.exit(main())
