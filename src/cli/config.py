"""A dataset or training config as the tools load it: ``Config.fromfile``, mmengine's
``--cfg-options``, ``--tokenizer PATH`` for every tokenizer of its datasets, and each hub model
checked up front (``src.cli.hub``)."""
from __future__ import annotations

from collections.abc import Iterator

from src.cli.data_paths import check_data, config_dicts
from src.cli.hub import resolve
from src.datasets.build import dataset_config

NAME_KEY = 'pretrained_model_name_or_path'


def add_config_options(parser) -> None:
    """The options of every tool that builds a config's datasets."""
    from src.cli.options import ConfigOptions
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions, default={},
                        help="override config keys, as mmengine's tools take them (key=value ...; a dict as "
                             "key=dict(a=1, b='x'))")
    parser.add_argument('--tokenizer', metavar='PATH',
                        help='a local tokenizer folder (or hub id) for every dataset of the config, in place of '
                             'the one it names: what a machine without the hub needs')


def dataset_roots(cfg) -> list:
    """The dataset configs of ``cfg``: ``dataset``, and ``train_dataloader.dataset``."""
    roots = [cfg[key] for key in ('dataset',) if key in cfg]
    if 'train_dataloader' in cfg and 'dataset' in cfg.train_dataloader:
        roots.append(cfg.train_dataloader.dataset)
    return roots


def tokenizer_configs(node) -> Iterator[dict]:
    """Every tokenizer config under ``node`` (dicts whose ``type`` loads a tokenizer), nested ones too."""
    return config_dicts(node, lambda found: NAME_KEY in found and 'tokenizer' in str(found.get('type', '')).lower())


def installed_path(package: str) -> str:
    """The folder of ``package``, as mmengine's ``get_installed_path`` finds it for a config's
    ``with read_base(): from configs.datasets.x import *``, through importlib: mmengine 0.10.6 asks
    ``pkg_resources`` first, which setuptools >= 81 no longer has."""
    import importlib.util
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f'read_base(): no config package {package!r} on the Python path', name=package)
    return list(spec.submodule_search_locations)[0]


def read_config(path: str, cfg_options: dict | None = None):
    """The config at ``path`` with ``cfg_options`` merged, nothing checked or resolved: a Python
    config is code and runs as such; a JSON or YAML one is data, and may only name registered or
    trusted types (``src.cli.data_config``): one that would run code is refused, in one line naming
    the file and the key."""
    import mmengine.config.config as mmengine_config

    from src.cli.data_config import UntrustedConfig, is_data_config, load_data_config
    if is_data_config(path):
        try:
            cfg = load_data_config(path)
        except UntrustedConfig as e:
            raise SystemExit(f'refused config: {e}') from None
    else:
        mmengine_config.get_installed_path = installed_path  # the project's configs from a user's (configs.*)
        cfg = mmengine_config.Config.fromfile(path)
    cfg.merge_from_dict(cfg_options or {})
    return cfg


def load_config(path: str, cfg_options: dict | None = None, tokenizer: str | None = None, *,
                builds: str = 'dataset'):
    """The config at ``path``, with ``cfg_options`` merged and every dataset tokenizer pointed at
    ``tokenizer`` when given. Each tokenizer of what the tool builds (``builds``: 'dataset', the
    config's ``dataset`` as upstream's scripts take it, else the training dataloader's; or
    'train_dataloader') that names a hub model is checked: loaded from the hub cache when the hub is
    out of reach, or a ``HubUnreachable`` that says what to pass; the local data it reads is there
    (``DataMissing`` naming every path that is not). The config is read by :func:`read_config`."""
    cfg = read_config(path, cfg_options)
    from src.datasets.mixes import batched_mixes  # torch: after the tools' checks made before it
    for root in dataset_roots(cfg):  # mixes read a batch at a time, whichever ConcatDataset the config names
        batched_mixes(root)
    if tokenizer is not None:
        for root in dataset_roots(cfg):
            for node in tokenizer_configs(root):
                node[NAME_KEY] = tokenizer
    built = dataset_config(cfg) if builds == 'dataset' else cfg.train_dataloader.dataset
    check_data(built, path)
    for node in tokenizer_configs(built):
        node.update(resolve(node[NAME_KEY], f'the tokenizer of {path}', '--tokenizer',
                            probe_file='tokenizer_config.json'))
    return cfg
