"""A sample's files: where its image, its caption file and its latent are read from, each path kept
inside its folder, and the list of files a record reads (what a batch prefetches).

Chosen once, as upstream chooses them: images from ``<ceph_folder>/<image>`` when there is no
image_folder, annotations from ``<ceph_folder>/<annotation>`` when there is no cap_folder, latents
from ``<latents_ceph_folder>/<image>.pt`` when it is set; else the local folders (or tar shards).
With ``tar_index`` in the bucket too, the ceph_folder reads are ranged GETs of its shards.
The readers are ``src.datasets.storage.storage``'s.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch

from src.datasets.errors import SampleError
from src.datasets.index.captions import ANNOTATION_KEY, MAX_CAPTION_BYTES
from src.datasets.storage.files import join_inside
from src.datasets.storage.object_store import ObjectFolder
from src.datasets.storage.storage import LocalFiles, TarMembers, folder_storage
from src.datasets.storage.tensor_files import MAX_TENSOR_BYTES, load_tensor_file

LOCAL_FILES = LocalFiles()


def object_folder(folder, ceph_config, use_ceph: bool):
    """The object-storage folder ``folder`` when upstream would read it (checked now: a wrong
    endpoint, key or bucket fails here), else None."""
    if folder is None or not use_ceph:
        return None
    store = ObjectFolder(folder, os.fspath(ceph_config))
    store.check()
    return store


class SampleFiles:
    """The readers and roots of a dataset's images, annotations and latents (see the module)."""

    def __init__(self, *, image_folder, cap_folder, image_latents_folder, ceph_folder, latents_ceph_folder,
                 ceph_config, use_ceph: bool, tar_index=None, remote_tars=None, allow_outside_paths=False):
        ceph = remote_tars if remote_tars is not None else object_folder(ceph_folder, ceph_config, use_ceph)
        self.ceph_files = ceph
        local = TarMembers(tar_index) if tar_index is not None else LOCAL_FILES
        self.image_files, self.image_root = ((ceph, ceph_folder) if ceph and image_folder is None
                                             else (local, image_folder))
        self.annotation_files, self.cap_root = ((ceph, ceph_folder) if ceph and cap_folder is None
                                                else (local, cap_folder))
        latents_ceph = object_folder(latents_ceph_folder, ceph_config, use_ceph)
        self.latent_files, self.latent_root = ((latents_ceph, latents_ceph_folder) if latents_ceph
                                               else (folder_storage(image_latents_folder), image_latents_folder))
        self.allow_outside_paths = allow_outside_paths
        self.remote = any(reader.remote for reader in (self.image_files, self.annotation_files, self.latent_files))

    def check_folders(self, owner: str, image_tokens_folder, decodes_images: bool) -> None:
        """A wrong path in a config fails here, naming it, rather than as thousands of skipped samples."""
        folders = dict(image_tokens_folder=image_tokens_folder)  # data_path: by the index's own loader
        if isinstance(self.latent_files, LocalFiles):
            folders['image_latents_folder'] = self.latent_root
        if isinstance(self.annotation_files, LocalFiles):  # else tar shards or objects
            folders['cap_folder'] = self.cap_root
        if decodes_images and isinstance(self.image_files, LocalFiles):
            folders['image_folder'] = self.image_root
        for name, path in folders.items():
            if path is not None and not os.path.exists(path):
                raise FileNotFoundError(f'{owner}: {name} {path!r} does not exist')

    def path(self, folder: str | None, relpath: str) -> str:
        """``folder/relpath``, where ``relpath`` comes from the index: one that is absolute or climbs
        out of ``folder`` is a ``SampleError('unsafe-path')`` unless ``allow_outside_paths``."""
        return join_inside(folder, relpath, allow_outside=self.allow_outside_paths)

    def read_image(self, image_file: str) -> bytes:
        return self.image_files.read(self.path(self.image_root, image_file))

    def read_annotation(self, annotation: str) -> tuple[str, bytes]:
        """The path and bytes of the caption file ``annotation`` (bounded: a caption, not a download)."""
        path = self.path(self.cap_root, annotation)
        return path, self.annotation_files.read(path, max_bytes=MAX_CAPTION_BYTES)

    def load_stored(self, folder: str, image_file: str):
        """The path and the object stored at ``<folder>/<image_file>.pt`` (a file, or a member of the
        latent shards): bounded before it inflates, weights only."""
        path = self.path(folder, image_file + '.pt')
        data = (self.latent_files if folder == self.latent_root else LOCAL_FILES).read(path, max_bytes=MAX_TENSOR_BYTES)
        return path, load_tensor_file(data, path)

    def load_tensor(self, folder: str, image_file: str):
        path, stored = self.load_stored(folder, image_file)
        if not isinstance(stored, torch.Tensor):
            raise SampleError('bad-tensor', f'{path}: holds a {type(stored).__name__}, not a tensor')
        return stored

    @property
    def latent_info_reader(self):
        """The reader of the latent folder's own files (its record, its sizes): beside the shards."""
        return LOCAL_FILES.read if isinstance(self.latent_files, TarMembers) else self.latent_files.read

    def of_record(self, record: dict, image_key: str, cap_keys: Sequence[str],
                  decodes_images: bool) -> list[tuple[object, str]]:
        """(reader, path) of each file the sample of ``record`` reads from a remote reader (what a
        batch prefetches). A path that cannot be made (unsafe, not text) is left to its read to report."""
        files = []
        if ANNOTATION_KEY in record and not any(key in record for key in cap_keys):
            files.append((self.annotation_files, self.cap_root, record[ANNOTATION_KEY]))
        image = record.get(image_key)
        if decodes_images:
            files.append((self.image_files, self.image_root, image))
        elif self.latent_root is not None and isinstance(image, str):
            files.append((self.latent_files, self.latent_root, image + '.pt'))
        paths = []
        for reader, folder, relpath in files:
            if reader.remote:
                with contextlib.suppress(SampleError, TypeError, ValueError):
                    paths.append((reader, self.path(folder, relpath)))
        return paths

