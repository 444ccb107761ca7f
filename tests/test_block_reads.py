"""The block shuffle told the DataLoader's batch size and workers: whole blocks dealt to the workers
(torch gives batch ``k`` to worker ``k % num_workers``), and a worker's first batch of a block
fetching the block's members with one ranged GET; its next batches find their bytes fetched.
Requests counted by a proxy in front of moto's standalone server, through a DataLoader with 2
forked workers."""
from __future__ import annotations

import numpy as np
import pytest

from src.datasets.samplers.block_orders import block_order, rank_share, worker_lanes
from src.datasets.samplers.block_sampler import BlockShuffleSampler
from src.datasets.storage.object_fetch import block_rest


@pytest.mark.parametrize('size, block, batch, workers', [(64, 16, 4, 2), (80, 8, 4, 3), (40, 8, 8, 2), (24, 8, 4, 1)])
def test_each_block_is_read_whole_by_one_worker(size, block, batch, workers):
    share = rank_share(block_order(size, block, seed=5, epoch=0), block, 0, 1)
    order = worker_lanes(share, block, batch, workers)
    assert sorted(order.tolist()) == sorted(share.tolist())  # the same indices
    batches = order.reshape(-1, batch)
    reader_of = {}  # block -> the worker torch hands its batches to
    whole_rounds = len(share) // block // workers * block // batch * workers  # before uneven lanes end
    for k, members in enumerate(batches[:whole_rounds]):
        assert len({int(i) // block for i in members}) == 1  # a batch inside one block
        assert reader_of.setdefault(int(members[0]) // block, k % workers) == k % workers
    if workers == 1:
        assert order.tolist() == share.tolist()


def test_the_rest_of_a_block_is_fetched_with_a_batch_of_neighbours():
    assert list(block_rest([16, 17, 18, 19], 16, 100)) == list(range(20, 32))
    assert list(block_rest([28, 29, 30, 31], 16, 100)) == []  # the block's last batch
    assert list(block_rest([96, 97], 16, 100)) == [98, 99]  # the data's last, shorter block
    assert list(block_rest([16, 18, 19, 20], 16, 100)) == []  # not neighbours: a global shuffle's batch
    assert list(block_rest([14, 15, 16, 17], 16, 100)) == []  # across two blocks
    assert list(block_rest([16, 17], None, 100)) == [] and list(block_rest([], 16, 100)) == []


def test_the_sampler_tells_the_dataset_its_blocks_and_checks_them():
    class Dataset(list):
        read_blocks = None

    dataset = Dataset(range(64))
    sampler = BlockShuffleSampler(dataset, block_size=16, seed=0, batch_size=4, num_workers=2)
    assert dataset.read_blocks == 16 and sorted(sampler) == list(range(64))
    untold = Dataset(range(64))
    BlockShuffleSampler(untold, block_size=16, seed=0)  # not told the workers: a batch fetches itself only
    assert untold.read_blocks is None
    with pytest.raises(ValueError, match=r'block_size \(12\) must be a multiple of batch_size \(8\)'):
        BlockShuffleSampler(dataset, block_size=12, batch_size=8, num_workers=2)


@pytest.mark.slow  # a server process of its own
def test_a_worker_reads_a_block_with_one_get(tmp_path, tokenizer, prompt_template):
    """An epoch through 2 forked workers: a GET a block (each shard here one block), against a GET a
    batch without the workers' lanes."""
    from torch.utils.data import DataLoader

    from flaky_proxy import FlakyProxy
    from moto_server import bucket_with, petrel_file
    from src.datasets.text2image.caption_datasets import CaptionDataset
    from src.prepare.datasets import prepare_redcaps5m
    from src.prepare.tar_members import INDEX_MEMBERS
    from src.synthetic.downloads import MAKERS
    shards, per_shard, batch, workers = 4, 16, 4, 2
    packed = MAKERS['redcaps5m'](tmp_path / 'packed', n=shards * per_shard, faults=False, shards=shards)
    assert prepare_redcaps5m(str(packed.root), num_processes=1, step=INDEX_MEMBERS).exit_code() == 0
    with bucket_with(packed.root) as endpoint:
        with FlakyProxy(endpoint, throttle_every=0, cut_every=0) as proxy:
            config = petrel_file(tmp_path / 'petreloss.conf', proxy.url)

            def epoch(lanes: int | None) -> tuple[int, list[str], list[str]]:
                dataset = CaptionDataset('s3://data/redcaps5m_data.json', tokenizer=tokenizer,
                                         prompt_template=prompt_template, image_size=32, cap_source='re_caption',
                                         seed=0, ceph_folder='s3://data/raw', ceph_config=str(config),
                                         tar_index='s3://data/tar_index.arrow', index_cache_dir=str(tmp_path / 'cache'))
                members = dataset.ceph_files
                shard_of = [members.index.locate(f'raw/{r["image"]}')[0] for r in dataset.data_list]
                assert [len([s for s in shard_of if s == t]) for t in sorted(set(shard_of))] == [per_shard] * shards
                sampler = BlockShuffleSampler(dataset, block_size=per_shard, seed=0, batch_size=batch,
                                              num_workers=lanes)
                expected = [dataset.data_list[i]['image'] for i in sampler]
                loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, timeout=120,
                                    collate_fn=lambda samples: [s['image_file'] for s in samples])
                before = proxy.requests
                read = [name for names in loader for name in names]
                return proxy.requests - before, read, expected

            requests, read, expected = epoch(lanes=workers)
            assert read == expected  # the sampler's order, every sample once
            # A GET a block (one block, one shard here): a worker's first read of a shard checks it from
            # that GET's answer, and a worker's next block is fetched while it reads this one, not again.
            assert requests == shards
            assert requests / len(read) <= 0.0625
            requests, read, expected = epoch(lanes=None)  # not told the workers: a GET a batch
            assert read == expected
            assert requests >= len(read) // batch  # a worker's batches from blocks it had not fetched


def runs_of_each_worker(order, block: int, batch: int, workers: int) -> list[list[list[int]]]:
    """For each worker (torch's batch ``k`` to worker ``k % workers``), its batches grouped into runs:
    batches that follow one another in one block."""
    runs = [[] for _ in range(workers)]
    for k, members in enumerate(np.asarray(order).reshape(-1, batch).tolist()):
        mine = runs[k % workers]
        if mine and mine[-1][-1] + 1 == members[0] and mine[-1][0] // block == members[0] // block:
            mine[-1].extend(members)
        else:
            mine.append(list(members))
    return runs


@pytest.mark.parametrize('size, block, batch, workers', [(64, 16, 4, 2), (80, 8, 4, 3), (40, 8, 8, 2), (24, 8, 4, 1)])
def test_each_run_names_the_block_its_worker_reads_next(size, block, batch, workers):
    class Dataset(list):
        read_blocks = None

    sampler = BlockShuffleSampler(Dataset(range(size)), block_size=block, seed=3, batch_size=batch,
                                  num_workers=workers)
    indices = list(sampler)
    assert [int(i) for i in indices] == sampler._order(0).tolist()  # the same order as without the hints
    told = {int(i): i.ahead for i in indices if i.ahead is not None}  # draws carrying an Ahead's hint
    expected = {}
    for runs in runs_of_each_worker(indices, block, batch, workers):
        for run, after in zip(runs, runs[1:]):
            # its next run's first batch and the rest of that block: what that batch fetches (the whole
            # run; where the epoch's last blocks are shared among the workers, more than its own)
            expected[run[0]] = (*after[:batch], *block_rest(after[:batch], block, size))
    assert told == expected and told  # every run but each worker's last, and nothing else
    plain = BlockShuffleSampler(Dataset(range(size)), block_size=block, seed=3)  # not told the workers
    assert not any(i.ahead for i in plain)


def test_the_hint_travels_with_a_draw_and_not_into_a_part_of_a_mix():
    import pickle

    from src.datasets.samplers.draws import Ahead, Draw
    from src.engine.positions import PositionedSampler, StartPoint
    draw = Draw(Ahead(5, (8, 9)), position=40, seed=1)
    assert draw == 5 and draw.ahead == (8, 9) and pickle.loads(pickle.dumps(draw)).ahead == (8, 9)
    assert pickle.loads(pickle.dumps(Ahead(5, (8, 9)))).ahead == (8, 9)
    assert (draw - 2).ahead is None and (draw + 0).ahead is None  # a ConcatDataset's part: other indices

    class Dataset(list):
        read_blocks = None

    sampler = BlockShuffleSampler(Dataset(range(32)), block_size=8, seed=0, batch_size=4, num_workers=2)
    placed = list(PositionedSampler(sampler, StartPoint(epoch=0, skip=0, position=0), rank=0))
    assert [getattr(i, 'ahead', None) for i in placed] == [getattr(i, 'ahead', None) for i in sampler]


@pytest.mark.slow  # a server process of its own
def test_the_next_block_is_fetched_while_this_one_is_read(tmp_path, tokenizer, prompt_template):
    """In one process: the first batch of a block fetches it, and starts the GET of the block read
    next; that block's reads (a batch, or a sample alone) wait for that GET rather than ask again."""
    import time

    from flaky_proxy import FlakyProxy
    from moto_server import bucket_with, petrel_file
    from src.datasets.text2image.caption_datasets import CaptionDataset
    from src.prepare.datasets import prepare_redcaps5m
    from src.prepare.tar_members import INDEX_MEMBERS
    from src.synthetic.downloads import MAKERS
    shards, per_shard, batch = 4, 8, 4
    packed = MAKERS['redcaps5m'](tmp_path / 'packed', n=shards * per_shard, faults=False, shards=shards)
    assert prepare_redcaps5m(str(packed.root), num_processes=1, step=INDEX_MEMBERS).exit_code() == 0
    with bucket_with(packed.root) as endpoint:
        with FlakyProxy(endpoint, throttle_every=0, cut_every=0) as proxy:
            config = petrel_file(tmp_path / 'petreloss.conf', proxy.url)

            def made() -> CaptionDataset:
                return CaptionDataset('s3://data/redcaps5m_data.json', tokenizer=tokenizer,
                                      prompt_template=prompt_template, image_size=32, cap_source='re_caption', seed=0,
                                      ceph_folder='s3://data/raw', ceph_config=str(config),
                                      tar_index='s3://data/tar_index.arrow', index_cache_dir=str(tmp_path / 'cache'))
            dataset = made()
            sampler = BlockShuffleSampler(dataset, block_size=per_shard, seed=0, batch_size=batch, num_workers=0)
            batches = np.asarray(list(sampler), dtype=object).reshape(-1, batch).tolist()
            before = proxy.requests
            first = dataset.__getitems__(batches[0])
            deadline = time.monotonic() + 60
            while proxy.requests - before < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proxy.requests - before == 2  # this block, and the next one started
            samples = first + [sample for members in batches[1:] for sample in dataset.__getitems__(members)]
            assert [s['image_file'] for s in samples] == [dataset.data_list[int(i)]['image'] for b in batches for i in b]
            assert proxy.requests - before == shards  # a GET a block: none twice

            dataset = made()  # afresh: nothing fetched yet
            before = proxy.requests
            dataset.__getitems__(batches[0])
            alone = int(batches[2][0])  # the next block's first sample, read alone at once: it waits for the GET
            assert dataset[alone]['image_file'] == dataset.data_list[alone]['image']
            assert proxy.requests - before == 2
