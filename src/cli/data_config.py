"""Data-only configs (JSON, YAML) from others, loaded so that nothing in them runs code.

A Python config is code: ``Config.fromfile`` runs it, and whoever wrote it runs what they like. A
JSON or YAML config looks like data, but mmengine would still run code from it: its YAML loader
builds ``!!python/object/apply`` tags, a ``_base_`` may name a Python file, ``custom_imports``
imports modules, and a ``type`` string naming any importable callable (``os.system``,
``subprocess.run``) is imported and called when the config is built. So a data config is parsed
here with the safe loaders, and :func:`refused_type` (the one rule every ``type`` goes through)
lets through only a type registered in an mmengine registry (``'InfiniteSampler'``, ``'AdamW'``)
or one of :data:`TRUSTED_TYPES`, the project's and its upstreams' classes the configs use, plus
what the caller allows (``allowed_types``). ``trust_remote_code=True`` (code from the hub) is
refused too.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import import_module

DATA_SUFFIXES = ('.json', '.yaml', '.yml')
MAX_CONFIG_BYTES = 16 << 20
MAX_DEPTH = 64

# The callables a data config may name by their import path: what the project's configs build.
TRUSTED_TYPES = (
    'src.datasets.text2image.caption_datasets.CaptionDataset',
    'src.datasets.understanding.caption_datasets.CaptionDataset',
    'src.datasets.text2image.blip3_o.BLIP3oDataset',
    'src.datasets.image2image.edit_datasets.ReconstructDataset',
    'src.datasets.collate_functions.collate_func_gen',
    'src.datasets.collate_functions.collate_func_gen_latents',
    'src.datasets.collate_functions.collate_func_gen_tokens',
    'src.datasets.collate_functions.collate_func_img2img',
    'src.datasets.collate_functions.collate_func_und',
    'src.datasets.collate_functions.CollateConcat',
    'src.datasets.samplers.multi_source_sampler.FixedBatchMultiSourceSampler',
    'src.engine.ResumableTrainLoop',
    'src.examples.tiny_t2i.TinyT2I',
    'mmengine.dataset.InfiniteSampler',
    'mmengine.dataset.DefaultSampler',
    'mmengine.hooks.CheckpointHook',
    'mmengine.hooks.LoggerHook',
    'xtuner.dataset.ConcatDataset',
    'xtuner.dataset.map_fns.template_map_fn_factory',
    'transformers.AutoTokenizer.from_pretrained',
)
# Keys mmengine acts on before any type is built: a Python base file, modules to import, a scope
# whose ``<scope>.registry`` module is imported.
REFUSED_KEYS = ('_base_', 'custom_imports')
# The modules whose import fills mmengine's registries (as building a Runner does), and the project's.
REGISTERING_MODULES = ('mmengine.dataset', 'mmengine.evaluator', 'mmengine.hooks', 'mmengine.model',
                       'mmengine.optim', 'mmengine.runner', 'mmengine.visualization', 'src.datasets', 'src.engine')
DEFAULT_SCOPES = (None, 'mmengine')
# Visualizer backends that only write local files; the others (wandb, tensorboard's, mlflow, clearml,
# dvclive, aim, neptune) talk to a server the config could choose, and send the user's keys to it.
LOCAL_VIS_BACKENDS = ('LocalVisBackend', 'mmengine.visualization.LocalVisBackend',
                      'mmengine.visualization.vis_backend.LocalVisBackend')
# Keys whose value mmengine fetches: an http(s) URL here reaches any address and writes into ~/.cache.
CHECKPOINT_KEYS = ('load_from', 'resume_from')
PROJECT_PACKAGE = 'src.'  # a registered class of the project may be named by its import path


class UntrustedConfig(ValueError):
    """A data config that would run code; the message names the file and the key."""


def is_data_config(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in DATA_SUFFIXES


def _registered(name: str | None, target=None) -> bool:
    """Whether ``name`` (no dots), or else the object ``target``, is a class or function registered
    in one of mmengine's registries or their children (xtuner's, a project's): each registry imports
    its own known locations."""
    import mmengine.registry as registries
    from mmengine.registry import Registry
    for module in REGISTERING_MODULES:
        import_module(module)
    pending = [value for value in vars(registries).values() if isinstance(value, Registry)]
    while pending:
        registry = pending.pop()
        registry.import_from_location()
        if name in registry._module_dict if target is None else any(
                value is target for value in registry._module_dict.values()):
            return True
        pending.extend(registry._children.values())
    return False


@lru_cache(maxsize=None)
def _registered_project_type(path: str) -> bool:
    """Whether ``path`` names one of the project's own classes or functions (``src.``) that is
    registered in an mmengine registry: the project's module is imported (its own code, not the
    config's) and the object looked up, never called."""
    if not path.startswith(PROJECT_PACKAGE):
        return False
    module, _, attribute = path.rpartition('.')
    try:
        target = getattr(import_module(module), attribute, None)
    except ImportError:
        return False
    return target is not None and _registered(None, target)


@lru_cache(maxsize=None)
def _trusted_names(extra: tuple) -> frozenset:
    """The trusted import paths, and each one's ``module.qualname`` (how mmengine dumps a type)."""
    names = set(TRUSTED_TYPES) | set(extra)
    for path in TRUSTED_TYPES + extra:
        module, _, attribute = path.rpartition('.')
        owner = None
        while module and owner is None:
            try:
                owner = import_module(module)
            except ImportError:  # 'pkg.Class.method': the module is shorter
                module, _, head = module.rpartition('.')
                attribute = f'{head}.{attribute}'
        target = owner
        for part in attribute.split('.') if owner is not None else ():
            target = getattr(target, part, None)
        qualname = getattr(target, '__qualname__', None)
        if qualname and getattr(target, '__module__', None):
            names.add(f'{target.__module__}.{qualname}')
    return frozenset(names)


def refused_type(name, allowed_types: tuple = ()) -> str | None:
    """The type rule: why a data config may not name ``name`` as a ``type``, or None when it may."""
    if not isinstance(name, str):
        return f'a type must be a name, not {type(name).__name__}'
    if name in TRUSTED_TYPES or name in allowed_types:
        return None
    if '.' not in name:
        return None if _registered(name) else f'{name!r} is registered in no mmengine registry'
    if name in _trusted_names(tuple(allowed_types)) or _registered_project_type(name):
        return None
    return (f'{name!r} is not a type a data config may name (a registered type, or one of the trusted '
            'ones); a Python config may name any, as it is code you chose to run')


def _refused_vis_backend(name, at: str, allowed_types) -> str | None:
    """Why the ``type`` ``name`` at ``at`` may not be a visualizer backend of a data config (one that
    talks to the network: it could send WANDB_API_KEY to an address the config chooses), or None."""
    if not isinstance(name, str) or name in allowed_types or name in LOCAL_VIS_BACKENDS:
        return None
    if '.vis_backends.' in f'.{at}.' or name.rpartition('.')[2].endswith('VisBackend'):
        return (f'{name!r}: only LocalVisBackend may be a visualizer backend in a data config (the others '
                'send data and keys to a server the config may choose); pass it in allowed_types, or '
                'write a Python config')
    return None


def check_data_config(data, path: str, allowed_types: tuple = ()) -> None:
    """``UntrustedConfig`` naming ``path`` and the key for the first thing in ``data`` that would run code."""
    if not isinstance(data, dict):
        raise UntrustedConfig(f'{path}: a config holds a mapping, not a {type(data).__name__}')
    for key in REFUSED_KEYS:
        if key in data:
            raise UntrustedConfig(f'{path}: {key!r} is refused in a data config (it imports or runs Python '
                                  'files); write a Python config instead, which is code you choose to run')
    if data.get('default_scope') not in DEFAULT_SCOPES:
        raise UntrustedConfig(f'{path}: default_scope {data["default_scope"]!r} is refused in a data config '
                              "(mmengine imports '<scope>.registry')")
    pending, seen = [('', data, 0)], set()
    while pending:
        where, node, depth = pending.pop()
        if isinstance(node, (dict, list)):
            if id(node) in seen:  # a YAML alias: a few lines can stand for billions of nodes
                raise UntrustedConfig(f'{path}: {where or "the top"} repeats another node (a YAML alias); '
                                      'refused in a data config')
            seen.add(id(node))
            if depth > MAX_DEPTH:
                raise UntrustedConfig(f'{path}: {where}: nested more than {MAX_DEPTH} deep')
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            at = f'{where}.{key}' if where else str(key)
            if key == 'type' and isinstance(node, dict):
                reason = refused_type(value, tuple(allowed_types)) or _refused_vis_backend(value, at, allowed_types)
                if reason:
                    raise UntrustedConfig(f'{path}: {at}: {reason}')
            elif key == '_scope_' and value not in DEFAULT_SCOPES:
                raise UntrustedConfig(f'{path}: {at}: _scope_ {value!r} is refused in a data config '
                                      "(mmengine imports '<scope>.registry' when it builds the node)")
            elif key in CHECKPOINT_KEYS and isinstance(value, str) and \
                    value.split('://', 1)[0].lower() in ('http', 'https'):
                raise UntrustedConfig(f'{path}: {at}: a URL ({key}) is refused in a data config (it is '
                                      'fetched from any address into ~/.cache); download the checkpoint '
                                      'yourself and name the local file')
            elif key == 'trust_remote_code' and value:
                raise UntrustedConfig(f'{path}: {at}: trust_remote_code runs code from the hub repository '
                                      'the config names; refused in a data config (set it to false: '
                                      "transformers has the tokenizers of this project's configs)")
            pending.append((at, value, depth + 1))


def load_data_config(path: str, allowed_types: tuple = ()):
    """The mmengine ``Config`` of the JSON or YAML file ``path``, parsed with the safe loaders and
    checked by :func:`check_data_config`."""
    from mmengine.config import Config

    from src.datasets.errors import SampleError
    from src.datasets.storage.files import read_text_file
    try:
        text = read_text_file(path, MAX_CONFIG_BYTES)
    except SampleError as e:
        raise UntrustedConfig(str(e)) from None
    try:
        if path.lower().endswith('.json'):
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)  # no python/* tags: mmengine's own loader builds them
    except ValueError as e:  # json's errors (yaml.YAMLError is not one: caught below)
        raise UntrustedConfig(f'{path}: not a readable config: {e}') from None
    except RecursionError:
        raise UntrustedConfig(f'{path}: not a readable config: nested too deep') from None
    except Exception as e:  # noqa: BLE001 (yaml.YAMLError and its kinds)
        raise UntrustedConfig(f'{path}: not a readable config: {type(e).__name__}') from None
    check_data_config(data, path, allowed_types)
    return Config(data, filename=path)
