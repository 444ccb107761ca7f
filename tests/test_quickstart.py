"""The README's quick start, run as written from a folder outside the clone (the hub out of reach: a
miniature BLIP3o-60k download in its place, the tokenizer in the hub cache), with the user's own
config (``my_t2i.py``) taking the project's configs by their package path; and that config stopped
and resumed at the exact next batch."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from src.cli.run_logs import compare_batches, logged_iterations
from src.synthetic.downloads import make_blip3o60k

REPO = Path(__file__).resolve().parents[1]
HUB_TOKENIZER = 'OpenGVLab/InternVL3-2B'  # what configs/processors.py names


def readme_block(marker: str, language: str) -> str:
    text = (REPO / 'README.md').read_text()
    return re.search(rf'<!-- {re.escape(marker)} -->\s*```{language}\n(.*?)```', text, re.S).group(1)


def in_hub_cache(home: Path, repo_id: str, folder: str) -> None:
    """``folder`` as the hub cache under ``home`` holds ``repo_id`` (what a download leaves)."""
    repository = home / 'hub' / f'models--{repo_id.replace("/", "--")}'
    revision = '0' * 40
    shutil.copytree(folder, repository / 'snapshots' / revision)
    (repository / 'refs').mkdir()
    (repository / 'refs' / 'main').write_text(revision)


def argv(command: str, variables: dict) -> list[str]:
    words = [re.sub(r'\$(\w+)', lambda m: variables[m.group(1)], word) for word in shlex.split(command)]
    if words[0].endswith('.venv/bin/python'):
        words[0] = sys.executable  # the environment the tests run in: the one `make` made
    return words


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written_outside_the_clone(tmp_path, tokenizer_path):
    user = tmp_path / 'my-training-repo'
    user.mkdir()
    (user / 'my_t2i.py').write_text(readme_block('my_t2i.py', 'python'))
    in_hub_cache(tmp_path / 'hf', HUB_TOKENIZER, tokenizer_path)
    env = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}  # the tools find the clone
    env.update(HF_HOME=str(tmp_path / 'hf'), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    variables, ran = {}, []
    for command in [line.strip() for line in readme_block('quickstart', 'shell').splitlines() if line.strip()]:
        if re.fullmatch(r'\w+=\S+', command):
            name = command.split('=')[0]
            variables[name] = str(REPO)  # T2I=/path/to/t2i-data: this clone
            continue
        if 'huggingface-cli download BLIP3o/BLIP3o-60k' in command:  # the hub is out of reach here
            assert '--local-dir data/BLIP3o-60k/raw' in command
            make_blip3o60k(user / 'data/BLIP3o-60k', faults=False, with_index=False)
            continue
        if 'torchrun' in command:  # the GPU step, with the real autoencoder: docs/walkthrough.md runs it
            assert 'tools/cache_latents.py' in command
            continue
        result = subprocess.run(argv(command, variables), cwd=user, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f'{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}'
        ran.append(command)
    assert len(ran) == 4 and (user / 'report' / 'report.html').exists()
    assert max(logged_iterations(user / 'work')) == 80

    # the same config stopped (as a killed job) and resumed: the batches of the uninterrupted run
    train = next(command for command in ran if command.endswith('--work-dir work'))
    for extra in ('--stop-at 40', '--resume'):
        command = train.replace('--work-dir work', f'--work-dir stopped {extra}')
        result = subprocess.run(argv(command, variables), cwd=user, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f'{command}\n{result.stderr[-3000:]}'
    runs = sorted((user / 'stopped').glob('*/vis_data/*.json'))
    assert [len(log.read_text().splitlines()) for log in runs if log.name != 'scalars.json'] == [40, 40]
    common, differs = compare_batches(logged_iterations(user / 'stopped'), logged_iterations(user / 'work'))
    assert common == list(range(1, 81)) and differs is None
