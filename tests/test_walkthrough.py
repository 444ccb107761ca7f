"""docs/walkthrough.md, run as written (offline, on the demo's miniature download): prepare, inspect,
cache latents, train, a stop (as a killed job), a resume, and the check that the resumed run saw the
very batches of an uninterrupted one (each iteration logs a digest of its batch). The loss falls."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from src.cli.run_logs import compare_batches, logged_iterations

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path):
    commands = walkthrough_commands()
    assert commands[0] == 'make demo'  # what made the environment these tests run in; tested on its own
    for name in ('tools', 'configs'):
        (tmp_path / name).symlink_to(REPO / name)  # the commands' paths, from the repository root
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    cwd, outputs = tmp_path, {}
    for command in commands[1:]:
        if command.startswith('cd '):
            cwd = cwd / command[3:]
            continue
        result = subprocess.run(argv(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f'{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}'
        outputs[command] = result
        if '--stop-at' in command:  # stopped as a killed job: its last checkpoint is the one asked for
            stop = int(re.search(r'--stop-at (\d+)', command).group(1))
            assert (cwd / 'work' / 'last_checkpoint').read_text().strip().endswith(f'iter_{stop}.pth')
            assert max(logged_iterations(cwd / 'work')) == stop

    assert (cwd / 'report' / 'report.html').exists()
    assert json.loads((cwd / 'data/midjourney-23m_dc32_64/latents.json').read_text())['shapes']
    check = next(result for command, result in outputs.items() if 'compare_runs.py' in command)
    assert check.stdout.strip() == 'iterations 1-80: the same 80 batches in work as in whole'
    whole = logged_iterations(cwd / 'whole')
    first_losses = [whole[i]['loss'] for i in range(1, 11)]
    last_losses = [whole[i]['loss'] for i in range(71, 81)]
    assert sum(last_losses) < 0.67 * sum(first_losses), (first_losses, last_losses)


def test_compare_runs_names_the_first_other_batch(tmp_path):
    """The resume check fails on the first iteration whose batch differs."""
    for run, digests in (('work', [1, 2, 3, 9]), ('whole', [1, 2, 3, 4])):
        (tmp_path / run / 't' / 'vis_data').mkdir(parents=True)
        (tmp_path / run / 't' / 'vis_data' / 't.json').write_text(
            ''.join(json.dumps({'iter': i, 'batch_digest': d}) + '\n' for i, d in enumerate(digests, 1)))
    result = subprocess.run([sys.executable, str(REPO / 'tools/compare_runs.py'), 'work', 'whole'], cwd=tmp_path,
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 1 and result.stderr.startswith('iteration 4: other batches'), result.stderr
    assert compare_batches(logged_iterations(tmp_path / 'work'), logged_iterations(tmp_path / 'whole'),
                           start=1) == ([1, 2, 3, 4], 4)
