"""SampleIndex: every source format, the streaming .json reader, the cache and its failure modes."""
import json
import logging
import math
import multiprocessing
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from src.datasets.index import index_cache, index_source, sample_index
from src.datasets.errors import IndexFormatError
from src.datasets.index.sample_index import SampleIndex, cache_path_for, iter_json_array

TRICKY = 'a ] b [ c { d } e , f "quoted" \\ back\\slash ünïcødé 画像 🎨\n'


def make_records(n):
    records = []
    for i in range(n):
        record = {'image': f'images/{i:06d}.jpg', 'caption': f'{TRICKY} #{i}',
                  'width': 256 + i % 7, 'height': 512}
        if i % 3 == 0:
            record['source'] = 'mj'  # keys differ between records
        if i % 5 == 0:
            del record['height']
        records.append(record)
    return records


def write_json(path, records, indent=None):
    path.write_text(json.dumps(records, indent=indent, ensure_ascii=False), encoding='utf-8')
    return path


def write_jsonl(path, records):
    path.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in records),
                    encoding='utf-8')
    return path


def write_parquet(path, records):
    schema = pa.schema([('image', pa.string()), ('caption', pa.string()), ('width', pa.int64()),
                        ('height', pa.int64()), ('source', pa.string())])
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path)
    return path


def write_folder(path, records):
    path.mkdir()
    # Names sort in the order of the records; the non-json file is ignored.
    for part, start in enumerate(range(0, len(records), 4)):
        write_json(path / f'part-{part:03d}.json', records[start:start + 4], indent=2)
    (path / 'README.txt').write_text('not an index file')
    return path


def all_records(index):
    return [index[i] for i in range(len(index))]


@pytest.fixture
def logged(monkeypatch):
    messages = []
    for module in (sample_index, index_cache):
        monkeypatch.setattr(module, 'print_log',
                            lambda msg, logger=None, level=logging.INFO: messages.append((level, msg)))
    return messages


@pytest.mark.parametrize('fmt', ['json-indented', 'json-one-line', 'jsonl', 'folder', 'parquet'])
def test_every_format_gives_the_same_records(tmp_path, fmt):
    records = make_records(11)
    source = {
        'json-indented': lambda: write_json(tmp_path / 'data.json', records, indent=2),
        'json-one-line': lambda: write_json(tmp_path / 'data.json', records),
        'jsonl': lambda: write_jsonl(tmp_path / 'data.jsonl', records),
        'folder': lambda: write_folder(tmp_path / 'parts', records),
        'parquet': lambda: write_parquet(tmp_path / 'data.parquet', records),
    }[fmt]()
    for use_cache in (True, False):
        index = SampleIndex.load(source, use_cache=use_cache)
        assert all_records(index) == records
        assert index.source == str(source)
        assert set(index.columns) == {'image', 'caption', 'width', 'height', 'source'}


def test_mixed_types_give_back_what_each_record_held(tmp_path, monkeypatch):
    """A column of text and other values is stored as text, the others as their JSON: a record
    gives back the very value (a caption that is a list or NaN is never taken for its text)."""
    monkeypatch.setattr(index_source, '_BATCH_ROWS', 2)  # mixes within and across batches
    records = [{'a': 1, 'n': 1}, {'a': 'x', 'n': 2}, {'a': 2, 'n': 2.5}, {'a': [1, 'b']},
               {'a': True, 'n': 3}, {'a': 2 ** 70}, {'a': float('nan')}, {'a': '[1, "b"]'}]
    for use_cache in (True, False):
        index = SampleIndex.load(write_json(tmp_path / 'data.json', records), use_cache=use_cache)
        values = [r.get('a') for r in all_records(index)]
        assert values[:6] == [1, 'x', 2, [1, 'b'], True, 2 ** 70] and math.isnan(values[6])
        assert values[7] == '[1, "b"]' and index.columns == ['a', 'n']
        assert index.not_text('a').tolist() == [True, False, True, True, True, True, True, False]
        assert [r.get("n") for r in all_records(index)] == [1.0, 2.0, 2.5, None, 3.0, None, None, None]
        np.testing.assert_array_equal(index.numbers("a"), [1, np.nan, 2, np.nan, np.nan, 2.0 ** 70, np.nan, np.nan])


@pytest.mark.parametrize('count', [1, 50_000])
def test_record_counts(tmp_path, count):
    records = make_records(count)
    index = SampleIndex.load(write_jsonl(tmp_path / 'data.jsonl', records))
    assert len(index) == count
    assert index[0] == records[0] and index[count - 1] == records[-1]
    assert index[count // 2] == records[count // 2]


@pytest.mark.parametrize('chunk_chars', [1, 3, 7, 64, 200])
@pytest.mark.parametrize('indent', [None, 2])
def test_json_reader_across_chunk_boundaries(tmp_path, chunk_chars, indent):
    records = make_records(9) + [{'s': '\\"]}', 'f': -1.5e-3, 'b': False, 't': True, 'z': None,
                                  'u': '\u00e9\\u00e9'}] + \
        [{'nested': {'x': {'y': '}], {'}}, 'list': [i, {'z': '}'}]} for i in range(9)]
    path = write_json(tmp_path / 'data.json', records, indent=indent)
    assert list(iter_json_array(path, chunk_chars=chunk_chars)) == json.loads(path.read_text())


def test_index_built_through_tiny_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(index_source, '_JSON_CHUNK_CHARS', 5)
    records = make_records(20)
    assert all_records(SampleIndex.load(write_json(tmp_path / 'd.json', records))) == records


def test_cache_is_reused(tmp_path):
    source = write_json(tmp_path / 'data.json', make_records(10))
    SampleIndex.load(source)
    cache = tmp_path / '.data.json.sampleindex.arrow'
    assert cache_path_for(source) == cache
    before = cache.stat()
    index = SampleIndex.load(source)
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert all_records(index) == make_records(10)


def test_cache_dir_keeps_same_named_sources_apart(tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    first = write_json(tmp_path / 'a' / 'data.json', [{'image': 'a.jpg'}])
    second = write_json(tmp_path / 'b' / 'data.json', [{'image': 'b.jpg'}])
    cache_dir = tmp_path / 'cache'
    assert SampleIndex.load(first, cache_dir=cache_dir)[0] == {'image': 'a.jpg'}
    assert SampleIndex.load(second, cache_dir=cache_dir)[0] == {'image': 'b.jpg'}
    assert len(list(cache_dir.glob('*.sampleindex.arrow'))) == 2
    assert not list((tmp_path / 'a').glob('.*'))


def test_stale_cache_is_rebuilt(tmp_path):
    source = write_json(tmp_path / 'data.json', [{'image': 'a.jpg'}])
    SampleIndex.load(source)
    stat = source.stat()
    write_json(source, [{'image': 'b.jpg'}])  # same size, other content and mtime
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert SampleIndex.load(source)[0] == {'image': 'b.jpg'}


def test_folder_member_added_makes_cache_stale(tmp_path):
    folder = write_folder(tmp_path / 'parts', make_records(8))
    assert len(SampleIndex.load(folder)) == 8
    write_json(folder / 'part-999.json', [{'image': 'late.jpg'}])
    index = SampleIndex.load(folder)
    assert len(index) == 9 and index[8] == {'image': 'late.jpg'}


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'empty'])
def test_corrupt_cache_is_rebuilt(tmp_path, logged, damage):
    source = write_json(tmp_path / 'data.json', make_records(10))
    SampleIndex.load(source)
    cache = cache_path_for(source)
    data = cache.read_bytes()
    cache.write_bytes({'truncate': data[:len(data) // 2], 'garbage': b'x' * len(data),
                       'empty': b''}[damage])
    assert all_records(SampleIndex.load(source)) == make_records(10)
    assert any(level == logging.WARNING and 'unreadable' in msg for level, msg in logged)
    assert all_records(SampleIndex.load(source)) == make_records(10)


def test_unwritable_cache_dir_builds_in_memory(tmp_path, logged):
    source = write_json(tmp_path / 'data.json', make_records(3))
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    index = SampleIndex.load(source, cache_dir=blocker / 'cache')  # cannot be created
    assert all_records(index) == make_records(3)
    assert 'in memory' in repr(index)
    warnings = [msg for level, msg in logged if level == logging.WARNING]
    assert len(warnings) == 1 and str(blocker / 'cache') in warnings[0]


def test_failed_cache_write_builds_in_memory_and_leaves_no_temp_files(tmp_path, logged,
                                                                        monkeypatch):
    def disk_full(self, batch):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(sample_index._SpillWriter, 'write', disk_full)
    source = write_json(tmp_path / 'data.json', make_records(3))
    assert all_records(SampleIndex.load(source)) == make_records(3)
    assert any('No space left' in msg for level, msg in logged if level == logging.WARNING)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['.data.json.sampleindex.arrow.lock',
                                                          'data.json']


def test_concurrent_builders_share_one_cache(tmp_path):
    source = write_jsonl(tmp_path / 'data.jsonl', make_records(2000))
    context = multiprocessing.get_context('fork')
    with context.Pool(2) as pool:
        lengths = pool.map(_load_length, [str(source)] * 4)
    assert lengths == [2000] * 4
    assert [p.name for p in tmp_path.iterdir() if 'tmp' in p.name] == []
    assert len(SampleIndex.load(source)) == 2000


def _load_length(path):
    return len(SampleIndex.load(path))


@pytest.mark.parametrize('text, where', [
    ('[\n  {"a": 1},\n  {"a": 2,,}\n]', 'line 3'),
    ('[{"a": 1} {"a": 2}]', "expected ',' or ']'"),
    ('[{"a": 1},]', 'malformed JSON in record 1'),
    ('[{"a": 1}', 'unexpected end of file'),
    ('[{"a": "unterminated}]', 'Unterminated string'),
    ('[{"a": 1}] x', 'unexpected data after'),
    ('{"a": 1}', 'not a JSON array'),
    ('', 'empty'),
    ('[{"a": 1}, 2]', 'record 1 is a int'),
    ('[]', 'has no records'),
])
def test_malformed_json_array(tmp_path, text, where):
    path = tmp_path / 'bad.json'
    path.write_text(text)
    with pytest.raises(IndexFormatError, match=where) as error:
        SampleIndex.load(path)
    assert str(path) in str(error.value)


def test_malformed_record_deep_in_a_large_array_names_its_line(tmp_path):
    text = json.dumps(make_records(3000), indent=2, ensure_ascii=False)
    broken_at = text.index('"images/002500.jpg"')
    text = text[:broken_at] + '"images/002500.jpg" oops' + text[broken_at + 19:]
    path = tmp_path / 'data.json'
    path.write_text(text, encoding='utf-8')
    line = text.count('\n', 0, broken_at) + 1
    with pytest.raises(IndexFormatError, match=f'line {line},.*record 2500'):
        SampleIndex.load(path)


@pytest.mark.parametrize('text, where', [
    ('{"a": 1}\n{"a": \n', 'line 2'),
    ('{"a": 1}\n\n["a"]\n', 'line 3: the record is a list'),
    ('\n\n', 'has no records'),
])
def test_malformed_jsonl(tmp_path, text, where):
    path = tmp_path / 'bad.jsonl'
    path.write_text(text)
    with pytest.raises(IndexFormatError, match=where) as error:
        SampleIndex.load(path, use_cache=False)
    assert str(path) in str(error.value)


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.json'):
        SampleIndex.load(tmp_path / 'missing.json')
    (tmp_path / 'data.csv').write_text('a,b\n')
    with pytest.raises(IndexFormatError, match='unsupported index format'):
        SampleIndex.load(tmp_path / 'data.csv')
    (tmp_path / 'not.parquet').write_text('plain text')
    with pytest.raises(IndexFormatError, match='not.parquet.*parquet'):
        SampleIndex.load(tmp_path / 'not.parquet')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(IndexFormatError, match='no .json files'):
        SampleIndex.load(tmp_path / 'empty')


def test_select_has_value_numbers(tmp_path):
    records = make_records(10)
    index = SampleIndex.load(write_json(tmp_path / 'data.json', records))
    np.testing.assert_array_equal(index.has_value('height'), [i % 5 != 0 for i in range(10)])
    np.testing.assert_array_equal(index.has_value('no-such-column'), np.zeros(10, bool))
    heights = index.numbers('height')
    assert heights.dtype == np.float64 and np.isnan(heights[0]) and heights[1] == 512
    assert np.isnan(index.numbers('caption')).all() and np.isnan(index.numbers('nope')).all()

    view = index.select(np.flatnonzero(index.has_value('source')))  # records 0, 3, 6, 9
    assert len(view) == 4 and all_records(view) == records[::3]
    np.testing.assert_array_equal(view.numbers('width'), [r['width'] for r in records[::3]])
    narrower = view.select(np.array([False, True, False, True]))
    assert all_records(narrower) == [records[3], records[9]]
    assert all_records(index.select(np.array([], dtype=np.int64))) == []
    with pytest.raises(IndexError):
        index.select([10])


def test_out_of_range_access(tmp_path):
    index = SampleIndex.load(write_json(tmp_path / 'data.json', make_records(3)))
    assert index[np.int64(2)] == make_records(3)[2]
    for i in (-1, 3):
        with pytest.raises(IndexError):
            index[i]
    assert list(index) == make_records(3)


def test_pickle_reopens_the_memory_map(tmp_path):
    records = make_records(2000)
    index = SampleIndex.load(write_json(tmp_path / 'data.json', records)).select(range(1, 2000))
    data = pickle.dumps(index)
    assert len(data) < 20_000 < os.path.getsize(tmp_path / 'data.json')  # names, not records
    assert all_records(pickle.loads(data)) == records[1:]
    in_memory = SampleIndex.load(tmp_path / 'data.json', use_cache=False).select([5])
    assert all_records(pickle.loads(pickle.dumps(in_memory))) == [records[5]]


class _RecordDataset(torch.utils.data.Dataset):
    def __init__(self, index):
        self.index = index

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        return self.index[i]


def test_two_dataloader_workers(tmp_path):
    records = make_records(300)
    index = SampleIndex.load(write_jsonl(tmp_path / 'data.jsonl', records))
    loader = torch.utils.data.DataLoader(_RecordDataset(index), batch_size=None, num_workers=2,
                                         multiprocessing_context='fork')
    assert list(loader) == records
