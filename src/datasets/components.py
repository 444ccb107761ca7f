"""What a dataset config names by a callable ``type`` and its arguments (a tokenizer as
``dict(type=AutoTokenizer.from_pretrained, ...)``, an image processor, xtuner's template_map_fn),
built as upstream's ``BUILDER.build`` builds it: ``type(**the other keys)``.

No registry is involved: the type is a callable (a lazy object of a pure-Python config, resolved
when read) or its dotted path (a config dumped to text). Building through an mmengine registry of
our own warned under every Runner that its default scope is not in that registry's tree.
"""
from __future__ import annotations

from mmengine.config import ConfigDict
from mmengine.utils import get_object_from_string


def build_component(cfg):
    """An instance as is; a config dict (plain or ConfigDict, lazy objects allowed) built from ``type``."""
    if cfg is None or not isinstance(cfg, dict):
        return cfg
    args = dict(ConfigDict(cfg))  # reading a ConfigDict's items resolves the lazy objects in them
    return resolve_type(args.pop('type', None), cfg)(**args)


def resolve_type(kind, cfg=None):
    """A config's ``type``: the callable itself, or the one its dotted path names (a config dumped to
    text writes ``'src.datasets.collate_functions.collate_func_gen'``)."""
    if isinstance(kind, str):
        found = get_object_from_string(kind)
        if found is None:
            raise TypeError(f'{kind!r} names nothing that can be imported: give the callable itself as type')
        kind = found
    if not callable(kind):
        raise TypeError(f'the type of {dict(cfg or {})!r} is not a callable')
    return kind
