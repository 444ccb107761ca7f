"""Streaming a training set from S3-protocol storage: the project's tar shards, read in place by one
ranged GET a member, against the peer a user would pick, LitData (``litdata.optimize`` rewrites the
samples into chunks; ``StreamingDataset`` fetches each chunk whole into a local cache), over the
same moto server and the same samples, in one run.

Both loaders read through one counting proxy and turn bytes into the same sample: the pixels by the
project's ``image_io.load_pixel_values`` (256 px), the prompt by the same tokenizer. What differs is
the storage layer. Each reads one shuffled epoch through a DataLoader (2 workers, batch 8); the
project twice, with the global shuffle and with the block shuffle (``BlockShuffleSampler``: blocks
of ``--block`` neighbouring members of a shard, each dealt whole to one worker, whose first batch of
it fetches the block with one ranged GET, and starts the GET of the block that worker reads next):

- preparation: indexing the tars where they lie against rewriting them into chunks;
- requests and bytes moved per sample (the proxy's counts: index files included);
- worker CPU per sample (the workers' user + system time, ``RUSAGE_CHILDREN`` once they exit);
- construction, and time to the first batch with an empty cache;
- samples per second over the epoch;
- resuming in the middle of the epoch as a restarted job on a fresh machine would (new objects,
  an empty cache): time to its first batch, and whether that batch is the one the uninterrupted
  epoch gave there.

moto is pure Python: its time per request is printed first, and bounds the throughput of
whichever loader asks more often. Requests, bytes and worker CPU do not depend on it. Each
comparison runs twice: as moto answers, and with the proxy waiting 30 ms before each answer, as a
real object store's first byte takes (where a loader that waits on each request falls behind).

    PYTHONPATH=. .venv/bin/python bench/bench_litdata.py [--images 512 --shards 8 | --small] [--block 32]
        [--rounds 3] [--latency-ms 0 30]

Needs the ``bench`` and ``s3`` extras (litdata, boto3) and moto's server (``dev``).
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import resource
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests'))  # the counting proxy of the tests
# The workers fork after the tokenizer has run: it runs single-threaded there (and says nothing).
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from src.datasets.collate_functions import collate_func_gen  # noqa: E402
from src.datasets.sample.image_io import load_pixel_values  # noqa: E402

BATCH, WORKERS, IMAGE_SIZE = 8, 2, 256
KEYS = dict(aws_access_key_id='bench', aws_secret_access_key='bench')


def litdata_sample(item: tuple[str, bytes, str]) -> dict:
    """``optimize``'s function: one sample as LitData stores it (the encoded image as it came)."""
    name, image, caption = item
    return {'name': name, 'image': image, 'caption': caption}


def litdata_dataset(url: str, cache: Path, endpoint: str, tokenizer):
    """A StreamingDataset whose samples are the project's: pixels and prompt ids."""
    from litdata import StreamingDataset
    from litdata.streaming import downloader

    # LitData fetches chunks with obstore, which refuses a plain-http endpoint (moto's) unless its
    # client options allow it; LitData has no setting for that (real stores are https).
    downloader._OBSTORE_CLIENT_OPTIONS = {**downloader._OBSTORE_CLIENT_OPTIONS, 'allow_http': 'true'}

    class Samples(StreamingDataset):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            pixels = load_pixel_values(item['image'], item['name'], IMAGE_SIZE, random.Random(item['name']))
            ids = torch.tensor(tokenizer.encode(item['caption'] + '<img>'), dtype=torch.long)
            return {'pixel_values': pixels, 'input_ids': ids}

    # Workers fork (as the project's do): the class and the tokenizer are inherited, not pickled.
    return Samples(url, cache_dir=str(cache), shuffle=True, seed=0,
                   storage_options={'endpoint_url': endpoint, 'region_name': 'us-east-1', **KEYS})


def project_dataset(config: Path, cache: Path, tokenizer):
    from src.datasets.text2image.caption_datasets import CaptionDataset
    template = dict(INSTRUCTION='{input}', GENERATION='{input}', CFG='', IMG_START_TOKEN='<img>')
    return CaptionDataset('s3://data/packed/redcaps5m_data.json', ceph_config=str(config),
                          ceph_folder='s3://data/packed/raw', tar_index='s3://data/packed/tar_index.arrow',
                          index_cache_dir=str(cache), tokenizer=tokenizer, prompt_template=template,
                          image_size=IMAGE_SIZE, cap_source='re_caption', seed=0)


def project_loader(dataset, skip: int = 0, blocks: int = 0):
    """The project's loader placed ``skip`` samples into epoch 0 as ResumableTrainLoop places it:
    the global shuffle, or with ``blocks`` the block shuffle with blocks of that many neighbours,
    dealt whole to the workers (a GET a block)."""
    from mmengine.dataset import DefaultSampler

    from src.datasets.samplers.block_sampler import BlockShuffleSampler
    from src.engine.positions import PositionedSampler, StartPoint
    order = (BlockShuffleSampler(dataset, block_size=blocks, seed=0, batch_size=BATCH, num_workers=WORKERS) if blocks
             else DefaultSampler(dataset, shuffle=True, seed=0))
    sampler = PositionedSampler(order, StartPoint(epoch=0, skip=skip, position=skip), rank=0)
    return DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=WORKERS,
                      collate_fn=collate_func_gen, persistent_workers=False)


def litdata_loader(dataset, state: dict | None = None):
    from litdata import StreamingDataLoader
    loader = StreamingDataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, collate_fn=collate_func_gen)
    if state is not None:
        loader.load_state_dict(state)
    return loader


def digest(batch) -> tuple:
    data = batch['data']
    return float(data['pixel_values'].double().sum()), int(data['input_ids'].sum())


class Counter:
    """What the proxy and the workers did between ``start`` and ``stop``."""

    def __init__(self, proxy):
        self.proxy = proxy

    def __enter__(self):
        self.requests, self.bytes = self.proxy.requests, self.proxy.bytes_sent
        self.cpu, self.main_cpu = self._children_cpu(), self._own_cpu()
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)  # the workers have exited; their time is in RUSAGE_CHILDREN now
        self.requests = self.proxy.requests - self.requests
        self.bytes = self.proxy.bytes_sent - self.bytes
        self.cpu = self._children_cpu() - self.cpu
        self.main_cpu = self._own_cpu() - self.main_cpu

    @staticmethod
    def _own_cpu() -> float:
        """This process's CPU: the loop taking the batches, and the proxy and moto's server (threads here)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    @staticmethod
    def _children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime


def epoch(name: str, make_dataset, make_loader, proxy, count: int, stop_after: int | None = None) -> dict:
    """One epoch from an empty cache (or ``stop_after`` batches, keeping the loader's state)."""
    with Counter(proxy) as counter:
        start = time.perf_counter()
        dataset = make_dataset()
        built = time.perf_counter()
        loader = make_loader(dataset)
        digests, first, state = [], None, None
        for batch in loader:
            first = first or time.perf_counter()
            digests.append(digest(batch))
            if stop_after is not None and len(digests) == stop_after:
                state = loader.state_dict() if hasattr(loader, 'state_dict') else None
        end = time.perf_counter()
        del loader, dataset
    return dict(name=name, construct=built - start, first=first - built, rate=count / (end - built),
                requests=counter.requests / count, bytes=counter.bytes / count, cpu=counter.cpu / count,
                main_cpu=counter.main_cpu / count,
                digests=digests, state=state)


def resume(make_dataset, make_loader, proxy, expected: tuple) -> dict:
    """A restarted job: a fresh dataset and a loader placed at the saved position. Seconds to the
    construction and to the first batch, whether that batch is the one expected, and the requests
    and bytes it took."""
    requests, moved = proxy.requests, proxy.bytes_sent
    start = time.perf_counter()
    dataset = make_dataset()
    built = time.perf_counter()
    loader = make_loader(dataset)
    batch = next(iter(loader))
    first = time.perf_counter()
    result = dict(construct=built - start, first=first - built, same=digest(batch) == expected,
                  requests=proxy.requests - requests, bytes=proxy.bytes_sent - moved)
    del loader
    return result


def medians(runs: list[dict]) -> dict:
    """One loader's epochs in one row: the median of each number, the first run's resume."""
    row = dict(runs[0])
    for key in ('construct', 'first', 'rate', 'requests', 'bytes', 'cpu', 'main_cpu'):
        row[key] = statistics.median(run[key] for run in runs)
    return row


def report(results: list[dict], latency: float, middle: int, count: int, rounds: int = 1) -> None:
    each = f'the median of {rounds} epochs, ' if rounds > 1 else ''
    print(f'\nwith {latency:g} ms before each answer' + (' (a real store\'s time to first byte)' if latency else '')
          + f':\none epoch from an empty cache ({each}per sample: requests, KiB moved, worker CPU; index files '
          'included):')
    print(f'  {"":20} {"requests":>9} {"KiB moved":>10} {"worker CPU":>11} {"main CPU":>11} {"construct":>10} '
          f'{"1st batch":>10} {"samples/s":>10}')
    for r in results:
        print(f'  {r["name"]:20} {r["requests"]:9.2f} {r["bytes"] / 1024:10.1f} {r["cpu"] * 1e3:8.2f} ms '
              f'{r["main_cpu"] * 1e3:8.2f} ms {r["construct"]:9.2f}s {r["first"]:9.2f}s {r["rate"]:10.1f}')
    print(f'resumed at batch {middle} of {-(-count // BATCH)} by a restarted job (its cache empty; requests and '
          'KiB until its first batch):')
    print(f'  {"":20} {"requests":>9} {"KiB moved":>10} {"construct":>10} {"1st batch":>10} {"same batch":>11}')
    for r in results:
        s = r['resume']
        print(f'  {r["name"]:20} {s["requests"]:9d} {s["bytes"] / 1024:10.1f} {s["construct"]:9.2f}s '
              f'{s["first"]:9.2f}s {str(s["same"]):>11}')
    theirs = results[-1]
    resumed = lambda r: r['resume']  # noqa: E731
    for ours in (results[:-1] if theirs['name'] == 'LitData' else []):
        ratio = lambda key, of=lambda r: r: of(theirs)[key] / of(ours)[key]  # noqa: E731
        print(f'LitData / {ours["name"]}: {ratio("requests"):.2f}x the requests, {ratio("bytes"):.2f}x the bytes, '
              f'{ratio("cpu"):.2f}x the worker CPU, {ratio("first"):.2f}x the time to the first batch, '
              f'{ratio("rate"):.2f}x the samples/s; on resuming {ratio("bytes", resumed):.2f}x the bytes, '
              f'{ratio("first", resumed):.2f}x the time to the first batch')


def moto_get_ms(client) -> float:
    """moto's own time for a GET of a small object, straight (no proxy)."""
    client.put_object(Bucket='data', Key='probe', Body=b'x' * 65536)
    client.get_object(Bucket='data', Key='probe')['Body'].read()
    start = time.perf_counter()
    for _ in range(50):
        client.get_object(Bucket='data', Key='probe')['Body'].read()
    return (time.perf_counter() - start) / 50 * 1e3


def tar_samples(raw: Path) -> list[tuple[str, bytes, str]]:
    """(image member, its bytes, its caption) for every image in the download's tars, in order."""
    import json
    samples = []
    for shard in sorted(raw.glob('*.tar')):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in members.items():
            if not name.endswith('.json'):
                samples.append((name, data, json.loads(members[name.rsplit('.', 1)[0] + '.json'])['re_caption']))
    return samples


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob('*') if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=512)
    parser.add_argument('--shards', type=int, default=8)
    parser.add_argument('--small', action='store_true', help='64 images in 4 shards')
    parser.add_argument('--block', type=int, default=32, help="the block shuffle's block (a multiple of the batch, 8)")
    parser.add_argument('--rounds', type=int, default=1,
                        help='epochs of each loader, in turn (the medians are printed; the resume is the first\'s)')
    parser.add_argument('--latency-ms', type=float, nargs='+', default=[0, 30],
                        help="the proxy's wait before each answer, a run each (default: none, and 30 ms)")
    args = parser.parse_args()
    count, shards = (64, 4) if args.small else (args.images, args.shards)
    torch.set_num_threads(1)
    logging.getLogger('werkzeug').setLevel(logging.ERROR)  # moto's server logs every request
    logging.getLogger('litdata').setLevel(logging.WARNING)

    try:
        from litdata import optimize
    except ImportError:
        optimize = None
        print("litdata is not installed (the peer this bench measures): pip install -e '.[bench]'; "
              "the project's rows only")
    import boto3
    from moto.server import ThreadedMotoServer
    from transformers import AutoTokenizer

    from flaky_proxy import FlakyProxy
    from src.prepare.datasets import prepare_redcaps5m
    from src.prepare.tar_members import INDEX_MEMBERS
    from src.synthetic.downloads import make_redcaps5m
    from src.synthetic.tokenizer import build_tokenizer

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        packed = make_redcaps5m(work / 'packed', n=count, faults=False, shards=shards)
        tars, before = folder_bytes(packed.root / 'raw'), folder_bytes(packed.root)
        start = time.perf_counter()
        prepare_redcaps5m(str(packed.root), num_processes=2, step=INDEX_MEMBERS)
        indexed = time.perf_counter() - start
        index_bytes = folder_bytes(packed.root) - before
        samples = tar_samples(packed.root / 'raw')
        start = time.perf_counter()
        if optimize is not None:
            optimize(fn=litdata_sample, inputs=samples, output_dir=str(work / 'chunks'),
                     chunk_size=count // shards, num_workers=2, verbose=False,
                     start_method='fork')  # its default, spawn, would become every later DataLoader's
        else:
            (work / 'chunks').mkdir()
        optimized = time.perf_counter() - start

        server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        client = boto3.client('s3', endpoint_url=f'http://{host}:{port}', region_name='us-east-1', **KEYS)
        client.create_bucket(Bucket='data')
        for root, prefix in ((packed.root, 'packed'), (work / 'chunks', 'litdata')):
            for path in root.rglob('*'):
                if path.is_file() and '.prepare' not in path.parts and not path.name.startswith('.'):
                    client.put_object(Bucket='data', Key=f'{prefix}/{path.relative_to(root).as_posix()}',
                                      Body=path.read_bytes())
        moto_ms = moto_get_ms(client)
        tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(work / 'tokenizer'))

        print(f'{count} samples (redcaps5m: JPEG/PNG/WebP of 160-640 px and a caption json each, '
              f'{tars / count / 1024:.1f} KiB a sample) in {shards} tars; {IMAGE_SIZE} px, '
              f'DataLoader with {WORKERS} workers, batch {BATCH}, shuffled')
        print(f"moto's own GET of a 64 KiB object: {moto_ms:.1f} ms")
        print('preparation:')
        print(f'  project: tar member index          {indexed:6.2f} s   '
              f'{index_bytes:>10,} B written beside the tars')
        print(f'  LitData: optimize (rewrites all)   {optimized:6.2f} s   '
              f'{folder_bytes(work / "chunks"):>10,} B written')

        with FlakyProxy(f'http://{host}:{port}', throttle_every=0, cut_every=0) as proxy:
            config = work / 'petreloss.conf'
            config.write_text(f'[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = bench\nsecret_key = bench\n'
                              f'host_base = {proxy.url}\n')
            middle = count // BATCH // 2
            ours = {'dataset': lambda cache: project_dataset(config, cache, tokenizer),
                    'loader': project_loader,
                    'resume': lambda dataset: project_loader(dataset, skip=middle * BATCH)}
            blocks = {'dataset': ours['dataset'], 'loader': lambda dataset: project_loader(dataset, blocks=args.block),
                      'resume': lambda dataset: project_loader(dataset, skip=middle * BATCH, blocks=args.block)}
            theirs = {'dataset': lambda cache: litdata_dataset('s3://data/litdata', cache, proxy.url, tokenizer),
                      'loader': litdata_loader}
            loaders = [('project, global', ours), (f'project, blocks {args.block}', blocks)]
            loaders += [('LitData', theirs)] if optimize is not None else []
            for latency in args.latency_ms:
                proxy.latency = latency / 1000
                rounds = {name: [] for name, _ in loaders}
                for number in range(args.rounds):  # the loaders in turn, round after round: drift hits all
                    for name, loader in loaders:
                        cache = Path(tempfile.mkdtemp(dir=work))
                        result = epoch(name, lambda: loader['dataset'](cache), loader['loader'], proxy, count,
                                       stop_after=middle)
                        # The restarted job's cache: the same path (LitData's state names it), emptied.
                        shutil.rmtree(cache)
                        if number == 0:
                            resumed = loader.get('resume') or (lambda dataset: litdata_loader(dataset, result['state']))
                            result['resume'] = resume(lambda: loader['dataset'](cache), resumed, proxy,
                                                      result['digests'][middle])
                        shutil.rmtree(cache, ignore_errors=True)
                        rounds[name].append(result)
                report([medians(runs) for runs in rounds.values()], latency, middle, count, args.rounds)
        server.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
