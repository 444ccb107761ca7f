"""The documentation a clone carries: every page linked from the README, every link and every path
it names there, nothing pointing outside the project, and commands written as they run."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]


def test_every_page_is_linked_from_the_readme_and_every_link_resolves():
    readme = (REPO / 'README.md').read_text()
    for page in PAGES[1:]:
        assert f'docs/{page.name}' in readme, page.name
    for page in PAGES:
        for target in re.findall(r'\]\(([^)#\s]+)', page.read_text()):
            if not target.startswith('http'):
                assert (page.parent / target).exists(), f'{page.name}: {target}'


def test_the_docs_name_only_what_the_project_has():
    for page in PAGES:
        text = page.read_text()
        assert '../shared' not in text and 'seeds/' not in text, page.name
        for path in set(re.findall(r'\b((?:tools|configs|bench|src)/[\w/.-]+\.py)\b', text)):
            assert (REPO / path).exists(), f'{page.name}: {path}'


def test_commands_say_which_python():
    """``python tools/...`` works only inside the project's environment: the docs say ``.venv/bin/python``
    (or ``torchrun``, which runs the environment it belongs to)."""
    for page in PAGES:
        for line in page.read_text().splitlines():
            assert not re.search(r'(^|\s)python3? tools/', line), f'{page.name}: {line.strip()}'


def test_programs_of_the_environment_are_named_by_their_path():
    """``torchrun`` and ``huggingface-cli`` are the environment's, as ``python`` is: written
    ``.venv/bin/torchrun`` (or ``$T2I/.venv/bin/...``) wherever a command starts with them."""
    for page in PAGES:
        for line in page.read_text().splitlines():
            assert not re.search(r'(^|`)\s*(torchrun|huggingface-cli) ', line), f'{page.name}: {line.strip()}'
