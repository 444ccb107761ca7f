"""Puffin's base ``CaptionDataset`` at Puffin's import path (KangLiao929/Puffin ``src/datasets/base_datasets.py``),
on the project's ``CaptionDataset``: its keywords (``image_process='crop2square'`` by default,
``unit_image_size``, ``image_ceph_folder``, ``cap_ceph_folder``), its records (``{"image",
"annotation"}``, the caption the ``cap_source`` key of the annotation json, stripped) and its
samples (``pixel_values`` shaped by ``image_process``, ``image_dir``, ``image_file``, ``type``,
``text``, and ``input_ids`` only with a tokenizer). Its subclasses read from other folders too
(first views, cameras, reasoning captions): ``read_json_in`` and ``read_tensor_in`` read them
through the project's path rules and readers.
"""
from __future__ import annotations

import io
import re

import torch

from src.datasets.index.captions import parse_json
from src.datasets.errors import SampleError
from src.datasets.text2image.caption_datasets import LOCAL_FILES, CaptionDataset as _TextToImage

THINK = re.compile(r'<think>(.*?)</think>', re.S)


def thinking_of(text: str) -> str:
    """The reasoning inside ``<think>...</think>`` of ``text``, or the whole text (Puffin's rule)."""
    found = THINK.search(text)
    return found.group(1).strip() if found else text


class CaptionDataset(_TextToImage):
    """Puffin's keywords in Puffin's order; the project's added ones (``seed``, ``tar_index``, ...) by name."""

    def __init__(self, data_path, image_folder=None, debug=False, ceph_folder=None, image_ceph_folder=None,
                 cap_ceph_folder=None, latents_ceph_folder=None, ceph_config=None, tokenizer=None,
                 prompt_template=None, max_length=128, min_image_size=80, unit_image_size=32, image_size=256,
                 image_length=256, image_process='crop2square', image_tokens_folder=None, image_latents_folder=None,
                 cap_folder=None, cap_source='caption', tokenizer_kwargs=None, unconditional=0.1, **kwargs):
        for name, folder in (('image_ceph_folder', image_ceph_folder), ('cap_ceph_folder', cap_ceph_folder)):
            if folder is not None and folder != ceph_folder:
                raise ValueError(f'{type(self).__name__}: {name}={folder!r} differs from ceph_folder={ceph_folder!r}; '
                                 'images and captions in two object-storage folders are not supported here')
        self.image_ceph_folder, self.cap_ceph_folder = image_ceph_folder, cap_ceph_folder
        super().__init__(data_path, image_folder=image_folder, debug=debug, ceph_folder=ceph_folder,
                         latents_ceph_folder=latents_ceph_folder, ceph_config=ceph_config, tokenizer=tokenizer,
                         prompt_template=prompt_template, max_length=max_length, min_image_size=min_image_size,
                         image_size=image_size, image_length=image_length, image_tokens_folder=image_tokens_folder,
                         image_latents_folder=image_latents_folder, cap_folder=cap_folder, cap_source=cap_source,
                         tokenizer_kwargs=tokenizer_kwargs, unconditional=unconditional, image_process=image_process,
                         unit_image_size=unit_image_size, **kwargs)

    def caption_of(self, record: dict) -> str:
        return super().caption_of(record).strip()

    @staticmethod
    def _path(record: dict, key: str) -> str:
        """``record[key]``, a path, or a ``SampleError`` naming the keys the record has."""
        if not isinstance(record.get(key), str):
            raise SampleError('bad-record', f'the record has no {key!r} path; its keys are {sorted(record)}')
        return record[key]

    def annotation_of(self, record: dict) -> str:
        return self._path(record, 'annotation')

    def read_json_in(self, folder: str, annotation: str) -> dict:
        """The JSON object ``<folder>/<annotation>`` (a local folder other than ``cap_folder``)."""
        path = self.data_path_of(folder, annotation)
        found = parse_json(LOCAL_FILES.read(path), path)
        if not isinstance(found, dict):
            raise SampleError('bad-annotation', f'{path}: expected a JSON object, found {type(found).__name__}')
        return found

    def caption_in(self, folder: str, annotation: str) -> str:
        """The ``cap_source`` caption of ``<folder>/<annotation>``, stripped."""
        value = self.read_json_in(folder, annotation).get(self.cap_source)
        if not isinstance(value, str):
            raise SampleError('no-caption', f'{self.data_path_of(folder, annotation)}: no {self.cap_source!r} text')
        return value.strip()

    def read_tensor_in(self, folder: str, name: str) -> torch.Tensor:
        """The tensor saved at ``<folder>/<name>`` (weights only: a downloaded file runs no code)."""
        path = self.data_path_of(folder, name)
        try:
            found = torch.load(io.BytesIO(LOCAL_FILES.read(path)), map_location='cpu', weights_only=True)
        except SampleError:
            raise
        except Exception as err:  # torch.load reports damaged files with many exception types
            raise SampleError('bad-tensor', f'{path}: torch.load failed: {err}') from None
        if not isinstance(found, torch.Tensor):
            raise SampleError('bad-tensor', f'{path}: holds a {type(found).__name__}, not a tensor')
        return found
