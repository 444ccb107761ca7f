"""The layers of src/: which top-level package may import which. A package imports only packages of
lower layers (every import counts, a function's own too), so the packages form no import circle.

    datasets                                  the data code; imports no other package of src/
    engine, latents, synthetic, examples      training-loop positions, latent caches, miniatures
    cli, report                               the tools' options and logs; the report and its preview
    prepare                                   preparing downloads (uses the tools' logs, latent shards)

Inside ``src/datasets`` the folders are layers too: ``storage`` (where bytes come from) < ``index``
(what is known before a picture is read) < ``sample`` (a record made a sample) < the dataset
classes, collate functions and samplers (the upstream module paths). ``errors``, ``extras`` and
``progress`` sit under all of them.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / 'src'
LAYERS = [{'datasets'}, {'engine', 'latents', 'synthetic', 'examples'}, {'cli', 'report'}, {'prepare'}]
LAYER_OF = {package: n for n, packages in enumerate(LAYERS) for package in packages}


def package_imports() -> dict[tuple[str, str], set[str]]:
    """(importing package, imported package) -> the files, for every import between two packages."""
    edges = defaultdict(set)
    for path in SRC.rglob('*.py'):
        parts = path.relative_to(SRC).parts
        if len(parts) < 2:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f'{node.module}.{alias.name}' for alias in node.names if node.module == 'src']
            else:
                continue
            for name in names:
                if name.startswith('src.') and name.split('.')[1] != parts[0]:
                    edges[(parts[0], name.split('.')[1])].add(str(path.relative_to(SRC.parent)))
    return edges


def test_every_package_of_src_has_a_layer():
    packages = {path.parent.name for path in SRC.glob('*/__init__.py')}
    assert packages == set(LAYER_OF), 'give the new package a layer in LAYERS (and the docstring)'


def test_no_package_imports_its_own_layer_or_a_higher_one():
    wrong = {f'{a} -> {b}': sorted(files) for (a, b), files in package_imports().items()
             if LAYER_OF.get(b, len(LAYERS)) >= LAYER_OF.get(a, -1)}
    assert not wrong, wrong


def test_no_import_circle_between_packages():
    graph = defaultdict(set)
    for a, b in package_imports():
        graph[a].add(b)
    state = {}

    def visit(node, trail):
        if state.get(node) == 'open':
            raise AssertionError(f'import circle: {" -> ".join(trail + [node])}')
        if state.get(node) is None:
            state[node] = 'open'
            for nxt in sorted(graph[node]):
                visit(nxt, trail + [node])
            state[node] = 'done'
    for node in sorted(graph):
        visit(node, [])


DATASETS = SRC / 'datasets'
INNER = {'errors': 0, 'extras': 0, 'progress': 0, 'storage': 1, 'index': 2, 'sample': 3}  # anything else: 4


def _inner_layer(module: str) -> int:
    """The layer of ``src.datasets.<module...>`` (a dotted name below src.datasets)."""
    return INNER.get(module.split('.')[0], 4)


def test_the_folders_of_datasets_import_only_lower_folders():
    wrong = []
    for folder in ('storage', 'index', 'sample'):
        for path in (DATASETS / folder).rglob('*.py'):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module] + [f'{node.module}.{alias.name}' for alias in node.names]
                else:
                    continue
                for name in names:
                    if name.startswith('src.datasets.') and _inner_layer(name[len('src.datasets.'):]) > INNER[folder]:
                        wrong.append(f'{path.relative_to(SRC.parent)} imports {name}')
    assert not wrong, wrong


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
CAPTION_DATASETS, MAX_CAPTION_DATASETS_LINES = SRC / 'datasets/text2image/caption_datasets.py', 350


def test_no_module_over_400_lines_and_no_function_over_60():
    """A module holds one job and a function one step: split what grows past either bound."""
    too_long = []
    for path in sorted(SRC.rglob('*.py')):
        name = str(path.relative_to(SRC.parent))
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f'{name}: {len(text.splitlines())} lines')
        for node in ast.walk(ast.parse(text, name)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f'{name}:{node.lineno} {node.name}: {length} lines')
    assert not too_long, too_long


def test_caption_dataset_stays_a_thin_composition():
    """CaptionDataset composes collaborators with one job each (src/datasets/sample/): new
    capabilities go into one of them, or a new one, not into the class."""
    lines = len(CAPTION_DATASETS.read_text().splitlines())
    assert lines < MAX_CAPTION_DATASETS_LINES, f'caption_datasets.py has {lines} lines'
