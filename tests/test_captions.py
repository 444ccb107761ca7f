"""Caption resolution: inline keys, .json and .txt annotation files, and every way they go wrong."""
from __future__ import annotations

import json

import pytest

from src.datasets.index.captions import (caption_from_json, caption_from_text, caption_keys, check_caption,
                                   parse_annotation, resolve_caption)
from src.datasets.errors import SampleError


def no_file(relpath):
    raise AssertionError(f'no annotation file should be read, but {relpath} was')


def test_caption_keys_accepts_a_key_or_a_list():
    assert caption_keys('caption') == ('caption',)
    assert caption_keys(['short_caption', 'caption']) == ('short_caption', 'caption')
    with pytest.raises(ValueError, match='cap_source'):
        caption_keys([])


def test_inline_caption_wins_over_the_annotation_file():
    record = {'image': 'a.jpg', 'caption': 'a red fox', 'annotation': 'a.json'}
    assert resolve_caption(record, ('caption',), no_file) == 'a red fox'


def test_keys_are_tried_in_order():
    record = {'image': 'a.jpg', 'prompt': 'second', 'caption': 'third'}
    assert resolve_caption(record, ('missing', 'prompt', 'caption'), no_file) == 'second'


def test_annotation_file_is_read_when_no_key_is_inline():
    record = {'image': 'a.jpg', 'annotation': 'sub/a.json'}
    assert resolve_caption(record, ('caption',), lambda relpath: f'read {relpath}') == 'read sub/a.json'


def test_no_caption_names_what_was_tried_and_the_keys_present():
    record = {'image': 'a.jpg', 'width': 10}
    with pytest.raises(SampleError) as err:
        resolve_caption(record, ('caption', 'prompt'), no_file)
    assert err.value.reason == 'no-caption'
    message = str(err.value)
    assert "['caption', 'prompt']" in message and "'annotation'" in message
    assert "['image', 'width']" in message


def test_json_annotation_takes_the_first_key_present():
    data = json.dumps({'caption': None, 'short_caption': 'a lighthouse', 'long_caption': 'x'}).encode()
    assert caption_from_json(data, ('caption', 'short_caption'), 'c/a.json') == 'a lighthouse'


def test_json_annotation_without_the_key_names_file_and_present_keys():
    data = json.dumps({'url': 'http://x', 'tags': []}).encode()
    with pytest.raises(SampleError) as err:
        caption_from_json(data, ('caption',), 'c/a.json')
    assert err.value.reason == 'no-caption'
    assert 'c/a.json' in str(err.value) and "['tags', 'url']" in str(err.value)


@pytest.mark.parametrize('data, expected', [
    (b'{"caption": "a cat",', 'line 1 column 21'),
    (b'', 'line 1 column 1'),
    (b'["a", "b"]', 'found an array'),
    (b'"just text"', 'found a string'),
    (b'{"caption": ' + b'[' * 100_000 + b']' * 100_000 + b'}', 'nested deeper than the parser follows'),
])
def test_bad_json_annotation(data, expected):
    with pytest.raises(SampleError) as err:
        caption_from_json(data, ('caption',), 'c/a.json')
    assert err.value.reason == 'bad-annotation'
    assert 'c/a.json' in str(err.value) and expected in str(err.value)


@pytest.mark.parametrize('value, expected', [
    (42, 'is a number'), (4.5, 'is a number'), (float('nan'), 'is a number'), (float('inf'), 'is a number'),
    (True, 'is a boolean'), ({'en': 'a cat'}, 'is an object'), ([], 'is an array'), ([3, 'a cat'], 'is an array'),
])
def test_a_caption_that_is_not_text_is_a_bad_caption_never_its_printed_form(value, expected):
    for read in (lambda: caption_from_json(json.dumps({'caption': value}).encode(), ('caption',), 'c/a.json'),
                 lambda: check_caption(value, "inline 'caption'")):
        with pytest.raises(SampleError) as err:
            read()
        assert err.value.reason == 'bad-caption' and expected in str(err.value)


def test_a_list_of_captions_gives_its_first():
    """The rule the dalle3 tool follows for DALL-E 3's list-valued caption fields."""
    assert caption_from_json(b'{"caption": ["first", "second"]}', ('caption',), 'c/a.json') == 'first'
    assert resolve_caption({'caption': ['first', 'second']}, ('caption',), no_file) == 'first'
    with pytest.raises(SampleError, match='empty'):
        check_caption([' ', 'second'], 'x')


@pytest.mark.parametrize('text', ['', '   ', '\n\t '])
def test_empty_caption(text):
    with pytest.raises(SampleError) as err:
        caption_from_json(json.dumps({'caption': text}).encode(), ('caption',), 'c/a.json')
    assert err.value.reason == 'empty-caption' and 'c/a.json' in str(err.value)
    with pytest.raises(SampleError) as err:
        caption_from_text(text.encode(), 'c/a.txt')
    assert err.value.reason == 'empty-caption' and 'c/a.txt' in str(err.value)
    with pytest.raises(SampleError, match="inline 'caption' is empty"):
        resolve_caption({'caption': text}, ('caption',), no_file)


def test_text_annotation_is_stripped_and_may_start_with_a_bom():
    assert caption_from_text('\ufeff  a café at night\n\n'.encode(), 'c/a.txt') == 'a café at night'


def test_text_annotation_that_is_not_utf8_names_the_byte_offset():
    with pytest.raises(SampleError) as err:
        caption_from_text('café'.encode('latin-1'), 'c/a.txt')
    assert err.value.reason == 'bad-annotation'
    assert 'c/a.txt' in str(err.value) and 'offset 3' in str(err.value) and '0xe9' in str(err.value)


def test_check_caption_refuses_non_text():
    with pytest.raises(SampleError, match='is null'):
        check_caption(None, 'x')


def test_parse_annotation_dispatches_on_the_extension():
    assert parse_annotation('a/B.JSON', b'{"caption": "x"}', ('caption',)) == 'x'
    assert parse_annotation('a/b.txt', b'y\n', ('caption',)) == 'y'
    with pytest.raises(SampleError) as err:
        parse_annotation('a/b.xml', b'<caption/>', ('caption',))
    assert err.value.reason == 'bad-annotation' and "'.xml'" in str(err.value)
