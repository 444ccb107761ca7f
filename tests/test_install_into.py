"""tools/install_into.py on a tree shaped like OpenUni's (its own src/ of models and data code,
namespace packages, its configs): the configs then build unchanged with this project's data layer,
their models are left alone, and --undo puts back what was there."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from src.prepare.datasets import prepare_blip3o60k
from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_CONFIGS = Path(__file__).resolve().parent / 'upstream_configs' / 'openuni'

BUILD = '''import sys
from mmengine.config import Config
from mmengine.runner import Runner
import src.datasets.text2image.caption_datasets as ours
cfg = Config.fromfile('configs/datasets/internvl3_2b_512/blip3o60k.py')
cfg.train_dataloader.dataset.tokenizer.pretrained_model_name_or_path = sys.argv[1]
cfg.train_dataloader.update(batch_size=2, num_workers=0)
cfg.train_dataloader.dataset.image_size = 64
batch = next(iter(Runner.build_dataloader(cfg.train_dataloader, seed=0)))
print('from', ours.__file__)
print('batch', list(batch['data']['pixel_values'].shape))
'''


def install_into(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / 'tools' / 'install_into.py'), *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_an_openuni_checkout_builds_its_configs_with_this_data_layer_and_undo_restores_it(tmp_path, tokenizer_path):
    upstream = tmp_path / 'OpenUni'
    (upstream / 'src' / 'models' / 'openuni').mkdir(parents=True)  # namespace packages, as upstream has
    model = upstream / 'src' / 'models' / 'openuni' / 'internvl3_sana_hf.py'
    model.write_text('class OpenUniInternVL3SANAHF:  # theirs\n    pass\n')
    theirs = upstream / 'src' / 'datasets' / 'text2image' / 'caption_datasets.py'
    theirs.parent.mkdir(parents=True)
    theirs.write_text('raise ImportError("upstream\'s own data code")\n')
    shutil.copytree(UPSTREAM_CONFIGS, upstream / 'configs' / 'datasets')
    MAKERS['blip3o60k'](upstream / DEFAULT_ROOTS['blip3o60k'], n=4, faults=False)
    assert prepare_blip3o60k(str(upstream / DEFAULT_ROOTS['blip3o60k']), num_processes=1).exit_code() == 0

    done = install_into(upstream)
    assert done.returncode == 0, done.stderr
    assert 'moved their src/datasets to .t2i-data/replaced/' in done.stdout and 'pip install' in done.stdout
    # Their Python: their tree first, this project only through the links.
    env = dict(os.environ, PYTHONPATH=str(upstream))
    built = subprocess.run([sys.executable, '-c', BUILD, tokenizer_path], cwd=upstream, env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    assert 'batch [2, 3, 64, 64]' in built.stdout and str(upstream / 'src' / 'datasets') in built.stdout
    assert model.read_text().startswith('class OpenUniInternVL3SANAHF')  # left alone
    assert install_into(upstream).returncode == 2  # not twice

    undone = install_into(upstream, '--undo')
    assert undone.returncode == 0, undone.stderr
    assert theirs.read_text().startswith('raise ImportError') and not (upstream / 'src' / 'engine').exists()
    assert not (upstream / '.t2i-data').exists() and model.exists()
