"""Upstream's private hooks on ``CaptionDataset`` (OpenUni, VGT, Harmon: ``_load_data``,
``_read_ceph``, ``_read_image``, ``_read_json``, ``_process_image``, ``_process_text``, ``_retry``),
with upstream's signatures and return types, so that a subclass written against upstream (as
OpenUni's ``ReconstructDataset``: its own ``__getitem__`` over ``self.data_list`` and these hooks)
runs on this base unchanged.

They are built on the project's machinery, not copies of upstream's loops: paths stay inside their
folders, files and objects come through the dataset's readers (local files, tar shards, object
storage), images are opened by the one restricted function, a failure is a ``SampleError`` the
subclass's ``except`` catches, ``_retry`` counts it under the failure policy (upstream retried
without end), and the randomness is the sample's own (keyed on its draw under
``ResumableTrainLoop``). The project's own hooks (``read_image``, ``load_image_data``,
``process_text``, ``prepare_data``, ...) stay the documented way to write a subclass.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import io
import os

from src.datasets.index.captions import MAX_CAPTION_BYTES, parse_json
from src.datasets.errors import SampleError
from src.datasets.sample.image_io import check_size, decode_upright_rgb, load_square, open_image, random_square_box, \
    to_pixel_values
from src.datasets.index.sample_index import SampleIndex

HOOK_FAILURE = 'failed-in-subclass'
SETS_DRAW = '_sets_draw_rng'
# The generator of the sample an upstream-style call is making: upstream's hooks (``_process_image``,
# ``_process_text``) and a subclass's ``prepare_data(idx)`` take none as an argument. Set only
# around such a call (``upstream_draw``), never between samples; the project's own steps receive it.
_DRAW: contextvars.ContextVar = contextvars.ContextVar('upstream_draw', default=None)


def current_draw():
    """The generator of the upstream-style call being made, or None outside one."""
    return _DRAW.get()


@contextlib.contextmanager
def upstream_draw(rng):
    token = _DRAW.set(rng)
    try:
        yield rng
    finally:
        _DRAW.reset(token)


@functools.lru_cache(maxsize=256)
def _draw_arguments(function) -> tuple[str, ...]:
    """Which of the sample's arguments ``function`` (a ``prepare_data``) takes: the project's take
    ``rng`` and ``prompt_ids``; one written against upstream takes the index alone."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return ()
    return tuple(name for name in ('rng', 'prompt_ids') if name in parameters)


def make_sample(prepare_data, idx, rng, prompt_ids=None):
    """``prepare_data(idx, rng=rng, prompt_ids=...)``, or, for one written as ``prepare_data(idx)``,
    the call made under the sample's draw."""
    taken = _draw_arguments(getattr(prepare_data, '__func__', prepare_data))
    if 'rng' in taken:
        return prepare_data(idx, rng=rng, **({'prompt_ids': prompt_ids} if 'prompt_ids' in taken else {}))
    with upstream_draw(rng):
        return prepare_data(idx)


def sets_draw_rng(getitem):
    """Marks a ``__getitem__`` that sets the sample's random generator itself (the project's own)."""
    setattr(getitem, SETS_DRAW, True)
    return getitem


class UpstreamHooks:
    """Mixed into ``CaptionDataset``; see the module."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get('__getitem__')
        if own is not None and not getattr(own, SETS_DRAW, False):
            # A subclass's own __getitem__ (upstream style) reaches the hooks below without passing
            # through the project's: the sample's random generator is set from its index here.
            @functools.wraps(own)
            def getitem(self, idx):
                with upstream_draw(self.draw_rng(idx)):
                    return own(self, idx)
            setattr(getitem, SETS_DRAW, True)
            cls.__getitem__ = getitem

    def _current_rng(self):
        rng = current_draw()
        return self._state().rng if rng is None else rng

    def _load_data(self, data_path: str) -> None:
        """Upstream: ``self.data_list`` from ``data_path``. Here the index, memory-mapped from its cache;
        a subclass's own ``_load_data`` may assign ``self.data_list`` a list of records instead, and its
        ``data_path`` (a glob, a hub id) is then its own business: it is checked here, not before."""
        if not os.path.exists(data_path):
            raise FileNotFoundError(f'{type(self).__name__}: data_path {data_path!r} does not exist')
        self.forget_own_records()
        self.index = SampleIndex.load(data_path, cache_dir=self.index_cache_dir)

    def _read_ceph(self, ceph_path: str) -> io.BytesIO:
        """The object ``ceph_path`` (``<ceph_folder>/<file>``) of the dataset's object storage."""
        if self.ceph_files is None:
            raise SampleError('missing-file', f'{ceph_path}: object storage is not in use (ceph_config names no file)')
        return io.BytesIO(self.ceph_files.read(ceph_path))

    def _read_image(self, image_file: str):
        """The picture ``image_file`` (under ``image_folder``, or ``ceph_folder``'s objects), upright and
        RGB, refused (``SampleError``) as upstream asserts: no larger than ``min_image_size`` a side, or
        an aspect ratio outside (0.1, 10)."""
        name = self.data_path_of(self.image_root, image_file)
        img = open_image(self.read_image(image_file), name)
        picture = decode_upright_rgb(img)
        check_size(picture.size, name, self.min_image_size, self.max_aspect)
        return picture

    def _read_json(self, annotation_file: str) -> dict:
        """The JSON object in ``annotation_file`` (under ``cap_folder``, or ``ceph_folder``'s objects)."""
        path = self.data_path_of(self.cap_root, annotation_file)
        annotation = parse_json(self.annotation_files.read(path, max_bytes=MAX_CAPTION_BYTES), path)
        if not isinstance(annotation, dict):
            raise SampleError('bad-annotation', f'{path}: expected a JSON object, found {type(annotation).__name__}')
        return annotation

    def _process_image(self, image) -> dict:
        """``{'pixel_values': [3, S, S] in [-1, 1]}``: a random square crop (the whole picture squeezed
        when ``crop_image`` is False), resized to ``image_size``."""
        box = random_square_box(image.size, self._current_rng()) if self.crop_image else (0, 0, *image.size)
        return dict(pixel_values=to_pixel_values(load_square(image, box, self.image_size)))

    def _process_text(self, text: str) -> dict:
        """``{'input_ids': ...}``: the dataset's prompt of ``text`` (``process_text``)."""
        return self.process_text(text, self._current_rng())

    def _retry(self):
        """Another random sample, after one a subclass's ``__getitem__`` could not use. Counted (reason
        'failed-in-subclass', the subclass reported the cause) under the failure policy: a dataset
        whose samples keep failing stops with the counts, instead of recursing without end."""
        state = self._state()
        state.tracker.failure(SampleError(HOOK_FAILURE, f'{self.data_path}: a sample failed in '
                                                        f'{type(self).__name__}.__getitem__'), streak=1)
        return self[state.rng.randrange(len(self))]
