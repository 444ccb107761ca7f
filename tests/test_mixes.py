"""Mixes read as batches (src.datasets.mixes): a ConcatDataset's batch split by source, each share
read through its source's ``__getitems__``; the same samples as one by one, one prefetch per
source per batch from a bucket (requests counted by a proxy in front of moto's standalone server)."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import ConcatDataset as MMEngineConcat
from torch.utils.data import ConcatDataset as TorchConcat
from torch.utils.data import DataLoader

from src.datasets.collate_functions import collate_func_gen
from src.datasets.mixes import BatchedMix, ConcatDataset, MMEngineConcatDataset, batched_mixes, source_shares
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.engine.positions import Draw
from src.synthetic.images import encode_image

BATCH = [0, 7, 1, 8, 9, 2, 3, 10]  # sources interleaved: 0-5 the first, 6-11 the second


def write_source(folder: Path, n: int = 6, seed: int = 0) -> str:
    folder.mkdir(parents=True)
    records = []
    for i in range(n):
        (folder / f'{i}.jpg').write_bytes(encode_image(120 + 10 * i, 100, seed=seed + i))
        records.append({'image': f'{i}.jpg', 'caption': f'picture {i} of source {seed}', 'width': 120 + 10 * i,
                        'height': 100})
    (folder / 'data.json').write_text(json.dumps(records))
    return str(folder / 'data.json')


@pytest.fixture
def sources(tmp_path, tokenizer, prompt_template):
    paths = [write_source(tmp_path / name, seed=seed) for name, seed in (('a', 0), ('b', 100))]

    def build():
        return [CaptionDataset(path, image_folder=str(Path(path).parent), tokenizer=tokenizer,
                               prompt_template=prompt_template, image_size=32, unconditional=0.3, seed=0)
                for path in paths]
    return build


def same(ours: list, theirs: list) -> bool:
    return len(ours) == len(theirs) and all(
        torch.equal(a['pixel_values'], b['pixel_values']) and torch.equal(a['input_ids'], b['input_ids'])
        and a['image_file'] == b['image_file'] for a, b in zip(ours, theirs))


def test_source_shares_keep_the_batch_order_and_the_index_type():
    shares = source_shares([6, 12], [Draw(7, 3, 0, 0), 0, -1, 8])
    assert [(place, int(idx)) for place, idx in shares[1]] == [(0, 1), (2, 5), (3, 2)]
    assert shares[0] == [(1, 0)] and shares[1][0][1].position == 3  # a Draw stays a Draw
    with pytest.raises(IndexError, match='out of range'):
        source_shares([6, 12], [12])
    from src.datasets.samplers.draws import Ahead
    hinted = source_shares([6, 12], [Ahead(1, (8, 9)), Draw(Ahead(2, (8, 9)), 5, 0), Draw(Ahead(7, (0, 1)), 6, 0)])
    # a block shuffle's hint names indices of the mix, not of a source: no source gets it, even the first
    assert [getattr(idx, 'ahead', None) for share in hinted.values() for _, idx in share] == [None] * 3
    assert hinted[0][1][1].position == 5


def test_a_mixed_batch_is_each_sources_batch_and_equals_reading_one_by_one(sources):
    one_by_one = TorchConcat(sources())
    expected = [one_by_one[idx] for idx in BATCH]
    mix = ConcatDataset(sources())
    calls = []
    for part in mix.datasets:
        part.__getitems__ = functools.partial(lambda f, indices: calls.append(list(indices)) or f(indices),
                                              part.__getitems__)
    assert same(mix.__getitems__(BATCH), expected)
    assert calls == [[0, 1, 2, 3], [1, 2, 3, 4]]  # one call a source, its samples in the batch's order
    # A plain DataLoader asks for the batch through __getitems__ and collates it as before.
    loader = DataLoader(ConcatDataset(sources()), batch_sampler=[BATCH], collate_fn=collate_func_gen)
    batch = next(iter(loader))['data']
    assert torch.equal(batch['pixel_values'], torch.stack([s['pixel_values'] for s in expected]))


def test_draws_through_a_mix_give_the_samples_they_give_alone(sources):
    draws = [Draw(idx, position, 7, 0) for position, idx in enumerate(BATCH)]
    alone = TorchConcat(sources())
    assert same(ConcatDataset(sources()).__getitems__(draws), [alone[draw] for draw in draws])


def test_mmengine_concat_reads_by_source_too(sources):
    from mmengine.dataset import BaseDataset

    class Numbers(BaseDataset):  # mmengine's ConcatDataset takes its own datasets only
        def __init__(self, values):
            self.values = values
            super().__init__(lazy_init=True)

        def load_data_list(self):
            return [dict(value=v) for v in self.values]

        def __getitem__(self, idx):
            return self.values[idx]

        def __getitems__(self, indices):
            self.asked = list(indices)
            return [self.values[i] for i in indices]

    mix = MMEngineConcatDataset([Numbers([0, 1, 2]), Numbers([10, 11])], lazy_init=True)
    assert mix.__getitems__([3, 0, 4, 2]) == [10, 0, 11, 2]
    assert [part.asked for part in mix.datasets] == [[0, 2], [0, 1]]


def test_configs_get_the_batched_counterpart_of_each_concat():
    from xtuner.dataset import ConcatDataset as XtunerConcat
    cfg = Config(dict(train_dataloader=dict(dataset=dict(type=XtunerConcat, datasets=[
        dict(type=MMEngineConcat, datasets=[]), dict(type='ConcatDataset', datasets=[]),
        dict(type=TorchConcat, datasets=[]), dict(type=CaptionDataset, data_path='x')]))))
    batched_mixes(cfg.train_dataloader)
    root = cfg.train_dataloader.dataset
    assert root.type is ConcatDataset
    assert [part.type for part in root.datasets] == [MMEngineConcatDataset, MMEngineConcatDataset, ConcatDataset,
                                                     CaptionDataset]
    assert batched_mixes(dict(type=ConcatDataset))['type'] is ConcatDataset  # the project's own stays
    assert issubclass(MMEngineConcatDataset, MMEngineConcat) and issubclass(ConcatDataset, TorchConcat)


def test_the_mix_config_builds_a_batched_mix():
    """What load_config does to every dataset root (its data need not be here for that)."""
    from config_helpers import CONFIGS
    cfg = Config.fromfile(str(CONFIGS / 'mix.py'))
    batched_mixes(cfg.train_dataloader.dataset)
    assert issubclass(cfg.train_dataloader.dataset.type, BatchedMix)


# ---- from a bucket ---------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def bucket(tmp_path_factory):
    """Two sources uploaded to moto's standalone server (a process of its own)."""
    import boto3

    from moto_server import moto_server
    from src.prepare.datasets import prepare_redcaps5m
    from src.synthetic.downloads import MAKERS
    root = tmp_path_factory.mktemp('mix') / 'redcaps5m'
    expected = MAKERS['redcaps5m'](root, n=6, faults=False)
    assert prepare_redcaps5m(str(root), num_processes=1).exit_code() == 0
    shutil.copy(root / 'redcaps5m_data.json', root / 'second.json')  # a second source, its own stream
    with moto_server() as endpoint:
        client = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id='k', aws_secret_access_key='s',
                              region_name='us-east-1')
        client.create_bucket(Bucket='mix')
        for prefix in ('a', 'b'):
            for path in (root / 'raw').rglob('*'):
                if path.is_file() and path.suffix != '.tar':
                    client.put_object(Bucket='mix', Key=f'{prefix}/{path.relative_to(root / "raw")}',
                                      Body=path.read_bytes())
        yield endpoint, expected


def test_a_mixed_batch_from_a_bucket_is_one_prefetch_per_source(bucket, tmp_path, tokenizer, prompt_template):
    from flaky_proxy import FlakyProxy
    endpoint, expected = bucket
    with FlakyProxy(endpoint, throttle_every=0, cut_every=0) as proxy:
        config = tmp_path / 'petreloss.conf'
        config.write_text(f'[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = k\nsecret_key = s\n'
                          f'host_base = {proxy.url}\n')

        def build(concat):
            return concat([CaptionDataset(str(expected.root / index), tokenizer=tokenizer,
                                          prompt_template=prompt_template, image_size=32, cap_source='re_caption',
                                          seed=0, unconditional=0, ceph_folder=f's3://mix/{prefix}',
                                          ceph_config=str(config))
                           for index, prefix in (('redcaps5m_data.json', 'a'), ('second.json', 'b'))])

        def fetching_prefetches(mix) -> list:
            """Each source reader's prefetch calls that had something to fetch."""
            fetched = []
            for number, part in enumerate(mix.datasets):
                reader = part.image_files
                assert reader.remote and part.annotation_files is reader  # one reader a source

                def counting(samples, prefetch=reader.prefetch, reader=reader, number=number):
                    if any(path not in reader._kept for sample in samples for path in sample):
                        fetched.append(number)
                    return prefetch(samples)
                reader.prefetch = counting
            return fetched

        proxy.latency = 0.05  # a real store's time to first byte
        one_by_one = build(TorchConcat)  # (each source checks its bucket once: a HEAD)
        fetched = fetching_prefetches(one_by_one)
        before = proxy.requests
        expected_samples = [one_by_one[idx] for idx in BATCH]
        assert sorted(fetched) == [0, 0, 0, 0, 1, 1, 1, 1]  # before: a prefetch a sample
        assert proxy.requests - before == 2 * len(BATCH)  # an image and its caption file a sample

        mix = build(ConcatDataset)
        fetched = fetching_prefetches(mix)
        before, proxy.most_in_flight = proxy.requests, 0
        batch = mix.__getitems__(BATCH)
        assert sorted(fetched) == [0, 1]  # one prefetch per source for the batch
        assert proxy.requests - before == 2 * len(BATCH) and proxy.most_in_flight > 1  # each file once, at once
    assert same(batch, expected_samples)
