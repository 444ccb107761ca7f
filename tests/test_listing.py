"""The 23M-row checks of Midjourney's index build: existence by path hashes against the listing, and
repeats by name hashes, with colliding hashes told apart by name."""
import numpy as np
import pyarrow as pa

from src.prepare import midjourney
from src.prepare.listing import PathListing, string_hashes


def test_contains_all_under_a_prefix_with_nulls():
    listing = PathListing.collect(['images/a.png', 'images/b.png', 'other/c.png'])
    candidates = pa.chunked_array([['a.png', 'c.png', None], ['b.png', 'images/a.png']])
    assert listing.contains_all(candidates, prefix='images/').tolist() == [True, False, False, True, False]
    hashes = string_hashes(candidates)  # given by a caller that has them: the same answer
    assert listing.contains_all(candidates, 'images/', hashes).tolist() == [True, False, False, True, False]
    assert PathListing.collect([]).contains_all(candidates).tolist() == [False] * 5


def test_first_occurrences_keep_the_earliest_candidate_of_each_name():
    names = pa.chunked_array([['a', 'b', 'a'], ['c', 'b', 'a', 'd']])
    candidates = np.array([0, 1, 2, 3, 4, 6])  # row 5 was dropped for another reason
    assert midjourney.first_occurrences(names, candidates).tolist() == [
        True, True, False, True, False, False, True]


def test_first_occurrences_tell_colliding_hashes_apart_by_name(monkeypatch):
    # Every name hashes alike: only the names decide; no distinct name is ever dropped.
    monkeypatch.setattr(midjourney, 'string_hashes', lambda strings: np.zeros(len(strings), np.int64))
    names = pa.chunked_array([['x', 'y', 'y', 'z', 'x', 'w']])
    assert midjourney.first_occurrences(names, np.arange(6)).tolist() == [True, True, False, True, False, True]
    assert midjourney.first_occurrences(names, np.array([2, 4, 5])).tolist() == [
        False, False, True, False, True, True]
