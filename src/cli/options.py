"""``--cfg-options key=value ...`` as mmengine's tools take them, read without importing mmengine
(which imports torch: the tools check their models first), and taking dicts as well:
``dataset.buckets=dict(table='pixart-512')`` or ``dataset.buckets="{'table': 'pixart-512'}"``.

Values read as mmengine's ``DictAction`` reads them: numbers, ``true``/``false``/``none`` in any
case, ``[a,b]`` lists, ``(a,b)`` tuples, ``a,b`` lists, anything else a string (paths, ``pixart-512``).
"""
from __future__ import annotations

import argparse
import ast

_WORDS = {'true': True, 'false': False, 'none': None}


class ConfigOptionError(ValueError):
    """A ``key=value`` that cannot be read; the message names it."""


def _value(node: ast.AST):
    """The Python value of a literal, a bare name (a string), or ``dict(key=...)``; ValueError otherwise."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return _WORDS.get(node.id.lower(), node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.List):
        return [_value(item) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_value(item) for item in node.elts)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_value(key): _value(value) for key, value in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'dict' \
            and not node.args and all(keyword.arg for keyword in node.keywords):
        return {keyword.arg: _value(keyword.value) for keyword in node.keywords}
    raise ValueError(ast.dump(node))


def parse_value(text: str):
    """One option's value (see the module's docstring)."""
    stripped = text.strip()
    try:
        node = ast.parse(stripped, mode='eval').body
        value = _value(node)
    except (SyntaxError, ValueError):
        if stripped.startswith(('dict(', '{')):
            raise ConfigOptionError(f'{text!r} is not a dict of literals: write it as dict(key=value, ...) with '
                                    f"quoted strings, e.g. dict(table='pixart-512')") from None
        return text
    if isinstance(value, tuple) and not stripped.startswith('('):
        return list(value)  # a,b: a list, as DictAction reads it
    return value


def parse_options(pairs) -> dict:
    """``['a.b=1', 'c=dict(x=2)']`` -> ``{'a.b': 1, 'c': {'x': 2}}``."""
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition('=')
        if not sep or not key:
            raise ConfigOptionError(f'--cfg-options takes key=value pairs; {pair!r} is not one')
        options[key] = parse_value(value)
    return options


class ConfigOptions(argparse.Action):
    """The ``--cfg-options`` action: a dict, or argparse's usage error naming the bad pair."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            options = parse_options(values)
        except ConfigOptionError as e:
            parser.error(str(e))
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest) or {}), **options})
