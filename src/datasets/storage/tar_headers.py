"""A tar shard as the preparation sees it, without extracting anything: the job (which tar, where
its members go) and its result, the rule for which members may be written (the same for extraction
and ``--no-extract``), and the one pass over a tar's headers that finds them.

``extract`` (safe extraction) and ``tar_members`` (the member index of ``--no-extract``) both build
on this module, and neither on the other.
"""
from __future__ import annotations

import os
import posixpath
import re
import tarfile
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class TarJob:
    """One tar shard: ``name`` is its path relative to the dataset root, ``dest`` the folder
    (relative to the root) its members go to."""

    root: str
    name: str
    dest: str

    @property
    def path(self) -> str:
        return os.path.join(self.root, self.name)


@dataclass
class TarResult:
    """What one tar gave; ``status`` is 'done', 'partial' (the tar ends early or is damaged after
    some members: those were kept) or 'failed' (nothing could be used)."""

    name: str
    status: str
    members: int = 0
    bytes: int = 0
    refused: list = field(default_factory=list)  # [member name, reason]
    error: str = ''
    cause: str = ''  # of a failure: 'storage' (the disk is full or read-only: the tar is fine) or '' (the tar)
    replaced: list = field(default_factory=list)  # paths that were there already (another tar's?)
    not_resized: list = field(default_factory=list)  # --resize-to: [member, reason], kept as extracted

    def to_dict(self) -> dict:
        return asdict(self)


def file_signature(path: str) -> dict[str, int]:
    """What tells a tar as it is now: a changed size or mtime means it was replaced or rewritten."""
    st = os.stat(path)
    return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns}


def refusal(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` must not be written, or None for a regular file with a safe relative name.

    Links are refused even when they point inside the folder: a dataset needs none, and the tar
    member index (``--no-extract``) could not serve them either.
    """
    if member.issym() or member.islnk():
        return 'link'
    if member.issparse():
        return 'sparse'  # the tar member index could not serve its holes: refused by both steps alike
    if member.ischr() or member.isblk() or member.isfifo():
        return 'special-file'
    if not member.isreg():
        return 'unsupported-type'
    if member.name.startswith('/'):
        return 'absolute-path'
    if '..' in member.name.split('/'):
        return 'parent-path'
    if not member_path(member.name):
        return 'empty-name'
    try:
        member.name.encode('utf-8')
    except UnicodeEncodeError:  # tarfile keeps bytes that are not UTF-8 as lone surrogates
        return 'bad-name'
    return None


def printable(name: str) -> str:
    """A name as a report can hold it: bytes that were not UTF-8 shown as \\x escapes."""
    return name.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


def member_path(name: str) -> str:
    """A member name as a clean relative path ('./a//b.jpg' -> 'a/b.jpg'); '' when nothing is left."""
    path = posixpath.normpath(name)
    return '' if path in ('.', '') else path


def end_of_archive_missing(f, offset: int) -> bool:
    """True when no zero block follows the last header tarfile read: the file was cut short (at a
    member boundary tarfile stops silently) or damaged."""
    f.seek(offset)
    block = f.read(tarfile.BLOCKSIZE)
    return len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE


# Compressed data where a tar belongs, by its first bytes: (what it is, the command that decompresses
# the file where it lies, the suffix that command wants).
_COMPRESSIONS = ((b'\x1f\x8b', 'gzip', 'gunzip', '.gz'), (b'BZh', 'bzip2', 'bunzip2', '.bz2'),
                 (b'\xfd7zXZ\x00', 'xz', 'unxz', '.xz'), (b'\x28\xb5\x2f\xfd', 'zstd', 'unzstd --rm', '.zst'))


def compression_problem(tar_path: str) -> str | None:
    """What is wrong when the file ``tar_path`` holds compressed data (a ``.tar.gz`` named ``.tar``:
    tars are read uncompressed, their members at their byte offsets) or a zip archive, and how to
    mend it; None for anything else (a tar, or damage that reading it reports)."""
    with open(tar_path, 'rb') as f:
        start = f.read(64 << 10)
    if start.startswith(b'PK\x03\x04'):
        return 'a zip archive, not a tar: unpack it and pack its files as a tar'
    for magic, kind, command, suffix in _COMPRESSIONS:
        if start.startswith(magic):
            inside = 'tar' if kind == 'gzip' and _gunzipped_start(start)[257:262] == b'ustar' else 'data'
            what = f'a {kind}-compressed tar (a .tar{suffix} named .tar)' if inside == 'tar' else \
                f'{kind}-compressed data, not a tar'
            return (f'{what}: tars are read uncompressed (members at their byte offsets); decompress it '
                    f'where it lies (mv {tar_path} {tar_path}{suffix} && {command} {tar_path}{suffix}) and run again')
    return None


def _gunzipped_start(data: bytes) -> bytes:
    """The first bytes gzip ``data`` inflates to (b'' where it cannot be inflated)."""
    try:
        return zlib.decompressobj(wbits=31).decompress(data, 1024)
    except zlib.error:
        return b''


def check_not_compressed(tar_path: str) -> None:
    """``tarfile.ReadError`` saying what the file is when it is compressed (``compression_problem``)."""
    problem = compression_problem(tar_path)
    if problem:
        raise tarfile.ReadError(problem)


def scan_tar(tar_path: str) -> tuple[list[tuple[str, int, int]], list[list[str]], str]:
    """One pass over a tar's headers: (clean name, data offset, size) of each member extraction
    would write, the refused members as [name, reason], and where a damaged tar stops being
    readable ('' for an intact one). Raises ``tarfile.ReadError`` when not even the first header
    can be read.

    A tar of plain ustar headers only (the common case) is read by :func:`scan_tar_headers`,
    several times faster (bench/RESULTS.md); any other goes through tarfile (:func:`scan_tar_with_tarfile`)."""
    found = scan_tar_headers(tar_path)
    if found is None:
        check_not_compressed(tar_path)
    return found if found is not None else scan_tar_with_tarfile(tar_path)


def scan_tar_with_tarfile(tar_path: str) -> tuple[list[tuple[str, int, int]], list[list[str]], str]:
    """:func:`scan_tar` for any tar tarfile reads: pax and GNU extensions, links, damage."""
    members, refused, damage = [], [], ''
    file_size = os.path.getsize(tar_path)
    with open(tar_path, 'rb') as f, tarfile.open(fileobj=f, mode='r:') as tar:
        while True:
            try:
                member = tar.next()
            except tarfile.ReadError as e:  # raised when the previous member's data is cut short
                damage = str(e)
                break
            except (ValueError, OverflowError):  # a size beyond any file (a pax 'size' of 10**30)
                damage = f'member {members[-1][0]!r} claims more bytes than the tar holds' if members else \
                    'a header claims more bytes than the tar holds'
                break
            if member is None:
                if end_of_archive_missing(f, tar.offset):
                    last = repr(members[-1][0]) if members else 'the start'
                    damage = f'the tar ends early or is damaged after {last}'
                break
            if member.isdir():
                continue
            reason = refusal(member)
            if reason:
                refused.append([printable(member.name), reason])
            else:
                members.append((member_path(member.name), member.offset_data, member.size))
    # A member whose data runs past the end of the file is the one cut short.
    while members and members[-1][1] + members[-1][2] > file_size:
        name, offset, size = members.pop()
        damage = f'member {name!r} is cut short ({size} bytes from byte {offset}, the file ends at {file_size})'
    return members, refused, damage


def _octal_field(width: int) -> bytes:
    """A number field as tarfile's ``nti`` reads it: octal digits between spaces, ended by a NUL
    (what follows it is ignored). The lookahead may run past the field only when the whole field
    is digits and spaces, which ``nti`` reads too. (Written so that no run of spaces can be split
    two ways: a hostile header costs no backtracking.)"""
    return rb'(?= *(?:[0-7]+ *)?\0).{%d}' % width


# The ustar header of a regular file or a folder whose every number field is plain octal: name,
# mode, uid, gid, size, mtime, chksum, type, linkname..gname, devmajor, devminor, prefix, padding.
# Base-256 numbers, pax and GNU extension headers, links and devices do not match.
_PLAIN_HEADER = re.compile(rb'.{100}' + _octal_field(8) * 3 + _octal_field(12) * 2 + _octal_field(8)
                           + rb'[05\0].{172}' + _octal_field(8) * 2 + rb'.{167}', re.DOTALL)
# Names that member_path would change or refusal might refuse: '.' or '..' parts, empty parts,
# absolute, a trailing slash, empty.
_UNUSUAL_NAME = re.compile(r'(?:^|/)\.\.?(?:/|$)|//|^/|/$|^$')
_END_OF_ARCHIVE = bytes(tarfile.BLOCKSIZE)


class _HeaderReader:
    """512-byte blocks at increasing offsets of a file: one ``pread`` each, or with ``read_through``
    small members' headers out of large sequential reads.

    A ``pread`` per header reads no member data, which indexing needs (``--no-extract``) and which
    suits large members before an extraction too. Small members' headers are a few KB apart, and
    a small read each is the slow way to the page cache GNU tar then reads: scattered reads of an
    uncached tar cost more than GNU tar's whole extraction. Read through in large reads, the scan
    is one sequential pass whose pages GNU tar finds in memory; with large members reading through
    costs more than it saves, so headers more than ``DENSE`` apart keep their own small read
    (bench/RESULTS.md, "Preparation against the guides' scripts")."""

    CHUNK = 4 << 20
    DENSE = 256 << 10

    def __init__(self, fd: int, read_through: bool):
        self.fd, self.read_through = fd, read_through
        self.start, self.chunk, self.last = 0, b'', 0

    def block(self, offset: int) -> bytes:
        near, self.last = offset - self.last <= self.DENSE, offset
        if not (self.read_through and near):
            return os.pread(self.fd, tarfile.BLOCKSIZE, offset)
        if not self.start <= offset <= self.start + len(self.chunk) - tarfile.BLOCKSIZE:
            self.start, self.chunk = offset, os.pread(self.fd, self.CHUNK, offset)
        return self.chunk[offset - self.start:offset - self.start + tarfile.BLOCKSIZE]


def scan_tar_headers(tar_path: str, read_through: bool = False
                     ) -> tuple[list[tuple[str, int, int]], list[list[str]], str] | None:
    """:func:`scan_tar` read straight off the headers (no member data; with ``read_through`` the
    whole file sequentially, for an extraction that reads it next: see ``_HeaderReader``), or None
    unless every header is a plain ustar header (see ``_PLAIN_HEADER``) with a valid unsigned
    checksum and the tar ends with its end-of-archive block: then tarfile reads it member for
    member as this does, and everything else is left to :func:`scan_tar_with_tarfile`."""
    members, refused, headers, checksums = [], [], [], []
    with open(tar_path, 'rb') as f:
        fd, file_size = f.fileno(), os.fstat(f.fileno()).st_size
        reader = _HeaderReader(fd, read_through)
        offset = 0
        try:
            while True:
                if offset + tarfile.BLOCKSIZE > file_size:
                    return None  # cut short, or no end-of-archive block
                header = reader.block(offset)
                if header == _END_OF_ARCHIVE:
                    break
                if len(header) != tarfile.BLOCKSIZE or _PLAIN_HEADER.fullmatch(header) is None:
                    return None
                headers.append(header)
                checksums.append(_octal(header[148:156]))
                # Names as tarfile's frombuf makes them; an undecodable one raises (tarfile would
                # keep it as lone surrogates, which refusal refuses).
                name, kind = _text(header[:100]), header[156:157]
                if kind == tarfile.DIRTYPE or (kind == tarfile.AREGTYPE and name.endswith('/')):
                    offset += tarfile.BLOCKSIZE  # tarfile skips no data after a folder's header
                    continue
                if header[345]:  # a ustar prefix: the name's first part
                    name = f'{_text(header[345:500])}/{name}'
                size = _octal(header[124:136])
                if _UNUSUAL_NAME.search(name) is None:
                    members.append((name, offset + tarfile.BLOCKSIZE, size))
                else:
                    info = tarfile.TarInfo(name)
                    info.type = kind
                    reason = refusal(info)
                    if reason:
                        refused.append([name, reason])
                    else:
                        members.append((member_path(name), offset + tarfile.BLOCKSIZE, size))
                offset += tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        except ValueError:  # UnicodeDecodeError
            return None
    # tarfile also takes the signed sum some old tars wrote, and stops at a header that has neither
    blocks = np.frombuffer(b''.join(headers), np.uint8).reshape(-1, tarfile.BLOCKSIZE)
    sums = (blocks.sum(axis=1, dtype=np.int64) - blocks[:, 148:156].sum(axis=1, dtype=np.int64)
            + 8 * ord(' '))
    if not np.array_equal(sums, np.array(checksums, np.int64)):
        return None
    return members, refused, ''


def _octal(field: bytes) -> int:
    """A number field that matched ``_octal_field``."""
    return int(field.split(b'\0', 1)[0].strip() or b'0', 8)


def _text(field: bytes) -> str:
    return field.split(b'\0', 1)[0].decode(tarfile.ENCODING)


