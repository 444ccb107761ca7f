"""``tools/install_into.py``: this project's data layer in an upstream checkout (OpenUni, Harmon, VGT).

Their repositories have a ``src`` package of their own (models, runners, optimisers) that shadows
this one, so their configs (``from src.datasets... import CaptionDataset``) can only reach this
project's code through their own tree. ``install`` puts ``src/datasets`` and ``src/engine`` there,
as links to this checkout (or copies), moving what they replace aside; everything else of theirs is
left as it is. ``undo`` puts back exactly what was moved. What was done is recorded in
``<upstream>/.t2i-data/installed.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

PACKAGES = ('datasets', 'engine')  # what their configs import: the data layer and ResumableTrainLoop
STATE = Path('.t2i-data')
RECORD = STATE / 'installed.json'
OURS = Path(__file__).resolve().parents[1]  # this checkout's src/


class InstallError(RuntimeError):
    """The upstream tree is not one to install into (or to undo); the message says why."""


def install(upstream: str | os.PathLike, copy: bool = False) -> list[str]:
    """Put this project's ``src/datasets`` and ``src/engine`` into ``upstream``; return what was done."""
    upstream = Path(upstream).resolve()
    if not (upstream / 'src').is_dir() or not (upstream / 'configs').is_dir():
        raise InstallError(f'{upstream} has no src/ and configs/: not an OpenUni, Harmon or VGT checkout')
    if (upstream / RECORD).exists():
        raise InstallError(f'{upstream} already has this project installed ({upstream / RECORD}): undo it first')
    if upstream == OURS.parent:
        raise InstallError('that is this project itself')
    backup = STATE / 'replaced' / time.strftime('%Y%m%d-%H%M%S')
    done, record = [], {'source': str(OURS), 'copy': copy, 'packages': {}}
    for name in PACKAGES:
        target = upstream / 'src' / name
        moved = None
        if target.exists() or target.is_symlink():
            moved = backup / 'src' / name
            (upstream / moved).parent.mkdir(parents=True, exist_ok=True)
            os.replace(target, upstream / moved)
            done.append(f'moved their src/{name} to {moved}')
        if copy:
            shutil.copytree(OURS / name, target, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            target.symlink_to(OURS / name, target_is_directory=True)
        done.append(f'src/{name} -> {OURS / name}' + (' (a copy)' if copy else ''))
        record['packages'][name] = {'replaced': str(moved) if moved else None}
    (upstream / RECORD).write_text(json.dumps(record, indent=1))
    return done


def undo(upstream: str | os.PathLike) -> list[str]:
    """Remove what ``install`` put into ``upstream`` and put back what it moved aside."""
    upstream = Path(upstream).resolve()
    try:
        record = json.loads((upstream / RECORD).read_text())
    except (OSError, ValueError):
        raise InstallError(f'{upstream} has no record of an install ({upstream / RECORD})') from None
    done = []
    for name, entry in record['packages'].items():
        target = upstream / 'src' / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if entry['replaced']:
            os.replace(upstream / entry['replaced'], target)
            done.append(f'src/{name}: theirs put back')
        else:
            done.append(f'src/{name}: removed')
    shutil.rmtree(upstream / STATE)
    return done


def requirements() -> list[str]:
    """The core dependencies their environment needs (from this project's pyproject.toml)."""
    import tomllib
    return tomllib.loads((OURS.parent / 'pyproject.toml').read_text())['project']['dependencies']
