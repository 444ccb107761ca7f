"""A data-only config (JSON, YAML) from others runs no code (README reliability table, "data
configs"): only registered or trusted types are resolved, and mmengine's ways of running code from a
data file (python tags, a Python ``_base_``, ``custom_imports``) are refused, naming file and key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.cli.config import load_config
from src.cli.data_config import UntrustedConfig, load_data_config, refused_type

REPO = Path(__file__).resolve().parents[1]


def dataset(type_, **more):
    return {'dataset': {'type': type_, 'data_path': 'data.json', **more}}


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize('type_', ['os.system', 'subprocess.run', 'builtins.eval', 'posix.system',
                                   'src.synthetic.downloads.make_all', 'mmengine.fileio.dump', 'shutil.rmtree',
                                   'antigravity.fly', 'system', 7, ['os.system']])
def test_a_json_config_naming_any_other_callable_is_refused_naming_file_and_key(tmp_path, type_):
    marker = tmp_path / 'ran'
    path = write(tmp_path, 'evil.json', {'train_dataloader': {'dataset': {'type': type_, 'command': f'touch {marker}'}}})
    with pytest.raises(UntrustedConfig) as refused:
        load_data_config(path)
    assert str(refused.value).startswith(f'{path}: train_dataloader.dataset.type: ')
    with pytest.raises(SystemExit) as refused:
        load_config(path)
    assert str(refused.value).startswith(f'refused config: {path}: ') and not marker.exists()


def test_registered_and_trusted_types_load_in_every_spelling(tmp_path):
    from mmengine.config import Config
    for type_ in ('InfiniteSampler', 'AdamW', 'mmengine.dataset.InfiniteSampler',
                  'src.datasets.text2image.caption_datasets.CaptionDataset',
                  'mmengine.dataset.sampler.InfiniteSampler',  # how mmengine dumps the class
                  'transformers.AutoTokenizer.from_pretrained',
                  'transformers.models.auto.tokenization_auto.AutoTokenizer.from_pretrained'):
        assert refused_type(type_) is None, type_
    assert refused_type('os.system', allowed_types=('os.system',)) is None  # the caller's own allow-list
    cfg = load_data_config(write(tmp_path, 'ok.json', {'train_dataloader': {
        'sampler': {'type': 'InfiniteSampler'}, **dataset('src.datasets.text2image.caption_datasets.CaptionDataset')}}))
    assert isinstance(cfg, Config) and cfg.train_dataloader.sampler.type == 'InfiniteSampler'


@pytest.mark.parametrize('name', sorted(path.stem for path in (REPO / 'configs' / 'datasets').glob('*.py'))
                         + ['../examples/tiny_t2i'])
def test_every_config_of_the_project_dumped_as_json_loads_as_a_data_config(tmp_path, name):
    from mmengine.config import Config
    dumped = tmp_path / f'{Path(name).name}.json'
    Config.fromfile(str(REPO / 'configs' / 'datasets' / f'{name}.py')).dump(str(dumped))
    text = dumped.read_text()
    if '"trust_remote_code": true' in text:  # upstream's tokenizers ask for it; refused in data
        with pytest.raises(UntrustedConfig, match='trust_remote_code'):
            load_data_config(str(dumped))
        dumped.write_text(text.replace('"trust_remote_code": true', '"trust_remote_code": false'))
    assert load_data_config(str(dumped)).filename == str(dumped)


def test_mmengine_routes_from_a_data_file_to_code_are_refused(tmp_path):
    marker = tmp_path / 'ran'
    (tmp_path / 'base.py').write_text(f'open({str(marker)!r}, "w")\n')
    cases = {
        'tag.yaml': f'dataset:\n  type: CaptionDataset\n  x: !!python/object/apply:os.system ["touch {marker}"]\n',
        'base.json': {'_base_': './base.py'},
        'base.yaml': '_base_: ./base.py\n',
        'imports.json': {'custom_imports': {'imports': ['antigravity']}},
        'scope.json': {'default_scope': 'evil'},
        'remote.json': {'dataset': {'type': 'CaptionDataset', 'tokenizer': {
            'type': 'transformers.AutoTokenizer.from_pretrained', 'trust_remote_code': True}}},
        'list.yaml': '- 1\n- 2\n',
        'laughs.yaml': 'a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n'
                       'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n',
        'deep.json': '[' * 100_000 + ']' * 100_000,
        'deeper.yaml': 'a: ' + '{b: ' * 500 + '1' + '}' * 500 + '\n',
    }
    for name, data in cases.items():
        with pytest.raises(UntrustedConfig) as refused:
            load_data_config(write(tmp_path, name, data))
        assert str(refused.value).startswith(str(tmp_path / name)), name
        assert str(marker) not in str(refused.value)  # never the file's text
    assert not marker.exists()


def test_a_tool_given_a_hostile_data_config_says_so_in_one_line(tmp_path):
    marker = tmp_path / 'ran'
    path = write(tmp_path, 'evil.json', {'dataset': {'type': 'os.system', 'command': f'touch {marker}'}})
    result = subprocess.run([sys.executable, str(REPO / 'tools' / 'inspect_dataset.py'), path, '--out', str(tmp_path / 'r')],
                            env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert f"refused config: {path}: dataset.type: 'os.system' is not a type" in result.stderr
    assert not marker.exists()


def test_the_docs_say_python_configs_are_code_where_configs_are_introduced():
    readme = (REPO / 'README.md').read_text()
    assert 'a Python config (`configs/*.py`, upstream\'s) is code' in readme
