"""What the tools print: their own lines, not third-party warnings the project can prevent; and what
they do offline: a hub model that cannot be reached fails at once (one try, nothing heavy imported
first), naming the option to pass. No test here measures time: the behaviour that makes it fast is
what they check."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from noise import noise
from src.prepare.datasets import prepare_midjourney23m
from src.synthetic.autoencoder import build_autoencoder
from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / 'configs/datasets/midjourney23m.py')


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('output')
    MAKERS['midjourney23m'](workdir / DEFAULT_ROOTS['midjourney23m'], n=8)
    assert prepare_midjourney23m(str(workdir / DEFAULT_ROOTS['midjourney23m']), num_processes=1).exit_code() == 0
    return workdir


def run(tool: str, *args, cwd, **env) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, str(REPO / 'tools' / tool), *map(str, args)], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_the_tools_print_their_own_lines_only(prepared, tokenizer_path, tmp_path):
    vae = build_autoencoder(tmp_path / 'vae')
    runs = {
        'inspect_dataset.py': run('inspect_dataset.py', CONFIG, '--tokenizer', tokenizer_path, '--out', tmp_path / 'r',
                                  '--cfg-options', 'dataset.image_size=64', cwd=prepared),
        'cache_latents.py': run('cache_latents.py', CONFIG, '--tokenizer', tokenizer_path, '--vae', vae,
                                '--out', tmp_path / 'latents', '--cfg-options', 'dataset.image_size=64', cwd=prepared),
        'train.py': run('train.py', str(REPO / 'configs/examples/tiny_t2i.py'), '--tokenizer', tokenizer_path,
                        '--work-dir', tmp_path / 'work', '--cfg-options', 'train_cfg.max_iters=3', cwd=prepared),
        'prepare_midjourney23m.py': run('prepare_midjourney23m.py', '--num-processes', '2', cwd=prepared),
    }
    for tool, result in runs.items():
        assert result.returncode == 0, f'{tool}: {result.stderr[-3000:]}'
        assert noise(result.stdout + result.stderr) == [], tool


class Hub:
    """A stand-in hub on 127.0.0.1 that accepts connections, counts them and closes each unanswered:
    a hub out of reach whose every try can be counted."""

    def __init__(self):
        self.server = socket.create_server(('127.0.0.1', 0))
        self.attempts = 0
        self.url = f'http://127.0.0.1:{self.server.getsockname()[1]}'
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.attempts += 1
            connection.close()


@pytest.fixture
def hub():
    stand_in = Hub()
    yield stand_in
    stand_in.server.close()


# Records, when the tool exits, which of the heavy libraries it imported: a model out of reach is
# said before torch, transformers and mmengine are loaded (seconds instead of a minute).
IMPORTED = '''import atexit, os, sys
def _record():
    with open(os.environ['IMPORTED_LOG'], 'w') as f:
        f.write(' '.join(sorted({'torch', 'transformers', 'mmengine'} & set(sys.modules))))
atexit.register(_record)
'''


def heavy_imports_of(tool: str, args, cwd, tmp_path, **env) -> tuple[subprocess.CompletedProcess, str]:
    """Run ``tool``; its result and the heavy libraries it had imported when it exited."""
    (tmp_path / 'hook').mkdir(exist_ok=True)
    (tmp_path / 'hook' / 'sitecustomize.py').write_text(IMPORTED)
    log = tmp_path / 'imported.txt'
    environment = dict(os.environ, PYTHONPATH=f'{tmp_path / "hook"}:{REPO}', IMPORTED_LOG=str(log), **env)
    result = subprocess.run([sys.executable, str(REPO / 'tools' / tool), *map(str, args)], cwd=cwd,
                            env=environment, capture_output=True, text=True, timeout=300)
    return result, log.read_text()


@pytest.mark.parametrize('tool, offline', [('inspect_dataset.py', 'HF_HUB_OFFLINE=1'),
                                           ('cache_latents.py', 'hub unreachable'), ('train.py', 'HF_HUB_OFFLINE=1')])
def test_a_hub_model_out_of_reach_fails_at_once_naming_the_option(prepared, tmp_path, hub, tool, offline):
    """No retry (one try of the hub, none when told it is offline), and nothing heavy imported first."""
    env = dict(HF_HOME=str(tmp_path / 'empty-cache'), HF_ENDPOINT=hub.url)
    if offline == 'HF_HUB_OFFLINE=1':
        env['HF_HUB_OFFLINE'] = '1'
    config = str(REPO / 'configs/examples/tiny_t2i.py') if tool == 'train.py' else CONFIG
    extra = ['--out', tmp_path / 'r'] if tool == 'inspect_dataset.py' else []
    result, imported = heavy_imports_of(tool, [config, *extra], prepared, tmp_path, **env)
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert "'OpenGVLab/InternVL3-2B'" in result.stderr and '--tokenizer /path/to/it' in result.stderr
    assert ('HF_HUB_OFFLINE' if offline == 'HF_HUB_OFFLINE=1' else 'HF_ENDPOINT') in result.stderr
    assert hub.attempts == (0 if offline == 'HF_HUB_OFFLINE=1' else 1)
    assert imported == ''


def test_the_default_autoencoder_out_of_reach_names_vae(prepared, tmp_path, tokenizer_path, hub):
    result, imported = heavy_imports_of('cache_latents.py', [CONFIG, '--tokenizer', tokenizer_path], prepared,
                                        tmp_path, HF_HOME=str(tmp_path / 'empty-cache'), HF_ENDPOINT=hub.url)
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert "'mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers'" in result.stderr and '--vae /path/to/it' in result.stderr
    assert hub.attempts == 1 and imported == ''


HIDE = '''import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {hidden!r}:
            raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)
sys.meta_path.insert(0, Hide())
'''


@pytest.mark.parametrize('hidden, tool, args, extra', [
    ('boto3', 'upload.py', ['data', 's3://bucket/x'], 's3'),
    ('diffusers', 'cache_latents.py', [CONFIG, '--vae', 'vae'], 'latents'),
    ('matplotlib', 'inspect_dataset.py', [CONFIG, '--out', 'report'], 'report'),
    ('img2dataset', 'prepare_laion6m.py', ['--root', 'urls'], 'download'),
])
def test_a_missing_extra_is_named_in_one_line(prepared, tokenizer_path, tmp_path, hidden, tool, args, extra):
    """Without an optional stack, its feature says which extra installs it: one line, no traceback."""
    (tmp_path / 'hook').mkdir()
    (tmp_path / 'hook' / 'sitecustomize.py').write_text(HIDE.format(hidden=[hidden]))
    (tmp_path / 'vae').mkdir()
    (tmp_path / 'vae' / 'config.json').write_text('{"_class_name": "AutoencoderDC"}')
    (tmp_path / 'urls' / 'parquets').mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({'url': ['http://127.0.0.1:9/a.jpg'], 're_caption': ['a']}),
                   tmp_path / 'urls' / 'parquets' / 'p.parquet')
    env = dict(os.environ, PYTHONPATH=f'{tmp_path / "hook"}:{REPO}', AWS_ENDPOINT_URL='http://127.0.0.1:9',
               AWS_ACCESS_KEY_ID='k', AWS_SECRET_ACCESS_KEY='s')
    tokenizer = ['--tokenizer', tokenizer_path] if tool in ('cache_latents.py', 'inspect_dataset.py') else []
    os.symlink(prepared / 'data', tmp_path / 'data')
    result = subprocess.run([sys.executable, str(REPO / 'tools' / tool), *args, *tokenizer], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if f"pip install 't2i-data[{extra}]'" in line]
    assert len(lines) == 1 and hidden in lines[0], result.stderr[-3000:]
