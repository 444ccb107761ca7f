"""Tampered and zero-byte files beside the index cache (issue 37, class 9): the image sizes, the
selection, the digests and the stored prompt ids are rebuilt, never trusted, never a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from src.datasets.index.sample_index import cache_path_for
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.synthetic.images import encode_image

SIZES = [(160, 120), (120, 160), (200, 100), (150, 150), (50, 40), (160, 120), (100, 200), (180, 120)]


@pytest.fixture
def root(tmp_path) -> Path:
    """Records without width and height (their sizes come from the headers, kept in a sidecar), one
    too small (the selection keeps rows), inline captions (stored prompt ids)."""
    (tmp_path / 'images').mkdir()
    records = []
    for i, (width, height) in enumerate(SIZES):
        (tmp_path / 'images' / f'{i}.jpg').write_bytes(encode_image(width, height, seed=i))
        records.append({'image': f'{i}.jpg', 'caption': f'picture number {i} of a cat'})
    records[4].update(width=50, height=40)  # too small, as the index says: dropped at construction
    (tmp_path / 'data.json').write_text(json.dumps(records))
    return tmp_path


@pytest.fixture
def make(root, tokenizer, prompt_template):
    def make(**kwargs):
        return CaptionDataset(**{**dict(
            data_path=str(root / 'data.json'), image_folder=str(root / 'images'), tokenizer=tokenizer,
            prompt_template=prompt_template, image_size=64, unconditional=0.0, seed=0, max_length=40,
            min_image_size=60, buckets=dict(area=64 * 64, divisor=16), pretokenize=True, max_failure_ratio=0.9),
            **kwargs})
    return make


def _samples(dataset) -> list:
    return [(s['image_file'], tuple(s['pixel_values'].shape), s['input_ids'].tolist())
            for s in (dataset[i] for i in range(len(dataset)))]


def _sidecars(root: Path) -> dict[str, list[Path]]:
    cache = cache_path_for(root / 'data.json')
    found = {
        'sizes': sorted(root.glob(f'{cache.name}.sizes-*.npy')),
        'selection rows': sorted(root.glob(f'{cache.name}.select-*/rows.npy')),
        'selection buckets': sorted(root.glob(f'{cache.name}.select-*/buckets.npy')),
        'selection drops': sorted(root.glob(f'{cache.name}.select-*/drops.json')),
        'digests': sorted(root.glob(f'{cache.name}.digests.json')),
        'prompt offsets': sorted(root.glob(f'{cache.name}.prompt-ids-*/offsets.npy')),
        'prompt known': sorted(root.glob(f'{cache.name}.prompt-ids-*/known.npy')),
        'prompt ids': sorted(root.glob(f'{cache.name}.prompt-ids-*/ids.int32')),
    }
    return found


def _npy(values) -> bytes:
    import io
    out = io.BytesIO()
    np.save(out, values)
    return out.getvalue()


def _same_shape_other_values(data: bytes) -> bytes:
    """The file as ``save`` writes it, its values out of their range (and out of order)."""
    import io
    if data.startswith(b'\x93NUMPY'):
        values = np.load(io.BytesIO(data))
        return _npy((np.arange(values.size)[::-1].reshape(values.shape) * 1000 + 7).astype(values.dtype))
    if data.startswith(b'{'):
        known = json.loads(data)
        if 'values' in known:  # the digests: other values under the right fingerprint
            known['values'] = {key: 'not a digest' if isinstance(value, str) else [10 ** 9, -1]
                               for key, value in known['values'].items()}
        else:
            known['drops'] = {'counts': {'too-small': 'many'}, 'messages': [3]}
        return json.dumps(known).encode()
    return (np.frombuffer(data, '<i4') + 10 ** 8).astype('<i4').tobytes()  # ids outside the vocabulary


DAMAGES = {
    'other values': _same_shape_other_values,
    'zero bytes': lambda data: b'',
    'cut in half': lambda data: data[:len(data) // 2],
    'garbage': lambda data: bytes(range(256)) * 4,
    'json of another shape': lambda data: b'{"total": "eight", "drops": 3, "rows": [1], "values": 7}',
    'an array of other values': lambda data: _npy(np.full(40, 10 ** 6, np.int64)),
    'a pickled object': lambda data: _npy(np.array([{'a': 1}], dtype=object)),
}


@pytest.mark.parametrize('damage', sorted(DAMAGES))
@pytest.mark.parametrize('sidecar', ['sizes', 'selection rows', 'selection buckets', 'selection drops', 'digests',
                                     'prompt offsets', 'prompt known', 'prompt ids'])
def test_a_damaged_sidecar_is_rebuilt(make, root, sidecar, damage):
    first = make()
    digest = first.index.content_digest('image')
    expected = _samples(first)
    paths = _sidecars(root)[sidecar]
    assert paths, f'no {sidecar} file was written'
    for path in paths:
        path.write_bytes(DAMAGES[damage](path.read_bytes()))
    again = make()
    assert again.index.content_digest('image') == digest
    assert _samples(again) == expected
    assert sum(again.failures.values()) == sum(first.failures.values())


def test_stored_prompt_ids_outside_the_vocabulary_are_a_counted_failure_naming_the_store(make, root):
    from src.datasets.errors import SampleError
    first = make()
    folder = first.prompt_ids.folder
    last = int(np.flatnonzero(first.prompt_ids.known)[-1])  # not among the few checked on opening
    ids = np.memmap(folder / 'ids.int32', '<i4', mode='r+')
    ids[first.prompt_ids.offsets[last]] = len(first.tokenizer) + 5
    ids.flush()
    del ids
    again = make()
    position = int(np.flatnonzero(again.index.table_rows() == last)[0])
    with pytest.raises(SampleError, match=f'{folder}: row {last}: the stored ids are damaged') as err:
        again.prepare_data(position)
    assert err.value.reason == 'bad-prompt-ids'
    sample = again[position]
    assert sample['image_file'] != f'{last}.jpg'  # replaced by another
    assert again.failures['bad-prompt-ids'] >= 1  # (a replacement may draw it again)
    assert all(int(i) < len(again.tokenizer) for i in sample['input_ids'])


def test_a_picture_replaced_after_its_size_was_kept_is_refused_naming_it_and_read_again(make, root):
    from src.datasets.errors import SampleError
    first = make(pretokenize=False)
    position = [first.index[i]['image'] for i in range(len(first))].index('0.jpg')
    assert tuple(first[position]['pixel_values'].shape[1:]) == first.target_of(position)
    wide = first.target_of(position)
    (root / 'images' / '0.jpg').write_bytes(encode_image(70, 200, seed=9))  # now tall: another bucket
    again = make(pretokenize=False)  # the kept sizes and selection say what they said
    assert again.target_of(position) == wide
    with pytest.raises(SampleError, match=f'{root / "images" / "0.jpg"}: the picture is 70x200 now') as err:
        again.prepare_data(position)
    assert err.value.reason == 'stale-size'
    assert not _sidecars(root)['sizes'] and not _sidecars(root)['selection drops']
    third = make(pretokenize=False)  # read again: the right bucket
    position = [third.index[i]['image'] for i in range(len(third))].index('0.jpg')
    assert third.target_of(position) != wide
    sample = third.prepare_data(position)
    assert tuple(sample['pixel_values'].shape[1:]) == third.target_of(position)
    assert sample['original_size'].tolist() == [200, 70]
