"""Safe extraction of one tar shard: only regular files, only inside the target folder, all or nothing.

Members are written into a per-tar staging folder first and moved into place once the tar has been
read to its end, so an interrupted tar leaves nothing half written in the target: the next run
clears the staging folder and extracts the tar again.
"""
from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
from typing import Iterator

from src.datasets.storage.files import join_inside, link_outside, read_file
from src.datasets.storage.atomic import atomic_write
from src.prepare.listing import PathListing
from src.prepare.tar_headers import (TarJob, TarResult, check_not_compressed, end_of_archive_missing, member_path,
                                      printable, refusal, scan_tar, scan_tar_headers)


GNU_TAR = shutil.which('tar')  # extracts the tars the header scan proves clean
MAX_REPLACED = 10_000  # per tar: beyond that many shared paths, the rest keep extraction order


# What one member's name can meet on the file system: its own problem, not the run's.
NAME_ERRORS = {errno.ENAMETOOLONG: 'name-too-long', errno.ENOTDIR: 'path-clash', errno.EEXIST: 'path-clash',
               errno.EISDIR: 'path-clash', errno.EINVAL: 'unwritable-name', errno.EILSEQ: 'unwritable-name'}
# What the storage itself can meet: the run stops, says so, and the tar stays as good as it was.
STORAGE_ERRORS = {errno.ENOSPC: 'no space left on the disk', errno.EDQUOT: 'disk quota exceeded',
                  errno.EROFS: 'the file system is read-only', errno.EACCES: 'permission denied',
                  errno.EPERM: 'permission denied', errno.EIO: 'an I/O error of the disk'}


def storage_problem(err: OSError) -> str | None:
    """What is wrong with the storage when ``err`` is a storage failure, else None."""
    return STORAGE_ERRORS.get(err.errno)


def staging_folder(job: TarJob, step_name: str) -> str:
    return os.path.join(job.root, '.prepare', 'staging', step_name, job.name)


class Extract:
    """The per-tar step that extracts members into ``<root>/<job.dest>``.

    The runner is given a step object; the tar member index (``--no-extract``) is the other one.
    Besides ``process(job)`` a step says how the index builders see files: :meth:`listing` (the
    paths that exist, relative to the root) and :meth:`read` (one file's bytes).
    """

    name = 'extract'

    def __init__(self, resize_to: int | None = None):
        self.resize_to = resize_to

    @property
    def options(self) -> dict:
        """What, beside the tar, decides this step's output (recorded in each tar's marker)."""
        return {'resize_to': self.resize_to} if self.resize_to else {}

    def process(self, job: TarJob) -> TarResult:
        staging = staging_folder(job, self.name)
        if link_outside(staging, job.root):  # a '.prepare' planted as a link: nothing is written through it
            return TarResult(name=job.name, status='failed', error=f'cannot extract {job.path}: {staging} leads out '
                             f'of {job.root} through a symbolic link; remove the link, then re-run')
        shutil.rmtree(staging, ignore_errors=True)  # what an interrupted earlier attempt left
        result = TarResult(name=job.name, status='done')
        written = {}  # relative path -> None: insertion-ordered, a name repeated in the tar counts once
        try:
            if not self._extract_clean_tar(job, staging, result, written):
                self._extract_member_by_member(job, staging, result, written)
            if self.resize_to:
                from src.prepare.resize import NotResized, shrink_image  # Pillow and torch: only when resizing
                for path in written:
                    try:
                        shrink_image(os.path.join(staging, path), self.resize_to)
                    except NotResized as kept:
                        result.not_resized.append([path, kept.reason])
            clashes, replaced, linked = move_into_place(staging, os.path.join(job.root, job.dest), written, job.root)
            result.refused += [[path, 'path-clash'] for path in clashes]
            result.refused += [[path, 'link-outside'] for path in linked]
            result.replaced = [posixpath.join(job.dest, path) for path in replaced[:MAX_REPLACED]]
            for path in clashes + linked:
                written.pop(path)
        except (tarfile.TarError, OSError) as e:
            problem = storage_problem(e) if isinstance(e, OSError) else None
            return TarResult(name=job.name, status='failed', refused=result.refused,
                             error=f'cannot extract {job.path}: {problem or e} ({e})' if problem
                             else f'cannot extract {job.path}: {e}', cause='storage' if problem else '')
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # its empty parents go at the end of the run
        result.members = len(written)
        return result

    def _extract_clean_tar(self, job: TarJob, staging: str, result: TarResult, written: dict) -> bool:
        """GNU tar's speed for a tar the header scan proves clean (plain ustar headers with valid
        checksums, an end-of-archive block, only regular files with safe, normalised names): the
        judgement is done, so nothing is left to Python but the bookkeeping. False (nothing
        written) for any other tar, or when GNU tar is missing or fails: then member by member."""
        if GNU_TAR is None:
            return False
        try:
            scanned = scan_tar_headers(job.path, read_through=True)  # GNU tar reads it next
        except OSError:
            return False
        if scanned is None or scanned[1] or scanned[2]:
            return False  # not plain, something to refuse, or damaged
        members = scanned[0]
        if any(member_path(name) != name for name, _, _ in members):
            return False
        make_folders(staging)
        done = subprocess.run([GNU_TAR, '-xf', os.path.abspath(job.path), '-C', staging, '--no-same-owner',
                               '--no-same-permissions', '--no-overwrite-dir'], capture_output=True)
        if done.returncode != 0:
            if b'No space left' in done.stderr or b'Read-only file system' in done.stderr:
                raise OSError(errno.ENOSPC if b'No space' in done.stderr else errno.EROFS,
                              done.stderr.decode(errors='replace').strip()[:300])
            shutil.rmtree(staging, ignore_errors=True)
            return False
        for name, _, size in members:
            written[name] = None
            result.bytes += size
        return True

    def _extract_member_by_member(self, job: TarJob, staging: str, result: TarResult, written: dict) -> None:
        """Safe extraction with a judgement per member: refusals, names the file system cannot hold,
        and the complete members of a damaged tar."""
        check_not_compressed(job.path)
        with open(job.path, 'rb') as f, tarfile.open(fileobj=f, mode='r:') as tar:
            last = 'the start'
            for member in tar:
                if member.isdir():
                    continue  # folders are made as their files need them
                last = member.name
                reason = refusal(member)
                if reason:
                    result.refused.append([printable(member.name), reason])
                    continue
                path = member_path(member.name)
                target = os.path.join(staging, path)
                try:
                    write_member(tar, member, target)
                except (tarfile.ReadError, EOFError) as e:
                    result.status = 'partial'
                    result.error = f'truncated: member {member.name} is cut short ({e})'
                    written.pop(path, None)
                    break
                except OSError as e:
                    if e.errno not in NAME_ERRORS:
                        raise
                    result.refused.append([printable(member.name), NAME_ERRORS[e.errno]])
                    written.pop(path, None)
                    continue
                written[path] = None
                result.bytes += member.size
            else:
                if end_of_archive_missing(f, tar.offset):
                    result.status = 'partial'
                    result.error = f'truncated: the tar ends early or is damaged after {last}'

    def settle(self, root: str, jobs: list[TarJob], results: dict) -> list[str]:
        """Make a path that several tars hold the last one's (in tar order), whatever order the tars
        were extracted in, as ``--no-extract`` reads it; return those paths.

        Only paths a tar found already there are looked at (``TarResult.replaced``): for them the
        tars' headers are scanned (no data read) and the last holder's bytes written in place."""
        candidates = {path for result in results.values() for path in result.get('replaced', [])}
        if not candidates:
            return []
        last, holders = {}, {}
        for job in jobs:  # in tar order: a later holder replaces an earlier one
            try:
                members = scan_tar(job.path)[0]
            except (OSError, tarfile.TarError):
                continue  # reported by the run as failed
            for name, offset, size in members:
                path = posixpath.join(job.dest, name)
                if path in candidates:
                    last[path] = (job, offset, size)
                    holders.setdefault(path, set()).add(job.name)
        shared = sorted(path for path, tars in holders.items() if len(tars) > 1)
        for path in shared:
            job, offset, size = last[path]
            with open(job.path, 'rb') as f:
                data = os.pread(f.fileno(), size, offset)
            with atomic_write(os.path.join(root, path), 'wb', only_if_changed=True, durable=False) as out:
                out.write(data)
        return shared

    def listing(self, root: str, jobs: list[TarJob], folders: list[str], refused=None) -> PathListing:
        """Every file under ``folders`` (where the dataset's files are, relative to ``root``) as
        paths relative to ``root``: one scan, not one stat per index row. Files that were there
        before (extracted by hand, say) count as much as those extracted from ``jobs``. Links that
        lead out of ``root`` are left out, added to ``refused`` (path -> reason)."""
        return PathListing.collect(path for folder in folders for path in _walk_files(root, folder, refused))

    def read(self, root: str, path: str) -> bytes:
        """A file's bytes (``src.datasets.storage.files.read_file``: regular files only, bounded; never
        through a link out of ``root``)."""
        return read_file(join_inside(root, path))


EXTRACT = Extract()


def make_folders(folder: str, attempts: int = 5) -> None:
    """``os.makedirs``, again when another run's cleanup removes an empty parent at that moment."""
    for attempt in range(attempts):
        try:
            os.makedirs(folder, exist_ok=True)
            return
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise


def open_new(target: str, attempts: int = 5):
    """``open(target, 'wb')``, making its folders (see ``make_folders``)."""
    for attempt in range(attempts):
        try:
            make_folders(os.path.dirname(target))
            return open(target, 'wb')
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise


def write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> None:
    """Write one member's data to ``target``; on any failure nothing is left there."""
    try:
        with tar.extractfile(member) as src, open_new(target) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(target)
        raise


def move_into_place(staging: str, dest: str, paths, root: str) -> tuple[list[str], list[str], list[str]]:
    """Move the staged ``paths`` to ``dest``; return (those that clash with what is there, a file
    where a folder is needed or the reverse: left out; those that replaced a file already there;
    those whose place leads out of ``root`` through a symbolic link: never written)."""
    judged, ready, clashes, replaced, linked = {}, set(), [], [], []  # judged: folder -> leads out of root
    for path in paths:
        target = os.path.join(dest, path)
        folder = os.path.dirname(target)
        outside = judged.get(folder)
        if outside is None:  # judged once per folder; a file's own place by its one lstat below
            outside = judged[folder] = bool(link_outside(folder, root))
        try:
            found = os.lstat(target)
        except FileNotFoundError:
            found = None
        except OSError as e:
            if e.errno not in NAME_ERRORS:
                raise
            clashes.append(path)
            continue
        # A folder on the way, or the file, is a link out of the dataset.
        if outside or (found is not None and stat.S_ISLNK(found.st_mode) and link_outside(target, root)):
            linked.append(path)
            continue
        try:
            if folder not in ready:
                os.makedirs(folder, exist_ok=True)
                ready.add(folder)
            if found is not None:
                replaced.append(path)
            try:
                os.replace(os.path.join(staging, path), target)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                shutil.move(os.path.join(staging, path), target)  # the target is on another disk
        except OSError as e:
            if e.errno not in NAME_ERRORS:
                raise
            clashes.append(path)
    return clashes, replaced, linked


def scan_files(root: str, folder: str) -> PathListing:
    """Paths (relative to ``root``, '/'-separated) of the regular files under ``root/folder``,
    skipping the preparation's own '.prepare' bookkeeping and links out of ``root``."""
    return PathListing.collect(_walk_files(root, folder))


def _walk_files(root: str, folder: str, refused=None) -> Iterator[str]:
    """The files under ``root/folder``; a link that leads out of ``root`` (a file, or a folder with
    all beneath it) is left out and added to ``refused`` (path -> reason); folders reached by a link are not
    entered (a link to a parent would be a loop), the files they hold are listed where they are."""
    pending = [folder]
    while pending:
        rel = pending.pop()
        try:
            entries = os.scandir(os.path.join(root, rel))
        except FileNotFoundError:
            continue
        prefix = f'{rel}/' if rel else ''
        with entries:
            for entry in entries:  # a million files: files first, one call each
                if entry.is_symlink() and link_outside(entry.path, root):
                    if refused is not None:
                        refused[prefix + entry.name] = 'link-outside'
                    continue
                if entry.is_file():
                    yield prefix + entry.name
                elif entry.is_dir(follow_symlinks=False) and entry.name != '.prepare':
                    pending.append(prefix + entry.name)
