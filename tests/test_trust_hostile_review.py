"""A hostile review of three changes: the one deadline of object-store requests (a trickled index
download, a body that never ends), a checkpoint's data position that passes its checks yet drives
the samplers into a hang or a raw traceback, and a block shuffle resumed under other deals. Real
servers on 127.0.0.1 (moto's, behind the trickling proxy of ``test_trust_deadlines``; a store of a
few lines), no mocks of boto3 or obstore."""
from __future__ import annotations

import resource
from http.server import BaseHTTPRequestHandler

import pytest
import torch

from flaky_proxy import LocalServer
from test_trust_deadlines import NO_HANG, SECRET, QuietServer, store, within  # noqa: F401 (store: a fixture)

from src.datasets.errors import SampleError
from src.datasets.storage import deadlines


# ---- 1. object stores -------------------------------------------------------------------------

@pytest.mark.slow
def test_an_index_download_that_trickles_ends_at_the_deadline(store, tmp_path, monkeypatch):
    """fetch_to_cache's download had only botocore's idle read timeout: an index whose body came a
    byte every 0.2 s held the start of every rank for ever (a tar index of megabytes: weeks)."""
    from src.datasets.storage.object_config import StorageConfigError
    from src.datasets.storage.object_store import fetch_to_cache
    proxy, config = store
    monkeypatch.setattr(deadlines, 'REQUEST_DEADLINE', 1.0)
    proxy.slow_keys.add('packed/tar_index.arrow')

    def fetch():
        with pytest.raises(StorageConfigError, match=r's3://data/packed/tar_index.arrow: cannot be fetched: .*did not '
                                                     r'all come within .*REQUEST_DEADLINE = 1 s') as caught:
            fetch_to_cache('s3://data/packed/tar_index.arrow', config, tmp_path / 'cache')
        return str(caught.value)
    message = within(NO_HANG, fetch)
    assert SECRET not in message and proxy.trickled >= 1
    assert not [path for path in (tmp_path / 'cache').rglob('*') if path.name == 'tar_index.arrow']  # no copy kept
    proxy.slow_keys.clear()
    copy = fetch_to_cache('s3://data/packed/tar_index.arrow', config, tmp_path / 'cache')
    from src.datasets.storage.tar_index import TarMemberIndex
    assert TarMemberIndex(copy).locate  # the same fetch goes on once the store sends


class EndlessBody(LocalServer):
    """A store whose every GET says the length asked (a ranged GET's ``Content-Range`` too) and is
    also chunked, then sends chunks of a MiB as fast as the client takes them, for ever."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(206 if self.headers.get('Range') else 200)
                if self.headers.get('Range'):
                    self.send_header('Content-Range', 'bytes 0-99/1000')
                self.send_header('Content-Length', '100')
                self.send_header('Transfer-Encoding', 'chunked')
                self.send_header('ETag', '"e"')
                self.send_header('Last-Modified', 'Mon, 07 Dec 2026 17:00:00 GMT')
                self.end_headers()
                chunk = b'%x\r\n' % (1 << 20) + b'x' * (1 << 20) + b'\r\n'
                try:
                    while True:
                        self.wfile.write(chunk)
                except OSError:
                    pass

        super().__init__(Handler, QuietServer)


class ReadInWorker(torch.utils.data.Dataset):
    """One read of ``folder`` in a DataLoader worker (obstore's client): what it raised, and how far
    the worker's memory grew (MiB)."""

    def __init__(self, folder, ranged: bool):
        self.folder, self.ranged = folder, ranged

    def __len__(self):
        return 1

    def __getitem__(self, _):
        from src.datasets.storage.obstore_client import worker_store
        assert worker_store(self.folder.cluster, self.folder.bucket) is not None  # obstore reads here
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            self.folder.read('s3://b/x', *((0, 100) if self.ranged else ()))
            error = None
        except SampleError as e:
            error = (e.reason, str(e))
        return error, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024


@pytest.mark.slow
@pytest.mark.parametrize('ranged', [True, False])
def test_a_body_longer_than_its_length_is_not_gathered_in_memory_by_obstore(tmp_path, monkeypatch, ranged):
    """obstore gathered a body whatever its length said (a chunked one goes on past it) until the
    deadline: gigabytes a second from a hostile store, a worker killed for memory. The body is read
    up to what was asked: a counted too-large."""
    pytest.importorskip('obstore')
    from src.datasets.storage.object_store import ObjectFolder
    monkeypatch.setattr(deadlines, 'REQUEST_DEADLINE', 3.0)
    with EndlessBody() as server:
        config = tmp_path / 'petreloss.conf'
        config.write_text(f'[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = a\nsecret_key = {SECRET}\n'
                          f'host_base = {server.url}\n')
        loader = torch.utils.data.DataLoader(ReadInWorker(ObjectFolder('s3://b', str(config)), ranged), num_workers=1,
                                             multiprocessing_context='fork', collate_fn=lambda batch: batch[0],
                                             timeout=NO_HANG)
        error, grown = next(iter(loader))
    assert error is not None and error[0] == 'too-large', error
    assert 's3://b/x' in error[1] and SECRET not in error[1]
    assert grown < 256, f'the worker grew by {grown} MiB'


# ---- 2. a checkpoint's data position that passes its checks -------------------------------------

def _loader_facts(sampler, dataset, batch_size: int):
    from torch.utils.data import DataLoader

    from src.engine.data_facts import facts_of
    return facts_of(DataLoader(dataset, batch_size=batch_size, sampler=sampler), (0, 1))


def _mix():
    from torch.utils.data import ConcatDataset

    from src.datasets.samplers.multi_source_sampler import FixedBatchMultiSourceSampler
    from epoch_run import BucketedRecords
    dataset = ConcatDataset([BucketedRecords(), list(range(10))])
    sampler = FixedBatchMultiSourceSampler([2, 1], dataset, batch_size=2, seed=0)
    return sampler, dataset, 2


def _bucketed():
    from src.datasets.samplers.bucket_sampler import BucketSampler
    from epoch_run import BucketedRecords
    dataset = BucketedRecords()
    return BucketSampler(dataset, batch_size=4, seed=0), dataset, 4


def _placed_and_read(make, iteration: int, changes: dict, keep=()):
    """``make()``'s sampler placed at ``iteration`` from its own facts with ``changes`` (its first
    batches read): what a resume from a hostile position does before training goes on."""
    from src.engine.data_facts import DataFacts
    from src.engine.positions import place_sampler
    sampler, dataset, batch_size = make()
    now = _loader_facts(sampler, dataset, batch_size)
    saved = DataFacts.from_dict({key: value for key, value in (now.to_dict() | changes).items() if key not in keep})
    placed, _, _ = place_sampler(sampler, iteration, saved, now, 0)
    return [int(index) for index, _ in zip(placed, range(8))]


@pytest.mark.parametrize('make, iteration, changes, fact', [
    (_mix, 3, {'origin': [0, [5]]}, 'origin'),  # one source's count for two sources: an IndexError
    (_mix, 10, {'history': [[0, 4, [0, 0]], [3, 2, [2]]], 'batch_size': 1}, 'history'),  # likewise
    (_mix, 10, {'history': [[0, 4], [3, 2]]}, 'history'),  # a mix's history without its sources' counts
    (_mix, 10, {'history': [[0, 4, [0, 0]], [3, 2, [2 ** 47, 2 ** 47]]]}, 'history'),  # more batches than made
    (_mix, 10, {'origin': [4, [2 ** 40, 0]]}, 'origin'),  # likewise: a negative place in an epoch
])
def test_a_mix_position_whose_counts_do_not_add_up_is_refused_naming_the_fact(make, iteration, changes, fact):
    """Each field was of its kind and within its bounds, and the mix indexed its sources' lists with
    them: an IndexError deep in the sampler, where a checkpoint's error names the fact."""
    from src.engine.data_facts import ResumeError
    with pytest.raises(ResumeError, match=rf"malformed '{fact}'"):
        _placed_and_read(make, iteration, changes)


@pytest.mark.parametrize('make, iteration, changes, fact', [
    (_bucketed, 3, {'history': [[0, 4], [10, 2]], 'batch_size': 2}, 'history'),  # a change after the iteration
    (_mix, 3, {'origin': [10, [5, 5]]}, 'origin'),
    (_bucketed, 10 ** 30, {}, 'iteration'),  # mmengine's meta['iter'] is the checkpoint's too: an OverflowError
    (_bucketed, 3.5, {}, 'iteration'),  # a TypeError
])
def test_a_position_ahead_of_its_iteration_is_refused(make, iteration, changes, fact):
    """A change of the global batch at batch 10 of a checkpoint made after 3: a negative skip, read
    as another place of the stream (or islice's ValueError for mmengine's samplers)."""
    from src.engine.data_facts import ResumeError
    with pytest.raises(ResumeError, match=rf"malformed '{fact}'"):
        _placed_and_read(make, iteration, changes)


def test_a_position_without_its_facts_is_refused_not_a_type_error():
    from src.engine.data_facts import DataFacts, ResumeError
    with pytest.raises(ResumeError, match=r"the checkpoint's data position lacks 'batch_size', 'world_size'"):
        DataFacts.from_dict({'seed': 0})


@pytest.mark.parametrize('seed', [-1, 2 ** 64])
def test_a_seed_no_generator_takes_is_refused(seed):
    """restore_seed gave a block shuffle -1 (numpy: 'expected non-negative integer') and mmengine's
    DefaultSampler 2^64 (torch: 'Overflow when unpacking long long'), both at the first epoch."""
    from src.engine.data_facts import DataFacts, ResumeError
    from src.datasets.samplers.block_sampler import BlockShuffleSampler
    sampler = BlockShuffleSampler(list(range(100)), block_size=8, seed=0, batch_size=4)
    now = _loader_facts(sampler, list(range(100)), 4)
    with pytest.raises(ResumeError, match="malformed 'seed'"):
        DataFacts.from_dict(now.to_dict() | {'seed': seed})


def test_a_deal_changed_far_into_a_run_is_replayed_in_bounded_time():
    """Passes replayed each whole epoch before a deal's change, one by one: a change at batch 2^47
    (within the bounds of a count) was 2^44 epochs of 8 batches, never done."""
    from src.datasets.samplers.block_sampler import BlockShuffleSampler

    def replay():
        sampler = BlockShuffleSampler(list(range(100)), block_size=8, seed=0, batch_size=8)
        far = 2 ** 47 + 3
        sampler.set_deals(far, [[0, 1, 4, 1, 8, 4]], 8)  # batches of 4 until now: batches of 8 from here
        sampler.set_epoch(sampler.epoch_of_batch(far)[0])
        return sampler.epoch_of_batch(far), len(list(sampler))
    (epoch, before), count = within(10, replay)
    assert (epoch, before) == divmod(2 ** 47 + 3, 26)  # epochs of 26 batches of 4 (100 records in blocks of 8)
    assert count == -(-(100 - 4 * before) // 8) * 8  # the rest of the epoch, in whole blocks


def test_an_endless_stream_replayed_past_any_run_is_refused():
    """InfiniteSampler skips by drawing: a checkpoint's iteration of 2^40 (mmengine's meta['iter'])
    was 2^42 draws before the first batch, a hung start."""
    from mmengine.dataset import InfiniteSampler

    from src.engine.data_facts import ResumeError
    dataset = list(range(22))

    def make():
        return InfiniteSampler(dataset, seed=0), dataset, 4

    def first_batch():
        try:
            return _placed_and_read(make, 2 ** 40, {})
        except ResumeError as e:
            return e
    error = within(10, first_batch)
    assert isinstance(error, ResumeError) and 'draws' in str(error), error
    assert len(_placed_and_read(make, 1000, {})) == 8  # a real run's position goes on


def test_deals_of_many_ranks_changed_inside_epochs_are_replayed_in_bounded_time():
    """What a deal read of an epoch before the next took over was marked rank by rank, each rank's
    share made from the whole order: 65536 ranks (within the bounds) of 200,000 records, 12 s a
    change, and a checkpoint may hold 4096 changes."""
    from src.datasets.samplers.block_orders import Deal, Passes, block_order, dealt
    many, one = [65536, 1, 1, 1, 1], [1, 4, 1, 8, 4]
    deals = [[step, *(many if step % 2 == 0 else one)] for step in range(40)]
    passes = within(20, lambda: Passes(200_000, 0, True, deals))
    read = passes.parts[1].read  # what the first deal's first step read: a record a rank
    assert read.sum() == 65536
    order = block_order(200_000, 1, 0, 0)
    assert all(read[dealt(order, Deal(*many), rank)[0]] for rank in (0, 1, 4097, 65535))  # as dealt() deals them


def test_a_checkpoint_whose_iteration_is_no_count_ends_with_the_error(tmp_path):
    """mmengine's Runner restores the loop's iteration from the checkpoint's meta['iter'] unchecked:
    10^30 reached a sampler as an OverflowError."""
    from epoch_run import train

    from src.engine import ResumableTrainLoop
    from src.engine.data_facts import ResumeError
    train(tmp_path / 'run', dict(type=ResumableTrainLoop, max_iters=3), 4)
    checkpoint = torch.load(tmp_path / 'run' / 'iter_3.pth', weights_only=True)
    checkpoint['meta']['iter'] = 10 ** 30
    torch.save(checkpoint, tmp_path / 'hostile.pth')
    with pytest.raises(ResumeError, match="malformed 'iteration'"):
        train(tmp_path / 'resumed', dict(type=ResumableTrainLoop, max_iters=6), 4, resume_from=str(tmp_path / 'hostile.pth'))
