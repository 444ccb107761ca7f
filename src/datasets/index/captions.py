"""Caption resolution: where a record's caption comes from, as small pure functions.

Order, for ``cap_source`` (one key or a list of keys tried in order):
1. inline: the record itself holds the key (midjourney ``data.json``, a parquet column);
2. the record's ``annotation`` names a file: ``.json`` -> that key of the object, ``.txt`` -> the
   whole text, stripped;
3. otherwise ``SampleError('no-caption')`` saying what was tried and which keys were there.
Every error names the file it is about; the dataset adds which sample it was.
"""
from __future__ import annotations

import functools
import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence

from src.datasets.errors import DatasetConfigError, SampleError

ANNOTATION_KEY = 'annotation'
# The largest caption file a sample reads: a long recaption is a few kB, a caption json of several
# fields tens of kB; a file of tens of MB (a log, a hostile file) is refused before it is read.
MAX_CAPTION_BYTES = 1 << 20
_JSON_TYPES = {dict: 'an object', list: 'an array', str: 'a string', int: 'a number', float: 'a number',
               bool: 'a boolean', type(None): 'null'}


def caption_keys(cap_source: str | Sequence[str]) -> tuple[str, ...]:
    """``cap_source`` as a tuple of keys to try in order."""
    keys = (cap_source,) if isinstance(cap_source, str) else tuple(cap_source)
    if not keys or not all(isinstance(key, str) for key in keys):
        raise ValueError(f'cap_source must be a key or a non-empty list of keys, got {cap_source!r}')
    return keys


def check_cap_source(columns: Sequence[str], keys: tuple[str, ...], where: str) -> None:
    """A ``cap_source`` that no record can have fails at construction, not as one skipped sample
    after another: the index holds none of ``keys`` and no annotation file to look them up in."""
    if ANNOTATION_KEY not in columns and not any(key in columns for key in keys):
        named = keys[0] if len(keys) == 1 else list(keys)
        raise DatasetConfigError(f'{where}: cap_source={named!r} is not a key of its records, which have no '
                                 f'{ANNOTATION_KEY!r} file to look it up in either; their keys: {sorted(columns)}')


def check_caption(value, where: str) -> str:
    """``value`` as caption text; ``where`` says which file and key it came from.

    The rule for values that are not text: a list of texts gives its first element (a caption
    field that holds several, as DALL-E 3's ``*_caption2`` fields do in one revision); anything
    else (an object, a number, a boolean, JSON's NaN or Infinity, null) is ``'bad-caption'``,
    never its printed form. Empty or blank text is ``'empty-caption'``.
    """
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = value[0]
    if not isinstance(value, str):
        raise SampleError('bad-caption', f'{where} is {_JSON_TYPES.get(type(value), type(value).__name__)}, '
                                         'not text')  # never its content: it may be anything
    if is_blank(value):
        raise SampleError('empty-caption', f'{where} is empty' if not value.strip() else
                          f'{where} is blank: only invisible format or control characters')
    return value


def is_blank(text: str) -> bool:
    """Whether ``text`` shows nothing: empty, or only whitespace, invisible format or control
    characters (Unicode categories Cf and Cc: zero-width spaces and joiners, direction marks, the
    byte-order mark, NUL...) and fillers that draw nothing. A caption of zero-width spaces trains
    as no text at all."""
    stripped = text.strip()
    if not stripped:
        return True
    if unicodedata.category(stripped[0]) not in _INVISIBLE_CATEGORIES and stripped[0] not in _FILLERS:
        return False  # the common case: a visible first character, decided without a scan
    return _visible_character().search(stripped) is None


_INVISIBLE_CATEGORIES = ('Cf', 'Cc')
# Letters and symbols that draw nothing (the Hangul fillers, the blank Braille pattern): a caption
# of them is as blank as one of zero-width spaces.
_FILLERS = '\u115f\u1160\u3164\uffa0\u2800'


@functools.cache
def _visible_character() -> re.Pattern:
    """A character that is neither whitespace nor of an invisible category (made on first use)."""
    invisible = ''.join(re.escape(chr(code)) for code in range(sys.maxunicode + 1)
                        if unicodedata.category(chr(code)) in _INVISIBLE_CATEGORIES)
    return re.compile(f'[^\\s{invisible}{_FILLERS}]')


# ASCII whitespace, what every tokenizer's pre-tokenizer splits on, and what is not.
_SPACE, _NON_SPACE = re.compile(r'[ \t\r\n]'), re.compile(r'[^ \t\r\n]')


def cut_caption(caption: str, max_chars: int | None) -> str:
    """``caption`` stripped and, when longer than ``max_chars``, cut after the word that follows
    character ``max_chars``: a tokenizer then gives the same first tokens for it as for the whole
    caption, as long as those tokens cover at most ``max_chars`` characters (see
    ``CaptionDataset.cut_caption``). A caption of megabytes is never tokenized whole; one with no
    whitespace in the ``max_chars`` after the bound is cut at twice the bound."""
    text = caption.strip()
    if max_chars is None or len(text) <= max_chars:
        return text
    limit = 2 * max_chars
    space = _SPACE.search(text, max_chars, limit)  # (three linear searches, never a backtracking regex)
    word = space and _NON_SPACE.search(text, space.end(), limit)
    after = word and _SPACE.search(text, word.end(), limit)
    return text[:after.start() if after else limit].rstrip()


def decode_text(data: bytes, name: str) -> str:
    """``data`` decoded as UTF-8 (a byte-order mark is dropped); bad bytes are reported by offset."""
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as err:
        raise SampleError('bad-annotation', f'{name}: not UTF-8 text: byte 0x{data[err.start]:02x} '
                                            f'at offset {err.start} ({err.reason})') from None


def caption_from_text(data: bytes, name: str) -> str:
    """A ``.txt`` caption file: the whole text, stripped."""
    return check_caption(decode_text(data, name).strip(), f'{name}: the caption text')


def parse_json(data: bytes, name: str):
    """The JSON value in ``data``, or ``SampleError('bad-annotation')`` naming ``name``: malformed,
    not UTF-8, or nested deeper than the parser follows (a hostile file's thousands of brackets)."""
    try:
        return json.loads(decode_text(data, name))
    except json.JSONDecodeError as err:
        raise SampleError('bad-annotation', f'{name}: malformed JSON: {err}') from None
    except ValueError:  # a number of more digits than Python converts (thousands)
        raise SampleError('bad-annotation', f'{name}: a number too long to read (over '
                                            f'{sys.get_int_max_str_digits()} digits)') from None
    except RecursionError:
        raise SampleError('bad-annotation', f'{name}: JSON nested deeper than the parser follows') from None


def caption_from_json(data: bytes, keys: Sequence[str], name: str) -> str:
    """A ``.json`` caption file: the first of ``keys`` that the object holds (null counts as absent)."""
    obj = parse_json(data, name)
    if not isinstance(obj, dict):
        raise SampleError('bad-annotation', f'{name}: expected a JSON object, found '
                                            f'{_JSON_TYPES.get(type(obj), type(obj).__name__)}')
    for key in keys:
        if obj.get(key) is not None:
            return check_caption(obj[key], f'{name}: {key!r}')
    raise SampleError('no-caption', f'{name}: has none of the caption keys {list(keys)}; '
                                    f'its keys are {sorted(obj)}')


def parse_annotation(name: str, data: bytes, keys: Sequence[str]) -> str:
    """The caption held by annotation file ``name`` (contents ``data``), chosen by its extension."""
    extension = os.path.splitext(name)[1].lower()
    if extension == '.json':
        return caption_from_json(data, keys, name)
    if extension == '.txt':
        return caption_from_text(data, name)
    raise SampleError('bad-annotation', f'{name}: unsupported annotation type {extension!r} '
                                        "(expected '.json' or '.txt')")


def resolve_caption(record: Mapping, keys: Sequence[str], read_annotation: Callable[[str], str]) -> str:
    """The caption of ``record``: inline under one of ``keys``, else from its annotation file.

    ``read_annotation(relpath)`` reads and parses the file the record's ``annotation`` names.
    """
    for key in keys:
        if key in record:
            return check_caption(record[key], f'inline {key!r}')
    if ANNOTATION_KEY in record:
        return read_annotation(record[ANNOTATION_KEY])
    raise SampleError('no-caption', f'no caption: the record has none of the keys {list(keys)} and no '
                                    f'{ANNOTATION_KEY!r} naming a caption file; its keys are {sorted(record)}')
