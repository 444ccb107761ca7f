"""The models a tool needs, checked before it imports torch, transformers or mmengine: every one that
cannot be had is named in one message, with the local stand-ins ``make demo`` leaves when there are.

A name is a local folder when it exists; one written as a path (``./tok``, ``/models/x``, ``a/b/c``,
``~/x``) that does not exist is a folder that is not there, never a hub id. Others are hub ids,
checked against the hub cache when the hub is out of reach (``src.cli.hub``). The tokenizers a config
names are read from its source (and the configs it reads with ``read_base()``) without running it.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

from src.cli import hub

REPO = Path(__file__).resolve().parents[2]
NAME_KEY = 'pretrained_model_name_or_path'
# what `make demo` (tools/demo.py) writes for each option: a tokenizer and an autoencoder with random weights
STAND_INS = {'--tokenizer': 'tokenizer', '--vae': 'tiny-vae'}


@dataclass(frozen=True)
class Model:
    name: str  # a hub id or a local folder
    what: str  # 'the tokenizer of configs/x.py', 'the autoencoder'
    option: str  # the option that gives another: '--tokenizer'
    probe_file: str = 'config.json'  # a file every copy of it has, looked up in the hub cache


def stand_ins(option: str, cwd: str | None = None) -> list[str]:
    """The local copies ``make demo`` left for ``option``, as paths to type from ``cwd``."""
    name = STAND_INS.get(option)
    if name is None:
        return []
    cwd = Path(cwd or os.getcwd()).resolve()
    found = []
    for folder in (cwd / name, cwd / 'demo_output' / name, REPO / 'demo_output' / name):
        if folder.is_dir() and str(folder) not in found:
            found.append(str(folder))
    return [os.path.relpath(path, cwd) if Path(path).is_relative_to(cwd) else path for path in found]


def problem(model: Model, cwd: str | None = None) -> str | None:
    """What stands in the way of loading ``model`` here (``hub.unavailable``), with the stand-ins
    ``make demo`` left for its option; None when nothing does."""
    found = hub.unavailable(model.name, model.what, model.option, model.probe_file)
    helps = stand_ins(model.option, cwd)
    if found is None or not helps:
        return found
    return f'{found} A stand-in with random weights (for trying the tools, from make demo): {model.option} ' \
           f'{" or ".join(helps)}.'


def check(models, cwd: str | None = None) -> None:
    """``HubUnreachable`` naming every model of ``models`` that cannot be had, each on its own line."""
    problems = [found for found in (problem(model, cwd) for model in models) if found]
    if problems:
        head = '' if len(problems) == 1 else f'{len(problems)} models cannot be had:\n  '
        raise hub.HubUnreachable(head + '\n  '.join(problems))


def _source(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except Exception:  # an odd node: not a tokenizer we can name
        return ''


def _base_files(tree: ast.Module, path: Path) -> list[Path]:
    """The configs ``path`` reads under ``with read_base():`` (relative imports, and ``configs.*``)."""
    files = []
    for block in tree.body:
        if not isinstance(block, ast.With):
            continue
        for node in block.body:
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            if node.level:
                base = path.parent.joinpath(*(['..'] * (node.level - 1)), *node.module.split('.'))
            elif node.module.split('.')[0] == 'configs':
                base = REPO.joinpath(*node.module.split('.'))
            else:
                continue
            files.append(base.with_suffix('.py'))
    return files


def config_tokenizers(path: str | os.PathLike) -> list[str]:
    """The hub ids or folders of the tokenizers ``path`` and its base configs name, in order, once each:
    a ``dict(type=<...tokenizer...>, pretrained_model_name_or_path='...')`` with a literal name."""
    names, seen, todo = [], set(), [Path(path).resolve()]
    while todo:
        file = todo.pop(0)
        if file in seen or not file.is_file():
            continue
        seen.add(file)
        try:
            tree = ast.parse(file.read_text(encoding='utf-8'))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue  # mmengine says what is wrong with it when it reads it
        todo.extend(_base_files(tree, file))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fields = {keyword.arg: keyword.value for keyword in node.keywords if keyword.arg}
            elif isinstance(node, ast.Dict):
                fields = {key.value: value for key, value in zip(node.keys, node.values)
                          if isinstance(key, ast.Constant) and isinstance(key.value, str)}
            else:
                continue
            name = fields.get(NAME_KEY)
            if isinstance(name, ast.Constant) and isinstance(name.value, str) \
                    and 'tokenizer' in _source(fields.get('type', ast.Constant(''))).lower() \
                    and name.value not in names:
                names.append(name.value)
    return names


def preflight(config: str, tokenizer: str | None, *others: Model, cfg_options: dict | None = None) -> None:
    """Before a tool's heavy imports: the config is there, and every model it needs (the config's
    tokenizers, or ``tokenizer`` in their place, or those its ``--cfg-options`` name, and ``others``)
    can be had; all named at once."""
    if not os.path.isfile(config):
        raise hub.HubUnreachable(f'the config {config!r}: no such file ({os.path.abspath(config)})')
    overridden = [value for key, value in (cfg_options or {}).items()
                  if key.endswith(f'tokenizer.{NAME_KEY}') and isinstance(value, str)]
    names = [tokenizer] if tokenizer is not None else overridden or config_tokenizers(config)
    models = [Model(name, f'the tokenizer of {config}', '--tokenizer', 'tokenizer_config.json') for name in names]
    check([*models, *others])
