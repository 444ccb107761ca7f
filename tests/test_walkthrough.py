"""docs/walkthrough.md, run as written (offline, on the demo's miniature download): prepare, inspect,
cache latents, train, a kill, a resume. The loss falls, and the resumed run sees the very batches
of an uninterrupted one (each iteration logs a digest of its batch)."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = re.compile(r'iter_(\d+)\.pth$')


def walkthrough_commands() -> list[str]:
    """The shell block after the ``<!-- walkthrough -->`` marker, comments dropped."""
    text = (REPO / 'docs' / 'walkthrough.md').read_text()
    block = re.search(r'<!-- walkthrough -->\s*```shell\n(.*?)```', text, re.S).group(1)
    return [re.sub(r'\s+#.*$', '', line).strip() for line in block.splitlines() if line.strip()]


def argv(command: str) -> list[str]:
    words = shlex.split(command)
    if words[0].endswith('.venv/bin/python'):
        words[0] = sys.executable  # the environment the tests run in: the one `make` made
    return words


def scalars(work: Path) -> dict[int, dict]:
    """Iteration -> what the training log recorded for it (the runs' logs, in order)."""
    logged = {}
    for log in sorted(work.glob('*/vis_data/*.json')):
        if log.name != 'scalars.json':
            for line in log.read_text().splitlines():
                entry = json.loads(line)
                logged[entry['iter']] = entry
    return logged


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path):
    commands = walkthrough_commands()
    assert commands[0] == 'make demo'  # what made the environment these tests run in; tested on its own
    for name in ('tools', 'configs'):
        (tmp_path / name).symlink_to(REPO / name)  # the commands' paths, from the repository root
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    cwd = tmp_path
    trainings = [command for command in commands if '/train.py' in command]
    for command in commands[1:]:
        if command.startswith('cd '):
            cwd = cwd / command[3:]
            continue
        if command == trainings[0]:  # killed once a checkpoint is whole (the first, or one soon after)
            process = subprocess.Popen(argv(command), cwd=cwd, env=env, start_new_session=True,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            pointer, deadline = cwd / 'work' / 'last_checkpoint', time.monotonic() + 300
            while not (pointer.exists() and CHECKPOINT.search(pointer.read_text().strip())):
                assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
                time.sleep(0.05)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            # Where the killed run stopped: 20 iterations run in well under the wait above on a fast
            # machine, so the pointer may have moved on before the kill.
            killed_at = int(CHECKPOINT.search(pointer.read_text().strip()).group(1))
            assert killed_at < 80, 'the first training ended before it could be killed'
            continue
        result = subprocess.run(argv(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f'{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}'

    assert (cwd / 'report' / 'report.html').exists()
    assert json.loads((cwd / 'data/midjourney-23m_dc32_64/latents.json').read_text())['shapes']
    uninterrupted = subprocess.run(argv(trainings[0].replace('--work-dir work', '--work-dir whole')), cwd=cwd,
                                   env=env, capture_output=True, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    whole, resumed = scalars(cwd / 'whole'), scalars(cwd / 'work')
    last = max(whole)
    assert last == max(resumed) == 80
    assert [resumed[i]['batch_digest'] for i in range(killed_at + 1, last + 1)] == \
        [whole[i]['batch_digest'] for i in range(killed_at + 1, last + 1)]
    first_losses = [whole[i]['loss'] for i in range(1, 11)]
    last_losses = [whole[i]['loss'] for i in range(last - 9, last + 1)]
    assert sum(last_losses) < 0.67 * sum(first_losses), (first_losses, last_losses)
