"""Upload a prepared dataset (loose files, or tar shards with their indexes, latents) to S3-protocol
object storage, where ceph_folder / latents_ceph_folder read it.

    .venv/bin/python tools/upload.py data/redcaps5m/raw cluster1:s3://data/redcaps5m/raw --ceph-config ~/petreloss.conf
    .venv/bin/python tools/upload.py data/laion6m_dc32_512 s3://data/laion6m_dc32_512        # AWS_* variables
    .venv/bin/python tools/upload.py data/dalle3 s3://new-bucket/dalle3 --create-bucket      # a bucket not made yet

In parallel (--workers), resumable: an object already there with the same size is skipped, so a
re-run after a failure uploads only what is missing. The preparation's bookkeeping (.prepare/) and
temporary files are left out, and so are symbolic links (named in the summary): a download may
hold a link to a key or a home folder, and nothing is uploaded through one unless --follow-links
says so, and even then only links whose target stays inside the folder. Ends with a summary
(uploaded, skipped, failed with the reason) and a non-zero exit when anything failed.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger('upload')


def local_files(root: Path, refused: list, follow_links: bool = False):
    """(relative path, size) of the files to upload: not .prepare/, not temp files, not caches; links
    (files or folders) go to ``refused`` instead, unless ``follow_links`` and the link rule
    (``src.datasets.storage.files.link_outside``) finds that they stay inside ``root``. Folders reached
    through a link are never entered (a link to a parent would be a loop)."""
    from src.datasets.storage.files import link_outside
    from src.datasets.storage.atomic import TEMP_MARK
    for folder, subfolders, files in os.walk(root):  # never into a linked folder: followlinks=False
        for name in sorted(subfolders):
            if os.path.islink(os.path.join(folder, name)):
                refused.append((Path(folder, name).relative_to(root).as_posix() + '/', 'linked folder'))
        subfolders[:] = sorted(name for name in subfolders if name not in ('.prepare', '.cache'))
        for name in sorted(files):
            if TEMP_MARK in name or name.endswith('.sampleindex.arrow') or name.endswith('.lock'):
                continue
            path = Path(folder) / name
            relpath = path.relative_to(root).as_posix()
            if path.is_symlink() and not follow_links:
                refused.append((relpath, 'link'))
            elif path.is_symlink() and link_outside(str(path), str(root)):
                refused.append((relpath, 'link-outside'))
            elif path.is_file():  # not a FIFO, a socket or a device: those hang or read without end
                yield relpath, path.stat().st_size
            else:
                refused.append((relpath, 'not-a-file'))


def remote_sizes(store) -> dict[str, int]:
    """Key (relative to the folder's prefix) -> size of the objects already there."""
    prefix = f'{store.prefix}/' if store.prefix else ''
    sizes = {}
    for page in store.client().get_paginator('list_objects_v2').paginate(Bucket=store.bucket, Prefix=prefix):
        for item in page.get('Contents', []):
            sizes[item['Key'][len(prefix):]] = item['Size']
    return sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', help='the local folder to upload')
    parser.add_argument('url', help='[cluster:]s3://bucket/prefix it goes to')
    parser.add_argument('--ceph-config', help="petrel-client's INI file (default: the AWS_* environment variables)")
    parser.add_argument('--workers', type=int, default=16, help='uploads at once (default: %(default)s)')
    parser.add_argument('--create-bucket', action='store_true',
                        help='make the bucket first when it does not exist (else it must exist)')
    parser.add_argument('--follow-links', action='store_true',
                        help='upload the files that symbolic links name, when the link stays inside ROOT '
                             '(by default no link is followed; one that leads out of ROOT never is)')
    args = parser.parse_args(argv)
    from src.cli.logs import setup_logging
    setup_logging('upload')
    from src.datasets.progress import tqdm

    from src.datasets.extras import MissingExtra
    from src.datasets.storage.object_store import ObjectFolder, StorageConfigError
    from src.datasets.storage.redact import redact
    root = Path(args.root)
    if not root.is_dir():
        logger.error('%s is not a folder', root)
        return 2
    try:
        store = ObjectFolder(args.url, args.ceph_config, connections=args.workers)  # a connection per thread
        if args.create_bucket:
            store.create_bucket()
        store.check()
    except (StorageConfigError, MissingExtra) as e:
        logger.error('%s%s', e, '' if args.create_bucket or 'does not exist' not in str(e) else
                     ' (--create-bucket makes it)')
        return 2
    there = remote_sizes(store)
    todo, skipped, refused = [], 0, []
    for relpath, size in local_files(root, refused, args.follow_links):
        if there.get(relpath) == size:
            skipped += 1
        else:
            todo.append((relpath, size))
    failed = []
    client = store.client()  # boto3 clients are thread-safe; the transfer manager does multipart and retries
    with tqdm(total=sum(size for _, size in todo), unit='B', unit_scale=True, desc=f'upload to {store.folder}') as bar, \
            ThreadPoolExecutor(args.workers) as pool:
        futures = {pool.submit(client.upload_file, str(root / relpath), store.bucket,
                               store.key(f'{store.folder}/{relpath}')): (relpath, size) for relpath, size in todo}
        for future in as_completed(futures):
            relpath, size = futures[future]
            try:
                future.result()
            except Exception as e:  # boto3 reports failures with many exception types
                failed.append(f'{relpath}: {type(e).__name__}: {redact(str(e))}')
            bar.update(size)
    uploaded = len(todo) - len(failed)
    logger.info('%s -> %s: %d files uploaded (%.1f MiB), %d already there with the same size (skipped), %d failed%s',
                root, store.describe(), uploaded, sum(size for _, size in todo) / 2 ** 20, skipped, len(failed),
                ''.join(f'\n  {line}' for line in failed[:10]))
    if refused:
        logger.warning('%d not uploaded (links are not followed%s): %s', len(refused),
                       '' if args.follow_links else '; --follow-links takes those that stay inside the folder',
                       '; '.join(f'{path} ({reason})' for path, reason in refused[:10]))
    if failed:
        logger.error('run the same command again to upload what failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
