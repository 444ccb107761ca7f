"""Models named by a hub id (a tokenizer, an autoencoder) on machines that may be offline.

Compute nodes often have no route to the hub. Left to itself, ``from_pretrained`` then retries for a
minute and ends in a traceback about a file it could not fetch. :func:`resolve` decides in a few
seconds instead: a local folder is used as it is; a hub id already in the local hub cache is loaded
from there (``local_files_only``) when the hub is out of reach or ``HF_HUB_OFFLINE`` is set; one
that is not fails at once, naming the setting, the option that overrides it and how to get a copy.
"""
from __future__ import annotations

import functools
import os
import re

PROBE_SECONDS = 3.0
_TRUE = ('1', 'on', 'yes', 'true')
HUB_ID = re.compile(r'^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$')  # 'name' or 'org/name'


class HubUnreachable(RuntimeError):
    """A model is needed from the hub, which cannot be reached; the message says what to do."""


def offline() -> bool:
    return any(os.environ.get(name, '').lower() in _TRUE for name in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'))


def endpoint() -> str:
    return os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')


def looks_like_path(name: str) -> bool:
    """Written as a path (``./tok``, ``/models/x``, ``a/b/c``, ``~/x``), never a hub id."""
    return name.startswith(('/', '.', '~')) or not HUB_ID.match(name)


@functools.lru_cache(maxsize=None)
def reachable(url: str | None = None, timeout: float = PROBE_SECONDS) -> bool:
    """Whether the hub's endpoint answers an HTTP request within ``timeout`` seconds (any status):
    one request, asked once per process, through the proxies the environment names."""
    from http.client import HTTPException
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen
    try:
        with urlopen(Request(url or endpoint(), method='HEAD'), timeout=timeout):
            return True
    except HTTPError:  # it answered
        return True
    except (OSError, ValueError, HTTPException):  # refused, reset, closed without an answer, timed out, no host
        return False


def cached(name: str, probe_file: str) -> bool:
    """Whether the hub repository ``name`` is in the local hub cache (its ``probe_file`` is)."""
    from huggingface_hub import try_to_load_from_cache
    try:
        return isinstance(try_to_load_from_cache(name, probe_file), str)
    except ValueError:  # not a valid repository id
        return False


def unavailable(name: str, what: str, option: str, probe_file: str = 'config.json') -> str | None:
    """What stands in the way of loading ``what`` from ``name`` here, said for a person, or None: a
    local folder, the hub answers, or the hub is out of reach and ``name`` is in the hub cache."""
    if os.path.exists(os.path.expanduser(name)):
        return None
    if looks_like_path(name):
        return (f'{what} is {name!r}: no such folder ({os.path.abspath(os.path.expanduser(name))}). '
                f'Give the folder that holds it with {option} PATH.')
    if (not offline() and reachable()) or cached(name, probe_file):
        return None
    why = ('HF_HUB_OFFLINE is set' if offline() else
           f'the hub ({endpoint()}, HF_ENDPOINT) cannot be reached from this machine')
    return (f'{what} is {name!r}: no such folder here, and a hub model that is not in the local hub cache, and '
            f'{why}. Give a local copy with {option} /path/to/it (download it where the hub is reachable: '
            f'.venv/bin/huggingface-cli download {name} --local-dir /path/to/it), or fill the hub cache (HF_HOME) '
            'there first.')


def resolve(name: str, what: str, option: str, probe_file: str = 'config.json') -> dict:
    """What ``from_pretrained(name)`` needs to load ``what`` (e.g. 'the tokenizer of <config>') without
    a minute of retries: ``{}`` (a local folder, or the hub is there), ``{'local_files_only': True}``
    (in the hub cache, hub out of reach), or ``HubUnreachable`` naming ``option``, the override."""
    problem = unavailable(name, what, option, probe_file)
    if problem is not None:
        raise HubUnreachable(problem)
    if os.path.exists(os.path.expanduser(name)) or (not offline() and reachable()):
        return {}
    return {'local_files_only': True}  # in the hub cache, which is what there is
