"""A sample's randomness key (``Draw.key``) is its place in a stream that batching does not move: a
bucket's stream (source, bucket, pass, slot) for the project's samplers, the epoch's permutation
(or the endless stream) for mmengine's under ``ResumableTrainLoop``'s placement. So a resume with
another global batch gives every place the uninterrupted run's record, and the dataset the same
crop and dropout there; the key is a few integers, pickles with the draw and survives an offset."""
from __future__ import annotations

import pickle

import pytest
import torch

from src.datasets.samplers.draws import Draw

from test_elastic_resume import run
from test_sample_keys import datasets  # noqa: F401 (a fixture)


def keys_read(kind, monkeypatch, world, batch, steps, iteration=0, saved=None) -> tuple[list, object]:
    """(key, index) of every draw of ``steps`` global batches from ``iteration`` on, read by
    ``world`` ranks of ``batch``, and the facts the run saves."""
    batches, facts, _ = run(kind, monkeypatch, world, batch, steps, iteration, saved,
                            seen=lambda draw: (draw.key, int(draw)))
    return sum(batches, []), facts


@pytest.mark.parametrize('kind', ['bucket', 'mix', 'default', 'infinite'])
def test_another_global_batch_gives_every_place_the_uninterrupted_run_s_record(kind, monkeypatch):
    whole, _ = keys_read(kind, monkeypatch, 2, 3, 12)
    first, facts = keys_read(kind, monkeypatch, 2, 3, 5)
    second, _ = keys_read(kind, monkeypatch, 2, 2, 8, iteration=5, saved=facts)  # 6 -> 4
    ours, theirs = dict(whole), dict(first + second)
    assert len(ours) == len(whole) and len(theirs) == len(first + second)  # no key given twice
    common = ours.keys() & theirs.keys()
    assert all(ours[key] == theirs[key] for key in common)
    assert len(common) >= 0.75 * len(theirs)  # most places: the streams' tails aside
    if kind in ('bucket', 'mix'):
        assert all(key[0] == 'b' and len(key) == 5 for key in ours)  # (source, bucket, pass, slot)


def test_a_draw_keeps_its_key_through_pickles_and_offsets():
    draw = Draw(7, 40, 3, 2, ('b', 1, 4, 0, 9))
    again = pickle.loads(pickle.dumps(draw))
    assert (int(again), again.position, again.seed, again.epoch, again.key) == (7, 40, 3, 2, ('b', 1, 4, 0, 9))
    assert (draw + 5).key == (5 + draw).key == (draw - 5).key == draw.key and int(draw - 5) == 2
    assert Draw(7, 40, 3, 2).key == (2, 40)  # without one: (epoch, position)
    assert len(pickle.dumps(draw)) < 120


def test_the_dataset_keys_a_sample_on_the_draw_s_key_not_its_position(datasets):  # noqa: F811
    _, square = datasets
    wide = next(i for i in range(len(square)) if square.index[i]['width'] != square.index[i]['height'])
    key = ('b', 0, 1, 2, 3)
    one, other = square[Draw(wide, 0, 3, 0, key)], square[Draw(wide, 77, 3, 4, key)]
    assert torch.equal(one['pixel_values'], other['pixel_values'])
    assert torch.equal(one['input_ids'], other['input_ids'])
    crops = [square[Draw(wide, 0, 3, 0, ('b', 0, 1, p, 3))]['pixel_values'] for p in range(4)]
    assert any(not torch.equal(crops[0], crop) for crop in crops[1:])  # another pass, another crop
    assert square[wide]['pixel_values'].shape == one['pixel_values'].shape  # a plain index still works
