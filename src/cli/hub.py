"""Models named by a hub id (a tokenizer, an autoencoder) on machines that may be offline.

Compute nodes often have no route to the hub. Left to itself, ``from_pretrained`` then retries for a
minute and ends in a traceback about a file it could not fetch. :func:`resolve` decides in a few
seconds instead: a local folder is used as it is; a hub id already in the local hub cache is loaded
from there (``local_files_only``) when the hub is out of reach or ``HF_HUB_OFFLINE`` is set; one
that is not fails at once, naming the setting, the option that overrides it and how to get a copy.
"""
from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

PROBE_SECONDS = 3.0
_TRUE = ('1', 'on', 'yes', 'true')


class HubUnreachable(RuntimeError):
    """A model is needed from the hub, which cannot be reached; the message says what to do."""


def offline() -> bool:
    return any(os.environ.get(name, '').lower() in _TRUE for name in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'))


def endpoint() -> str:
    return os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')


def reachable(url: str | None = None, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the hub's endpoint opens within ``timeout`` seconds."""
    parts = urlsplit(url or endpoint())
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def cached(name: str, probe_file: str) -> bool:
    """Whether the hub repository ``name`` is in the local hub cache (its ``probe_file`` is)."""
    from huggingface_hub import try_to_load_from_cache
    try:
        return isinstance(try_to_load_from_cache(name, probe_file), str)
    except ValueError:  # not a valid repository id
        return False


def resolve(name: str, what: str, option: str, probe_file: str = 'config.json') -> dict:
    """What ``from_pretrained(name)`` needs to load ``what`` (e.g. 'the tokenizer of <config>') without
    a minute of retries: ``{}`` (a local folder, or the hub is there), ``{'local_files_only': True}``
    (in the hub cache, hub out of reach), or ``HubUnreachable`` naming ``option``, the override."""
    if os.path.exists(name):
        return {}
    if offline() or not reachable():
        if cached(name, probe_file):
            return {'local_files_only': True}
        why = ('HF_HUB_OFFLINE is set' if offline() else
               f'the hub ({endpoint()}, HF_ENDPOINT) cannot be reached from this machine')
        raise HubUnreachable(
            f'{what} is {name!r}, a hub model that is not in the local hub cache, and {why}. Give a local copy '
            f'with {option} /path/to/it (download it where the hub is reachable: huggingface-cli download '
            f'{name} --local-dir /path/to/it), or fill the hub cache (HF_HOME) there first.')
    return {}
