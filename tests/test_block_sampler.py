"""BlockShuffleSampler: blocks of neighbouring samples shuffled, every sample once an epoch, ranks
apart; its shuffle quality logged against the global shuffle; from tar shards in a bucket, a batch
of one block is one coalesced ranged GET (counted by a proxy in front of moto's standalone server)."""
from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import BatchSampler

from src.datasets.samplers.block_orders import block_order, rank_share
from src.datasets.samplers.block_sampler import BlockShuffleSampler, shuffle_quality


@pytest.mark.parametrize('size, block', [(40, 8), (37, 8), (5, 8), (64, 1)])
def test_an_epoch_is_every_index_once_in_whole_blocks(size, block):
    order = block_order(size, block, seed=3, epoch=1)
    assert sorted(order.tolist()) == list(range(size))
    starts = [i for i in range(len(order)) if order[i] % block == 0]
    for start in starts:  # each block is a run of neighbours
        run = order[start:start + block]
        assert (np.diff(run) == 1).all() or len(run) == 1 or run[-1] // block != run[0] // block
    assert block_order(size, block, 3, 1).tolist() == order.tolist()  # seeded
    assert size <= block or block_order(size, block, 3, 2).tolist() != order.tolist()  # a new order each epoch
    assert block_order(size, block, 3, 1, shuffle=False).tolist() == list(range(size))


@pytest.mark.parametrize('size, block, world', [(40, 4, 2), (37, 4, 3), (10, 4, 4)])
def test_ranks_share_no_block_and_together_read_every_index(size, block, world):
    order = block_order(size, block, seed=0, epoch=0)
    assert all((order[k:k + block] // block == order[k] // block).all() for k in range(0, len(order), block))
    shares = [rank_share(order, block, rank, world) for rank in range(world)]
    assert len({len(share) for share in shares}) == 1  # the same length on every rank
    assert set(np.concatenate(shares).tolist()) == set(range(size))
    # Before the padding, each block is read by one rank, whole.
    real = [{int(i) // block for k, i in enumerate(share) if (k // block * world + rank) * block + k % block < size}
            for rank, share in enumerate(shares)]
    assert all(not (a & b) for n, a in enumerate(real) for b in real[n + 1:])


def test_the_quality_measure_tells_blocks_from_the_global_shuffle():
    size, batch = 4096, 32
    uniform = shuffle_quality(np.random.default_rng(0).permutation(size), size, batch)
    blocks = shuffle_quality(block_order(size, batch, 0, 0), size, batch)
    assert 0.3 < uniform[0] < 0.37 and uniform[1] > 25  # a global shuffle: ~1/3 apart, a batch from ~28 places
    assert blocks[1] == 1.0 and blocks[0] < uniform[0]  # a block a batch: one place
    assert shuffle_quality(np.arange(size), size, batch) == (1 / size, 1.0)


def test_the_sampler_logs_its_quality_and_is_finite_per_epoch(monkeypatch):
    from src.datasets.samplers import block_sampler
    logged = []
    monkeypatch.setattr(block_sampler, 'print_log', lambda message, **_: logged.append(message))
    sampler = BlockShuffleSampler(list(range(50)), block_size=8, seed=1, batch_size=8)
    assert len(logged) == 1 and 'mean distance between neighbours' in logged[0] and '(global: 0.' in logged[0]
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    assert len(epoch0) == len(sampler) == 56 and sorted(set(epoch0)) == list(range(50))
    assert list(sampler) != epoch0
    with pytest.raises(ValueError, match='block_size must be a positive int'):
        BlockShuffleSampler(list(range(4)), block_size=0)


def test_a_block_of_a_shard_is_one_ranged_get(tmp_path, tokenizer, prompt_template):
    """Batches of one block from tar shards in a bucket: one GET each (after each shard's first
    size check), against one a sample for the global shuffle."""
    from flaky_proxy import FlakyProxy
    from moto_server import bucket_with, petrel_file
    from src.datasets.text2image.caption_datasets import CaptionDataset
    from src.prepare.datasets import prepare_redcaps5m
    from src.prepare.tar_members import INDEX_MEMBERS
    from src.synthetic.downloads import MAKERS
    packed = MAKERS['redcaps5m'](tmp_path / 'packed', n=16, faults=False, shards=4)
    assert prepare_redcaps5m(str(packed.root), num_processes=1, step=INDEX_MEMBERS).exit_code() == 0
    with bucket_with(packed.root) as endpoint:
        with FlakyProxy(endpoint, throttle_every=0, cut_every=0) as proxy:
            config = petrel_file(tmp_path / 'petreloss.conf', proxy.url)
            dataset = CaptionDataset('s3://data/redcaps5m_data.json', tokenizer=tokenizer,
                                     prompt_template=prompt_template, image_size=32, cap_source='re_caption', seed=0,
                                     ceph_folder='s3://data/raw', ceph_config=str(config),
                                     tar_index='s3://data/tar_index.arrow', index_cache_dir=str(tmp_path / 'cache'))
            members = dataset.ceph_files
            shard_of = [members.index.locate(f'raw/{record["image"]}')[0] for record in dataset.data_list]
            dataset.__getitems__(list(range(len(dataset))))  # each shard checked from its first GET's answer

            def requests_per_batch(sampler, batch_size=4) -> tuple[list[int], list[int]]:
                counts, shards = [], []
                for batch in BatchSampler(sampler, batch_size, drop_last=False):
                    before = proxy.requests
                    samples = dataset.__getitems__(batch)
                    assert [s['image_file'] for s in samples] == [dataset.data_list[i]['image'] for i in batch]
                    counts.append(proxy.requests - before)
                    shards.append(len({shard_of[i] for i in batch}))
                return counts, shards

            counts, shards = requests_per_batch(BlockShuffleSampler(dataset, block_size=4, seed=0))
            assert counts == shards and sum(counts) < len(dataset) / 2  # a shard's block: one GET
            scattered = [int(i) for i in np.random.default_rng(0).permutation(len(dataset))]
            counts, _ = requests_per_batch(scattered)
            assert sum(counts) > sum(shards)  # the global shuffle: members far apart, a GET nearly each
