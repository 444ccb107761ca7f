"""Aspect-ratio buckets: the tables, the assignment, the samples at their bucket's shape, the
sampler's batches (one bucket a step on every rank, nothing lost, epochs known, resume computed),
latents per bucket, and a run under torchrun with 2 gloo ranks and 2 workers each."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from src.datasets.sample.buckets import Buckets, equal_area_shapes, kept_area, pixart_shapes
from src.datasets.collate_functions import collate_func_gen, collate_func_gen_latents
from src.datasets.sample.image_io import crop_box, load_pixel_values, load_pixels, random_square_box
from src.datasets.samplers.bucket_sampler import BucketBatches, BucketSampler
from src.datasets.samplers.multi_source_sampler import FixedBatchMultiSourceSampler
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.synthetic.images import encode_image

from sampler_helpers import stream_from

REPO = Path(__file__).resolve().parents[1]

# (width, height) of the miniature pictures: a skewed mix, as DALL-E 3 and Midjourney hold.
SHAPES = [(256, 256)] * 6 + [(448, 256)] * 4 + [(256, 448)] * 2 + [(512, 192)] + [(200, 900)]


def write_bucket_data(root: Path, count: int = 28, sizes_in_index: str = 'half', broken: set = frozenset()) -> Path:
    """``count`` JPEGs of the SHAPES mix (every other record with its size in the index when
    ``sizes_in_index`` is 'half'; 'all', 'none'), ``broken`` records' files damaged."""
    (root / 'images').mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        width, height = SHAPES[i % len(SHAPES)]
        data = encode_image(width, height, 'JPEG', seed=i)
        (root / 'images' / f'{i:03d}.jpg').write_bytes(data[:200] if i in broken else data)
        record = {'image': f'{i:03d}.jpg', 'caption': f'picture number {i}'}
        if sizes_in_index == 'all' or (sizes_in_index == 'half' and i % 2):
            record.update(width=width, height=height)
        records.append(record)
    (root / 'data.json').write_text(json.dumps(records))
    return root


@pytest.fixture
def bucket_data(tmp_path):
    return write_bucket_data(tmp_path / 'data')


def make_dataset(root: Path, tokenizer, prompt_template, buckets=dict(table='pixart-256'), **options) -> CaptionDataset:
    return CaptionDataset(str(root / 'data.json'), image_folder=str(root / 'images'), tokenizer=tokenizer,
                          prompt_template=prompt_template, image_size=256, unconditional=0.0, seed=0, buckets=buckets,
                          **options)


# ---- the tables ------------------------------------------------------------------------------------
def test_the_named_tables_are_pixart_s_and_sana_s():
    shapes = pixart_shapes(512)
    assert len(shapes) == 40
    assert shapes[:4] == [(256, 1024), (256, 992), (256, 960), (256, 928)]
    assert shapes[-2:] == [(992, 256), (1024, 256)]
    assert (512, 512) in shapes and (704, 352) in shapes and (352, 672) in shapes and (672, 352) not in shapes
    assert pixart_shapes(1024) == [(2 * h, 2 * w) for h, w in shapes]
    assert pixart_shapes(256) == [(h // 2, w // 2) for h, w in shapes]


@pytest.mark.parametrize('area,divisor,max_aspect', [(512 * 512, 32, 4.0), (256 * 256, 16, 2.0), (1024 ** 2, 64, 3.0)])
def test_generated_buckets_are_equal_area_divisible_and_within_the_aspect(area, divisor, max_aspect):
    shapes = equal_area_shapes(area, divisor, max_aspect)
    assert all(h % divisor == 0 and w % divisor == 0 and h * w <= area for h, w in shapes)
    assert all(max(h / w, w / h) <= max_aspect for h, w in shapes)
    assert all(h * w >= area * 0.75 for h, w in shapes)  # each as large as the divisor allows
    assert set(shapes) == {(w, h) for h, w in shapes}  # each turned too
    ratios = [h / w for h, w in shapes]
    assert ratios == sorted(ratios)


def test_each_picture_goes_to_the_nearest_aspect_and_the_extremes_are_counted_out():
    buckets = Buckets.from_options(dict(table='pixart-512', max_aspect=3.0))
    widths = np.array([512, 1792, 1024, 1000, 4000, 0, np.nan])
    heights = np.array([512, 1024, 1792, 1000, 1000, 5, 10])
    assigned = buckets.assign(widths, heights)
    assert [buckets.key(b) for b in assigned[:4]] == ['512x512', '384x672', '672x384', '512x512']
    assert assigned[4] == -1 and assigned[5] == -2 and assigned[6] == -2
    for width, height, bucket in zip(widths[:4], heights[:4], assigned[:4]):
        nearest = min(buckets.shapes, key=lambda s: abs(math.log(s[0] / s[1]) - math.log(height / width)))
        assert buckets.shapes[bucket] == nearest


@pytest.mark.parametrize('options,image_size,words', [
    (dict(table='pixart-512'), 256, "is for image_size 512.*pixart-256"),
    (dict(table='pixart-300'), 300, 'table is one of'),
    (dict(area=512 * 512, oops=1), 512, r"unknown option\(s\) \['oops'\]"),
    (dict(table='pixart-512', crop_mode='edge'), 512, 'crop_mode'),
    (dict(), 512, "give table="),
])
def test_bucket_options_that_cannot_work_fail_at_construction_naming_the_setting(options, image_size, words):
    with pytest.raises(ValueError, match=words):
        Buckets.from_options(options, image_size)


def test_a_bucket_keeps_far_more_of_a_wide_picture_than_a_square_crop():
    buckets = Buckets.from_options(dict(table='pixart-1024'))
    bucket = buckets.shapes[buckets.assign(np.array([1792]), np.array([1024]))[0]]
    assert kept_area(1792, 1024, (1, 1)) == pytest.approx(1024 / 1792)  # 57%
    assert kept_area(1792, 1024, bucket) > 0.97


# ---- one picture to its bucket's shape -----------------------------------------------------------
def test_the_square_crop_is_the_square_case_of_the_one_crop_box():
    for seed, size in enumerate([(640, 480), (480, 640), (500, 500), (1792, 1024)]):
        assert crop_box(size, (256, 256), random.Random(seed)) == random_square_box(size, random.Random(seed))


@pytest.mark.parametrize('size,target', [((1792, 1024), (384, 672)), ((1024, 1792), (672, 384)),
                                         ((600, 600), (256, 448)), ((900, 300), (160, 480))])
def test_a_picture_covers_its_bucket_and_the_placement_says_where_the_crop_is(size, target):
    data = encode_image(*size, 'JPEG', seed=1)
    pixels, placement = load_pixels(data, 'p.jpg', target, random.Random(0))
    assert pixels.shape == (3, *target) and pixels.is_contiguous()
    assert placement.original_size == (size[1], size[0])
    top, left = placement.crop_coords
    scale = max(target[0] / size[1], target[1] / size[0])
    assert 0 <= top <= round(size[1] * scale) - target[0] + 1 and 0 <= left <= round(size[0] * scale) - target[1] + 1
    centred, at_centre = load_pixels(data, 'p.jpg', target, random.Random(0), crop_mode='center')
    assert centred.shape == pixels.shape
    assert abs(at_centre.crop_coords[0] - (round(size[1] * scale) - target[0]) / 2) <= 1.5


def test_a_turned_jpeg_is_cropped_to_its_bucket_upright():
    from PIL import Image
    import io
    picture = Image.new('RGB', (400, 240), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    buffer = io.BytesIO()
    picture.save(buffer, 'JPEG', exif=exif)
    pixels, placement = load_pixels(buffer.getvalue(), 't.jpg', (320, 192), random.Random(0))
    assert pixels.shape == (3, 320, 192) and placement.original_size == (400, 240)


def test_square_samples_are_unchanged_by_the_target_path():
    data = encode_image(700, 500, 'JPEG', seed=3)
    square = load_pixel_values(data, 'a.jpg', 256, random.Random(5))
    again, _ = load_pixels(data, 'a.jpg', (256, 256), random.Random(5))
    assert torch.equal(square, again)


# ---- the dataset ------------------------------------------------------------------------------------
def test_each_record_s_bucket_is_known_at_construction_and_headers_are_read_once(bucket_data, tokenizer, prompt_template,
                                                                                 monkeypatch):
    from src.datasets.index import image_sizes
    reads = Counter()
    original = image_sizes.header_size

    def counting(data, name):
        reads[name] += 1
        return original(data, name)
    monkeypatch.setattr('src.datasets.sample.records.header_size', counting)
    dataset = make_dataset(bucket_data, tokenizer, prompt_template)
    assert sum(reads.values()) == 14  # the records without a size in the index, once each
    assert len(dataset) == 26  # 200x900 (1:4.5) fits no bucket: counted out
    again = make_dataset(bucket_data, tokenizer, prompt_template)
    assert sum(reads.values()) == 14  # stored beside the index cache
    assert np.array_equal(again.bucket_ids, dataset.bucket_ids)
    for idx in range(len(dataset)):
        sample = dataset[idx]
        assert sample['pixel_values'].shape[1:] == dataset.target_of(idx)
        assert sample['original_size'].shape == (2,) and sample['crop_coords'].shape == (2,)
    keys = Counter(dataset.buckets.key(b) for b in dataset.bucket_ids)
    assert keys == {'256x256': 12, '192x336': 8, '336x192': 4, '160x400': 2}


def test_the_index_s_sizes_spare_the_header_reads(tmp_path, tokenizer, prompt_template, monkeypatch):
    root = write_bucket_data(tmp_path / 'sized', sizes_in_index='all')
    monkeypatch.setattr('src.datasets.sample.records.header_size', lambda *a: pytest.fail('read a header'))
    assert len(make_dataset(root, tokenizer, prompt_template)) == 26


def test_a_failed_sample_is_replaced_within_its_bucket(tmp_path, tokenizer, prompt_template):
    root = write_bucket_data(tmp_path / 'broken', sizes_in_index='all', broken={6, 20})  # two 448x256 ones
    dataset = make_dataset(root, tokenizer, prompt_template)
    broken = [i for i in range(len(dataset)) if dataset.index[i]['image'] in ('006.jpg', '020.jpg')]
    for idx in broken:
        sample = dataset[idx]
        assert sample['image_file'] not in ('006.jpg', '020.jpg')
        assert sample['pixel_values'].shape[1:] == dataset.target_of(idx)
    assert dataset.failures['bad-image'] >= 2  # a replacement may meet the other broken one


@pytest.fixture
def logged(monkeypatch) -> list[str]:
    """What the dataset and the sampler log."""
    lines = []
    for module in ('src.datasets.sample.records', 'src.datasets.samplers.bucket_sampler'):
        monkeypatch.setattr(f'{module}.print_log', lambda msg, logger=None, level=None: lines.append(msg))
    return lines


def test_a_record_without_a_usable_size_is_a_counted_drop(tmp_path, tokenizer, prompt_template, logged):
    root = write_bucket_data(tmp_path / 'nosize', sizes_in_index='half', broken={2})
    dataset = make_dataset(root, tokenizer, prompt_template)
    assert len(dataset) == 25
    assert '(dropped: 1 without a size, 2 outside every bucket)' in '\n'.join(logged)


def test_collate_batches_one_shape_with_the_placement_and_refuses_mixed_shapes(bucket_data, tokenizer, prompt_template):
    dataset = make_dataset(bucket_data, tokenizer, prompt_template)
    same = [i for i in range(len(dataset)) if dataset.bucket_ids[i] == dataset.bucket_ids[1]][:3]
    batch = collate_func_gen([dataset[i] for i in same])['data']
    assert batch['pixel_values'].shape == (3, 3, *dataset.target_of(same[0]))
    assert batch['original_size'].shape == (3, 2) and batch['crop_coords'].shape == (3, 2)
    other = next(i for i in range(len(dataset)) if dataset.bucket_ids[i] != dataset.bucket_ids[1])
    with pytest.raises(ValueError, match='BucketSampler'):
        collate_func_gen([dataset[same[0]], dataset[other]])


# ---- the sampler ------------------------------------------------------------------------------------
def skewed_ids() -> tuple[np.ndarray, list[str]]:
    """Buckets of 37, 13, 5 and 2 records (a global batch of 6 cannot fill the last two), shuffled."""
    ids = np.repeat(np.arange(4), [37, 13, 5, 2])
    np.random.default_rng(0).shuffle(ids)
    return ids, ['a', 'b', 'c', 'd']


def rank_batches(ids, names, batch_size, world, seed, count, start=0) -> list[list[list[int]]]:
    """``count`` batches of every rank from ``start``: [step][rank] -> indices."""
    ranks = [BucketBatches(ids, names, batch_size, rank, world, seed).iter_from(start) for rank in range(world)]
    return [[next(stream) for stream in ranks] for _ in range(count)]


def test_every_step_is_one_bucket_on_every_rank_and_each_pass_reads_each_record_once():
    ids, names = skewed_ids()
    batches = BucketBatches(ids, names, 3, 0, 2, seed=7)
    epochs = 3
    steps = rank_batches(ids, names, 3, 2, 7, batches.batches_before(epochs))
    streams = {}
    for step in steps:
        buckets = {int(ids[i]) for rank in step for i in rank}
        assert len(buckets) == 1  # one bucket, the same on both ranks
        streams.setdefault(buckets.pop(), []).extend(i for rank in step for i in rank)
    for bucket, stream in streams.items():
        members = sorted(np.flatnonzero(ids == bucket).tolist())
        size = len(members)
        passes = [sorted(stream[k:k + size]) for k in range(0, len(stream) - size + 1, size)]
        assert passes and all(p == members for p in passes), bucket  # nothing lost, nothing repeated
        # Over 3 epochs a bucket completes floor(3 n / G) batches: the rest is carried, not dropped.
        assert len(stream) == 3 * size // 6 * 6
    assert set(streams) == {0, 1, 2, 3}  # the small buckets too, once enough has been carried


def test_epoch_lengths_are_known_in_advance_and_buckets_come_in_proportion():
    ids, names = skewed_ids()
    batches = BucketBatches(ids, names, 3, 0, 2, seed=1)
    assert [batches.epoch_length(e) for e in range(4)] == [
        sum((e + 1) * n // 6 - e * n // 6 for n in (37, 13, 5, 2)) for e in range(4)]
    assert batches.epoch_length(0) == 6 + 2  # 37 // 6 + 13 // 6: the 5 and the 2 wait
    counts = Counter(batches.batch(t)[0] for t in range(batches.batches_before(60)))
    assert counts[0] / sum(counts.values()) == pytest.approx(37 / 57, abs=0.01)
    assert 'carried' in batches.describe() and batches.small_buckets() == ['c (5)', 'd (2)']


def test_the_same_seed_gives_the_same_batches_and_another_seed_others():
    ids, names = skewed_ids()
    first = rank_batches(ids, names, 3, 2, 5, 20)
    assert first == rank_batches(ids, names, 3, 2, 5, 20)
    assert first != rank_batches(ids, names, 3, 2, 6, 20)


def test_resume_at_any_batch_is_the_uninterrupted_continuation():
    ids, names = skewed_ids()
    whole = rank_batches(ids, names, 3, 2, 3, 40)
    for start in range(40):
        assert rank_batches(ids, names, 3, 2, 3, 40 - start, start=start) == whole[start:], start


def test_a_batch_no_bucket_can_fill_is_refused_at_start_up():
    ids, names = skewed_ids()
    with pytest.raises(ValueError, match=r'global batch of 40 \(batch_size 20 x 2 ranks\).*largest: 37'):
        BucketBatches(ids, names, 20, 0, 2, seed=0)


def test_the_sampler_over_a_dataset_logs_its_epoch_and_resumes_at_a_batch(bucket_data, tokenizer, prompt_template,
                                                                          logged):
    dataset = make_dataset(bucket_data, tokenizer, prompt_template)
    sampler = BucketSampler(dataset, batch_size=2, seed=3)
    assert 'an epoch is 13 batches a rank' in '\n'.join(logged)
    indices = list(_take(stream_from(sampler), 40))
    for k in range(0, 40, 2):
        assert len({int(dataset.bucket_ids[i]) for i in indices[k:k + 2]}) == 1
    assert list(_take(stream_from(sampler, 7), 26)) == indices[14:]
    sampler.set_epoch(0)
    assert len(sampler) == sampler.batches.epoch_length(0) * 2


def test_the_multi_source_sampler_keeps_each_bucketed_batch_in_one_bucket(bucket_data, tmp_path, tokenizer, prompt_template):
    from torch.utils.data import ConcatDataset
    square = CaptionDataset(str(bucket_data / 'data.json'), image_folder=str(bucket_data / 'images'),
                            tokenizer=tokenizer, prompt_template=prompt_template, image_size=256)
    mix = ConcatDataset([make_dataset(bucket_data, tokenizer, prompt_template), square])
    sampler = FixedBatchMultiSourceSampler([2, 1], mix, batch_size=2, seed=0)
    indices = list(_take(stream_from(sampler), 60))
    for number, k in enumerate(range(0, 60, 2)):
        source = sampler.source_of_batch(number)
        batch = indices[k:k + 2]
        assert all((i >= mix.cumulative_sizes[0]) == (source == 1) for i in batch)
        if source == 0:
            assert len({int(mix.datasets[0].bucket_ids[i]) for i in batch}) == 1
    assert list(_take(stream_from(sampler, 11), 38)) == indices[22:]


def _take(iterator, count):
    for _ in range(count):
        yield next(iterator)


# ---- latents per bucket -----------------------------------------------------------------------------
def write_images_config(path: Path, root: Path, tokenizer_path: str, template: dict, buckets: dict) -> Path:
    """A dataset config reading ``root``'s images with ``buckets``."""
    path.write_text(
        'from transformers import AutoTokenizer\n'
        'from src.datasets.text2image.caption_datasets import CaptionDataset\n'
        f'dataset = dict(type=CaptionDataset, data_path={str(root / "data.json")!r}, '
        f'image_folder={str(root / "images")!r}, image_size=256, unconditional=0.0, '
        f'tokenizer=dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path={tokenizer_path!r}), '
        f'prompt_template={template!r}, buckets={buckets!r})\n')
    return path


def cache_bucket_latents(root: Path, tokenizer_path: str, template: dict, tmp_path: Path, buckets: dict) -> Path:
    """Run tools/cache_latents.py over the bucketed image config with a tiny AutoencoderDC; the latent folder."""
    from src.synthetic.autoencoder import build_autoencoder
    vae = tmp_path / 'vae'
    if not vae.exists():
        build_autoencoder(vae)
    config = write_images_config(tmp_path / 'images_cfg.py', root, tokenizer_path, template, buckets)
    out = tmp_path / 'latents'
    done = subprocess.run([sys.executable, str(REPO / 'tools' / 'cache_latents.py'), str(config), '--vae', str(vae),
                           '--out', str(out), '--num-workers', '0', '--batch-size', '4'],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_latents_are_cached_per_bucket_and_read_back_alone(bucket_data, tmp_path, tokenizer, tokenizer_path, prompt_template):
    out = cache_bucket_latents(bucket_data, tokenizer_path, prompt_template, tmp_path, dict(table='pixart-256'))
    info = json.loads((out / 'latents.json').read_text())
    assert info['buckets']['shapes'][0] == '128x512' and set(info['shapes']) == {
        '256x256', '192x336', '336x192', '160x400'}
    assert info['sizes']['rows'] == 28 and (out / 'image_sizes.npy').exists()
    images = make_dataset(bucket_data, tokenizer, prompt_template)
    latents = CaptionDataset(str(bucket_data / 'data.json'), image_latents_folder=str(out), tokenizer=tokenizer,
                             prompt_template=prompt_template, image_size=256, buckets=dict(table='pixart-256'))
    assert np.array_equal(latents.bucket_ids, images.bucket_ids)  # no image read: the stored sizes
    for idx in range(len(latents)):
        sample = latents[idx]
        height, width = latents.target_of(idx)
        latent_h, latent_w = sample['image_latents'].shape[1:]
        assert latent_h * width == latent_w * height and latent_h < height  # the bucket's shape, downsampled
        assert sample['original_size'].tolist() == images[idx]['original_size'].tolist()
    same = [i for i in range(len(latents)) if latents.bucket_ids[i] == latents.bucket_ids[0]][:2]
    assert collate_func_gen_latents([latents[i] for i in same])['data']['image_latents'].shape[0] == 2
    with pytest.raises(ValueError, match='other buckets'):
        CaptionDataset(str(bucket_data / 'data.json'), image_latents_folder=str(out), tokenizer=tokenizer,
                       prompt_template=prompt_template, image_size=512, buckets=dict(table='pixart-512'))
    with pytest.raises(ValueError, match='made with'):
        CaptionDataset(str(bucket_data / 'data.json'), image_latents_folder=str(out), tokenizer=tokenizer,
                       prompt_template=prompt_template, image_size=256)


# ---- the real thing: 2 gloo ranks x 2 workers, 3 epochs, resumed ------------------------------------
@pytest.mark.slow
def test_two_ranks_train_three_epochs_in_step_and_resume_at_any_checkpoint(tmp_path, tokenizer_path):
    root = write_bucket_data(tmp_path / 'data', count=48)
    write_bucket_data(tmp_path / 'data2', count=30, sizes_in_index='all')  # the mix's second source
    from mmengine.config import Config
    template = Config.fromfile(str(REPO / 'configs' / 'processors.py')).prompt_template.to_dict()
    latents = cache_bucket_latents(root, tokenizer_path, template, tmp_path, dict(table='pixart-256'))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', TOKENIZERS_PARALLELISM='false')
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
         str(REPO / 'tests' / 'bucket_run.py'), '--data', str(root), '--latents', str(latents),
         '--tokenizer', tokenizer_path, '--out', str(tmp_path / 'runs')],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = [json.loads((tmp_path / 'runs' / f'rank{r}.json').read_text()) for r in range(2)]
    for mode in ('images', 'latents', 'mix'):
        whole = [run[mode]['whole'] for run in runs]
        steps = len(whole[0])
        assert steps == runs[0][mode]['iters'] and len(whole[1]) == steps
        for step in range(steps):  # one shape a step, the same on both ranks
            assert whole[0][step]['shape'] == whole[1][step]['shape'], (mode, step)
            assert whole[0][step]['source'] == whole[1][step]['source'], (mode, step)
        for start, resumed in zip(runs[0][mode]['starts'], zip(*(run[mode]['resumed'] for run in runs))):
            for rank in range(2):
                assert resumed[rank] == whole[rank][start:], (mode, start, rank)
        if mode != 'mix':
            _check_passes(whole, runs[0][mode]['members'], runs[0][mode]['global_batch'])


def _check_passes(whole, members: dict, global_batch: int) -> None:
    """Every bucket's stream (both ranks' slices, step by step) reads each record once per pass."""
    streams = {}
    for step0, step1 in zip(*whole):
        streams.setdefault(str(step0['shape']), []).extend(step0['files'] + step1['files'])
    for shape, stream in streams.items():  # a latent's shape is its bucket's, downsampled
        bucket = sorted(next(files for files in members.values() if stream[0] in files))
        size = len(bucket)
        for k in range(0, len(stream) - size + 1, size):
            assert sorted(stream[k:k + size]) == bucket, shape
