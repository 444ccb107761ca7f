"""The settings of object storage: petrel-client's ``ceph_config`` (its clusters, keys and endpoints)
or the environment's AWS_* variables, and the folder URLs ``[cluster:]s3://bucket/prefix``. Secrets
are never part of a message: only the cluster, endpoint and bucket are."""
from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field

from src.datasets.errors import SampleError
from src.datasets.storage.files import read_text_file
from src.datasets.storage.redact import redact

_FOLDER = re.compile(r'^(?:(?P<cluster>[^:/]+):)?s3://(?P<bucket>[^/]+)/?(?P<prefix>.*)$')


def is_object_url(path) -> bool:
    return isinstance(path, str) and _FOLDER.match(path) is not None


class StorageConfigError(ValueError):
    """A ceph_config or a folder that cannot work; the message names the setting, never a secret."""

    def __init__(self, message: str):
        super().__init__(redact(message))  # an endpoint written as http://user:password@host among them


@dataclass(frozen=True)
class Cluster:
    name: str
    endpoint: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)


def read_petrel_config(path: str) -> tuple[dict[str, Cluster], str | None]:
    """The clusters of a petrel-client INI file and its default cluster. Keys a section lacks come
    from the standard AWS environment variables."""
    # Raw: with interpolation, a '%' in a secret key is an error whose message quotes the secret.
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(read_text_file(path, max_bytes=1 << 20), source=path)
    except SampleError as e:
        raise StorageConfigError(f'ceph_config {path}: {e.reason}: cannot be read as a config file') from None
    except (UnicodeDecodeError, configparser.Error) as e:
        # Only the kind of error and its line: the messages of configparser quote the line, a secret maybe.
        line = getattr(e, 'lineno', None) or getattr(e, 'errors', [[None]])[0][0]
        where = f' at line {line}' if line else ''
        raise StorageConfigError(f'ceph_config {path}: not a readable INI file ({type(e).__name__}{where})') from None
    default = parser.defaults().get('default_cluster')
    clusters = {}
    for name in parser.sections():
        section = parser[name]
        endpoint = section.get('host_base') or os.environ.get('AWS_ENDPOINT_URL')
        access = section.get('access_key') or os.environ.get('AWS_ACCESS_KEY_ID')
        secret = section.get('secret_key') or os.environ.get('AWS_SECRET_ACCESS_KEY')
        missing = [key for key, value in (('host_base', endpoint), ('access_key', access), ('secret_key', secret))
                   if not value]
        if missing:
            raise StorageConfigError(f'ceph_config {path}: section [{name}] has no {", ".join(missing)} '
                                     '(nor the AWS environment variable for it)')
        if not re.match(r'^https?://', endpoint):
            endpoint = f'http://{endpoint}'  # petrel's host_base may omit the scheme
        clusters[name] = Cluster(name, endpoint, access, secret)
    return clusters, default


def _environment_cluster() -> tuple[dict[str, Cluster], str]:
    values = {key: os.environ.get(key) for key in ('AWS_ENDPOINT_URL', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY')}
    missing = [key for key, value in values.items() if not value]
    if missing:
        raise StorageConfigError(f'no ceph_config, and the environment lacks {", ".join(missing)}')
    return {'env': Cluster('env', *values.values())}, 'env'

