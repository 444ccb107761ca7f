"""Reading a dataset from S3-protocol storage against the same data on local disk, side by side:
samples per second through a DataLoader (2 workers) and requests per sample, for loose objects
(ceph_folder) and for tar shards in the bucket (one ranged GET a member); a two-source mix read a
sample at a time against a source's share of each batch at a time; and a member read by a ranged
GET against fetching its whole shard.

The server is moto's standalone server on 127.0.0.1 (pure Python, so its own cost is large and
real object stores answer far faster): the ratios show what the client side does, the request
counts hold for any store.

    PYTHONPATH=. .venv/bin/python bench/bench_object_store.py [--images 96 | --small]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tests'))  # the counting proxy of the tests


def samples_per_second(dataset, workers: int = 2, shuffle: bool = False) -> float:
    import torch
    from torch.utils.data import DataLoader

    from src.datasets.collate_functions import collate_func_gen
    loader = DataLoader(dataset, batch_size=8, num_workers=workers, collate_fn=collate_func_gen, shuffle=shuffle,
                        generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    count = sum(len(batch['data']['input_ids']) for batch in loader)
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=96)
    parser.add_argument('--small', action='store_true', help='24 images')
    args = parser.parse_args()
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    import boto3
    from moto.server import ThreadedMotoServer
    from transformers import AutoTokenizer

    from flaky_proxy import FlakyProxy
    from src.datasets.storage.object_tars import ObjectTarMembers
    from src.datasets.text2image.caption_datasets import CaptionDataset
    from src.prepare.datasets import prepare_redcaps5m
    from src.prepare.tar_members import INDEX_MEMBERS
    from src.synthetic.downloads import make_redcaps5m
    from src.synthetic.tokenizer import build_tokenizer

    import logging
    logging.getLogger('werkzeug').setLevel(logging.ERROR)  # moto's server logs every request
    count = 24 if args.small else args.images
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        loose = make_redcaps5m(work / 'loose', n=count, faults=False, shards=4)
        packed = make_redcaps5m(work / 'packed', n=count, faults=False, shards=4)
        prepare_redcaps5m(str(loose.root), num_processes=2)
        prepare_redcaps5m(str(packed.root), num_processes=2, step=INDEX_MEMBERS)
        server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        keys = dict(aws_access_key_id='bench', aws_secret_access_key='bench')
        client = boto3.client('s3', endpoint_url=f'http://{host}:{port}', region_name='us-east-1', **keys)
        client.create_bucket(Bucket='data')
        for root, prefix in ((loose.root / 'raw', 'loose/raw'), (packed.root, 'packed')):
            for path in root.rglob('*'):
                if path.is_file() and '.prepare' not in path.parts and not path.name.startswith('.') \
                        and not (prefix.startswith('loose') and path.suffix == '.tar'):
                    client.put_object(Bucket='data', Key=f'{prefix}/{path.relative_to(root).as_posix()}',
                                      Body=path.read_bytes())
        tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(work / 'tokenizer'))
        template = dict(INSTRUCTION='{input}', GENERATION='{input}', CFG='', IMG_START_TOKEN='<img>')
        common = dict(tokenizer=tokenizer, prompt_template=template, image_size=256, cap_source='re_caption', seed=0)
        with FlakyProxy(f'http://{host}:{port}', throttle_every=0, cut_every=0) as proxy:
            config = work / 'petreloss.conf'
            config.write_text(f'[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = bench\nsecret_key = bench\n'
                              f'host_base = {proxy.url}\n')
            datasets = {
                'local disk': CaptionDataset(str(loose.root / 'redcaps5m_data.json'), image_folder=str(loose.root / 'raw'),
                                             cap_folder=str(loose.root / 'raw'), **common),
                'S3, loose objects': CaptionDataset(str(loose.root / 'redcaps5m_data.json'), ceph_config=str(config),
                                                    ceph_folder='s3://data/loose/raw', **common),
                'S3, tar shards': CaptionDataset('s3://data/packed/redcaps5m_data.json', ceph_config=str(config),
                                                 ceph_folder='s3://data/packed/raw',
                                                 tar_index='s3://data/packed/tar_index.arrow',
                                                 index_cache_dir=str(work / 'cache'), **common),
            }
            print(f'{count} samples (images and caption json), 256 px, DataLoader with 2 workers, batch 8')
            rates = {}
            for name, dataset in datasets.items():
                before = proxy.requests
                rates[name] = samples_per_second(dataset)
                per_sample = (proxy.requests - before) / len(dataset)
                print(f'  {name:18} {rates[name]:8.1f} samples/s   {per_sample:4.2f} requests/sample')
            for name in ('S3, loose objects', 'S3, tar shards'):
                print(f'  {name} / local disk: {rates[name] / rates["local disk"]:.2f}x')

            # A two-source mix (the loose objects and the tar shards), shuffled so that batches mix,
            # with 30 ms before every answer: read a sample at a time (torch's ConcatDataset, as
            # xtuner's reads) against a source's share at a time (src.datasets.mixes).
            from torch.utils.data import ConcatDataset as TorchConcat

            from src.datasets.mixes import ConcatDataset as BatchedConcat
            parts = [datasets['S3, loose objects'], datasets['S3, tar shards']]
            proxy.latency = 0.03
            print('two-source mix (loose objects + tar shards), shuffled, 30 ms before every answer')
            mixed = {}
            for name, concat in (('a sample at a time', TorchConcat), ('a source at a time', BatchedConcat)):
                before = proxy.requests
                mixed[name] = samples_per_second(concat(parts), shuffle=True)
                per_sample = (proxy.requests - before) / sum(map(len, parts))
                print(f'  {name:18} {mixed[name]:8.1f} samples/s   {per_sample:4.2f} requests/sample')
            print(f'  a source at a time / a sample at a time: '
                  f'{mixed["a source at a time"] / mixed["a sample at a time"]:.2f}x')
            proxy.latency = 0.0

            members = ObjectTarMembers('s3://data/packed/tar_index.arrow', str(config), str(work / 'cache'))
            paths = [f'{members.folder}/{p}' for p in members.index.paths() if p.endswith('.jpg')]
            members.read(paths[0])  # the shard size check
            start, ranged_bytes = time.perf_counter(), 0
            for path in paths:
                ranged_bytes += len(members.read(path))
            ranged = (time.perf_counter() - start) / len(paths)
            start, whole_bytes = time.perf_counter(), 0
            for path in paths:
                tar, _, offset, size = members.index.locate(path[len(members.folder) + 1:])
                shard = members.store.read(f'{members.folder}/{tar}')
                whole_bytes += len(shard)
                assert shard[offset:offset + size]
            whole = (time.perf_counter() - start) / len(paths)
            print(f'one image member ({len(paths)} of them, shards of {count // 4} samples):')
            print(f'  ranged GET              {ranged * 1e3:6.1f} ms  {ranged_bytes / len(paths) / 1024:8.1f} KiB moved')
            print(f'  whole shard, then slice {whole * 1e3:6.1f} ms  {whole_bytes / len(paths) / 1024:8.1f} KiB moved '
                  f'({whole_bytes / ranged_bytes:.0f}x the bytes)')
        server.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
