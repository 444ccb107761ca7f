"""tools/cache_latents.py with tiny autoencoders of both classes (random weights from a small config,
saved with save_pretrained; nothing from the hub): upstream's layout and tensor, skip before read,
resume after a kill, two ranks under torchrun, and a *_latents config reading what it wrote."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.latents import cache as latent_cache
from src.latents.autoencoder import load_encoder
from src.latents.store import is_complete
from src.datasets.storage import locks as lock
from src.prepare.datasets import prepare_midjourney23m
from src.synthetic.autoencoder import KINDS, build_autoencoder
from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS
from src.synthetic.local_config import localize

from config_helpers import load

REPO = Path(__file__).resolve().parents[1]
ROOT = DEFAULT_ROOTS['midjourney23m']
FOLDER = f'{ROOT}_dc32_64'


@pytest.fixture(scope='module')
def vaes(tmp_path_factory):
    folder = tmp_path_factory.mktemp('vae')
    return {kind: build_autoencoder(folder / kind, kind) for kind in KINDS}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    expected = MAKERS['midjourney23m'](tmp_path / ROOT, n=10)  # with a corrupt image among them
    assert prepare_midjourney23m(str(tmp_path / ROOT), num_processes=1).exit_code() == 0
    monkeypatch.chdir(tmp_path)
    return expected


def tool(*args, tokenizer_path, cwd=None, launcher=()):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    command = [*launcher, str(REPO / 'tools' / 'cache_latents.py'), str(REPO / 'configs/datasets/midjourney23m.py'),
               '--cfg-options', f'dataset.tokenizer.pretrained_model_name_or_path={tokenizer_path}',
               'dataset.image_size=64', '--batch-size', '2', '--num-workers', '1', *args]
    if not launcher:
        command.insert(0, sys.executable)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def latents(folder: Path) -> dict[str, torch.Tensor]:
    return {str(p.relative_to(folder)): torch.load(p) for p in sorted(folder.rglob('*.pt'))}


def usable(expected) -> set[str]:
    return {f'{image}.pt' for image in expected.samples}


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['AutoencoderDC', 'AutoencoderKL'])
def test_every_usable_image_is_encoded_once_as_upstream_writes_it(workdir, vaes, kind, tokenizer_path):
    result = tool('--vae', vaes[kind], tokenizer_path=tokenizer_path, cwd=workdir.root.parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    written = latents(workdir.root.parents[1] / FOLDER)
    assert set(written) == usable(workdir)  # the corrupt image is counted, not written
    assert 'bad-image 1' in result.stderr and '0 there already' in result.stderr
    image, latent = next(iter(written.items()))
    assert latent.dtype == torch.bfloat16 and latent.shape == (4, 32, 32)
    # The same tensor as encoding that image's crop directly, scaled as the config declares.
    from src.datasets.sample.image_io import load_pixel_values
    pixels = load_pixel_values((workdir.root / image[:-3]).read_bytes(), image, 64,
                               random.Random(f'latents/{image[:-3]}'), min_image_size=80)
    encoder = load_encoder(vaes[kind], torch.device('cpu'), torch.float32)
    direct = encoder(pixels[None])[0]  # alone, not in a batch: equal up to bfloat16 rounding
    assert torch.allclose(direct, latent.float(), atol=1e-2, rtol=1e-2)


def test_a_rerun_reads_no_image_and_a_truncated_latent_is_redone(workdir, vaes, tokenizer_path, monkeypatch):
    from mmengine.config import Config
    from mmengine.registry import DATASETS
    cfg = Config.fromfile(str(REPO / 'configs/datasets/midjourney23m.py'))
    cfg.dataset.tokenizer.pretrained_model_name_or_path = tokenizer_path
    cfg.dataset.image_size = 64
    dataset = DATASETS.build(cfg.dataset)
    encoder = load_encoder(vaes['AutoencoderDC'], torch.device('cpu'), torch.float32)
    first = latent_cache.RankReport()
    latent_cache.encode_dataset(dataset, encoder, first, num_workers=0)
    assert first.encoded == len(workdir.samples) and dict(first.failed) == {'bad-image': 1}

    reads = []
    original = type(dataset).load_image_data
    monkeypatch.setattr(type(dataset), 'load_image_data', lambda self, *a: reads.append(a[0]) or original(self, *a))
    folder = Path(FOLDER)
    victim = sorted(folder.rglob('*.pt'))[0]
    victim.write_bytes(victim.read_bytes()[:100])  # as upstream's torch.save leaves a killed write
    assert not is_complete(str(victim))
    again = latent_cache.RankReport()
    latent_cache.encode_dataset(dataset, encoder, again, num_workers=0)
    assert again.encoded == 1 and again.already_there == len(workdir.samples) - 1
    assert sorted(reads) == sorted([str(victim.relative_to(folder))[:-3], next(
        f.image for f in workdir.faults if f.reason == 'bad-image')])  # the redone one, and the corrupt one again
    assert is_complete(str(victim))


def test_the_folder_records_what_made_it_and_refuses_mixing_or_leaving_it(workdir, vaes, tokenizer_path):
    cwd = workdir.root.parents[1]
    index = workdir.root / 'data.json'
    records = json.loads(index.read_text())
    outside = cwd / 'elsewhere' / 'abs.jpg'
    outside.parent.mkdir()
    outside.write_bytes((workdir.root / records[0]['image']).read_bytes())
    index.write_text(json.dumps(records + [dict(records[0], image=str(outside))]))
    result = tool('--vae', vaes['AutoencoderDC'], '--cfg-options', 'dataset.allow_outside_paths=True',
                  tokenizer_path=tokenizer_path, cwd=cwd)
    assert result.returncode == 0 and 'unsafe-path 1' in result.stderr, result.stderr[-3000:]
    assert not list(outside.parent.glob('*.pt')) and not (cwd / 'elsewhere' / 'abs.jpg.pt').exists()
    info = json.loads((cwd / FOLDER / 'latents.json').read_text())
    assert info['vae'] == vaes['AutoencoderDC'] and info['image_size'] == 64 and info['shapes'] == {'64x64': [4, 32, 32]}
    other = tool('--vae', vaes['AutoencoderKL'], tokenizer_path=tokenizer_path, cwd=cwd)
    assert other.returncode == 2 and 'this folder holds latents made with' in other.stderr


@pytest.mark.slow
def test_a_killed_run_resumes_to_what_an_uninterrupted_one_writes(tmp_path, vaes, tokenizer_path):
    whole = MAKERS['midjourney23m'](tmp_path / 'whole' / ROOT, n=24, faults=False)
    killed = MAKERS['midjourney23m'](tmp_path / 'killed' / ROOT, n=24, faults=False)
    for expected in (whole, killed):
        assert prepare_midjourney23m(str(expected.root), num_processes=1).exit_code() == 0
    assert tool('--vae', vaes['AutoencoderDC'], tokenizer_path=tokenizer_path, cwd=tmp_path / 'whole').returncode == 0

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    process = subprocess.Popen(
        [sys.executable, str(REPO / 'tools' / 'cache_latents.py'), str(REPO / 'configs/datasets/midjourney23m.py'),
         '--cfg-options', f'dataset.tokenizer.pretrained_model_name_or_path={tokenizer_path}', 'dataset.image_size=64',
         '--batch-size', '2', '--num-workers', '1', '--vae', vaes['AutoencoderDC']],
        cwd=tmp_path / 'killed', env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    folder = tmp_path / 'killed' / FOLDER
    deadline = time.monotonic() + 120
    while len(list(folder.rglob('*.pt'))) < 6 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = len(list(folder.rglob('*.pt')))
    assert 0 < done < 24
    # what a kill in the middle of torch.save leaves (the kill above only sometimes lands there), and
    # the temp file of a live writer, which must be kept
    uninterrupted = latents(tmp_path / 'whole' / FOLDER)
    missing = sorted(uninterrupted.keys() - latents(folder).keys())
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (folder / f'{missing[0]}.tmp-{lock.HOST}-{dead.pid}').write_bytes(b'PK half a latent')
    alive = folder / f'{missing[0]}.tmp-{lock.HOST}-{os.getpid()}'
    alive.write_bytes(b'being written')

    result = tool('--vae', vaes['AutoencoderDC'], tokenizer_path=tokenizer_path, cwd=tmp_path / 'killed')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'{24 - done} encoded now, {done} there already' in result.stderr
    resumed = latents(folder)
    assert resumed.keys() == uninterrupted.keys()
    # The same latents up to float rounding: a kill between the two saves of a batch of 2 pairs the
    # rest of the images otherwise, and the autoencoder's kernels may round another batch's sums apart
    # in the last bits (seen once in a fresh-clone run); a wrong or missing image differs by far more.
    assert all(torch.allclose(resumed[k], uninterrupted[k], rtol=0, atol=1e-4) for k in resumed)
    assert [p for p in folder.rglob('*') if '.tmp-' in p.name] == [alive]
    assert 'leftovers of interrupted runs' in result.stderr


@pytest.mark.slow
def test_two_ranks_write_each_latent_once(workdir, vaes, tokenizer_path):
    cwd = workdir.root.parents[1]
    result = tool('--vae', vaes['AutoencoderDC'], tokenizer_path=tokenizer_path, cwd=cwd,
                  launcher=(sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'))
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    report = json.loads((cwd / FOLDER / 'cache_latents_report.json').read_text())
    assert report['world_size'] == 2 and report['encoded'] == len(workdir.samples)
    assert all(rank['encoded'] > 0 for rank in report['ranks'])
    assert set(latents(cwd / FOLDER)) == usable(workdir)
    sharded = tool('--vae', vaes['AutoencoderDC'], '--format', 'shards', '--shard-size', '3', '--out', 'sharded',
                   tokenizer_path=tokenizer_path, cwd=cwd,
                   launcher=(sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'))
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    from src.datasets.storage.tar_index import TarMemberIndex
    index = TarMemberIndex.open(str(cwd / 'sharded' / 'tar_index.arrow'))
    assert set(index.paths()) == usable(workdir)  # each latent once, over both ranks' shards
    assert {p.name[:4] for p in (cwd / 'sharded' / 'shards').glob('*.tar')} == {'r000', 'r001'}


def _free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_write_what_one_process_writes_and_a_killed_node_is_filled_in(tmp_path, vaes, tokenizer_path):
    """torchrun --nnodes 2 (two node processes, c10d rendezvous on 127.0.0.1, gloo): a node killed
    mid-run, then the job started again on both nodes, which encodes only what is missing."""
    n = 48
    whole = MAKERS['midjourney23m'](tmp_path / 'whole' / ROOT, n=n, faults=False)
    nodes = MAKERS['midjourney23m'](tmp_path / 'nodes' / ROOT, n=n, faults=False)
    for expected in (whole, nodes):
        assert prepare_midjourney23m(str(expected.root), num_processes=1).exit_code() == 0
    options = ('--vae', vaes['AutoencoderDC'], '--batch-size', '1', '--num-workers', '0')
    assert tool(*options, tokenizer_path=tokenizer_path, cwd=tmp_path / 'whole').returncode == 0
    uninterrupted = latents(tmp_path / 'whole' / FOLDER)

    def start_nodes(port: int) -> list[subprocess.Popen]:
        launcher = (sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--nproc_per_node', '1',
                    '--rdzv-backend', 'c10d', '--rdzv-endpoint', f'127.0.0.1:{port}', '--rdzv-id', f'latents{port}',
                    '--max-restarts', '0')
        command = [*launcher, str(REPO / 'tools' / 'cache_latents.py'), str(REPO / 'configs/datasets/midjourney23m.py'),
                   '--cfg-options', f'dataset.tokenizer.pretrained_model_name_or_path={tokenizer_path}',
                   'dataset.image_size=64', *options]
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
        return [subprocess.Popen(command, cwd=tmp_path / 'nodes', env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True) for _ in range(2)]

    folder = tmp_path / 'nodes' / FOLDER
    first = start_nodes(_free_port())
    deadline = time.monotonic() + 180
    while len(list(folder.rglob('*.pt'))) < 4 and time.monotonic() < deadline and all(p.poll() is None for p in first):
        time.sleep(0.01)
    for node in first:  # one node dies; the other's rank then waits for it: the job is started again
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
    done = len(list(folder.rglob('*.pt')))
    assert 0 < done < n, [node.stdout.read()[-2000:] for node in first]

    again = start_nodes(_free_port())
    outputs = [node.communicate(timeout=300)[0] for node in again]
    if any(node.returncode for node in again) and any('rendezvous' in output for output in outputs):
        # torchrun's c10d store can abort an agent as the job ends (its host gone first): a scheduler
        # would start the job once more, which again encodes only what is missing.
        again = start_nodes(_free_port())
        outputs = [node.communicate(timeout=300)[0] for node in again]
    assert all(node.returncode == 0 for node in again), [output[-3000:] for output in outputs]
    report = json.loads((folder / 'cache_latents_report.json').read_text())
    assert report['world_size'] == 2 and all(rank['encoded'] + rank['already_there'] > 0 for rank in report['ranks'])
    assert report['already_there'] >= done and report['encoded'] + report['already_there'] == n
    resumed = latents(folder)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)  # as one process writes them


def test_a_latents_config_reads_what_the_tool_wrote(workdir, vaes, tokenizer_path):
    from mmengine.config import Config
    from mmengine.registry import DATASETS
    from mmengine.runner import Runner
    cfg = Config.fromfile(str(REPO / 'configs/datasets/midjourney23m.py'))
    cfg.dataset.tokenizer.pretrained_model_name_or_path = tokenizer_path
    cfg.dataset.image_size = 64
    encoder = load_encoder(vaes['AutoencoderDC'], torch.device('cpu'), torch.float32)
    latent_cache.encode_dataset(DATASETS.build(cfg.dataset), encoder, latent_cache.RankReport(), num_workers=0)
    written = latents(Path(FOLDER))

    loader_cfg = localize(load('midjourney23m_latents'), tokenizer_path,
                          dataset_overrides=dict(image_latents_folder=FOLDER, seed=0), batch_size=4, num_workers=0,
                          pin_memory=False)
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    dataset = loader.dataset
    seen = 0
    for idx in range(len(dataset)):
        image_file = dataset.data_list[idx]['image']
        if f'{image_file}.pt' not in written:
            continue  # the corrupt image has no latent: the dataset skips it
        sample = dataset.prepare_data(idx)
        assert torch.equal(sample['image_latents'], written[f'{image_file}.pt'])
        seen += 1
    assert seen == len(workdir.samples)
    batch = next(iter(loader))
    assert batch['data']['image_latents'].shape == (4, 4, 32, 32)


def test_the_sharded_store_gives_the_same_latents_through_the_same_config(workdir, vaes, tokenizer_path):
    from mmengine.config import Config
    from mmengine.registry import DATASETS

    from src.datasets.errors import SampleError
    from src.prepare.latent_shards import index_shards
    cfg = Config.fromfile(str(REPO / 'configs/datasets/midjourney23m.py'))
    cfg.dataset.tokenizer.pretrained_model_name_or_path = tokenizer_path
    cfg.dataset.image_size = 64
    images = DATASETS.build(cfg.dataset)
    encoder = load_encoder(vaes['AutoencoderDC'], torch.device('cpu'), torch.float32)
    latent_cache.encode_dataset(images, encoder, latent_cache.RankReport(), num_workers=0)
    report = latent_cache.RankReport()
    latent_cache.encode_dataset(images, encoder, report, num_workers=0, out='sharded', fmt='shards', shard_size=4)
    assert report.encoded == len(workdir.samples)
    index_shards('sharded')
    assert len(list(Path('sharded/shards').glob('*.tar'))) == -(-len(workdir.samples) // 4)
    again = latent_cache.RankReport()  # a re-run finds them all in the shards, reads no image
    latent_cache.encode_dataset(images, encoder, again, num_workers=0, out='sharded', fmt='shards', shard_size=4)
    assert again.encoded == 0 and again.already_there == len(workdir.samples)

    def read_all(folder):
        loader_cfg = localize(load('midjourney23m_latents'), tokenizer_path,
                              dataset_overrides=dict(image_latents_folder=folder, seed=0), num_workers=0)
        dataset = DATASETS.build(loader_cfg.dataset)
        found = {}
        for idx in range(len(dataset)):
            try:
                found[dataset.data_list[idx]['image']] = dataset.prepare_data(idx)['image_latents']
            except SampleError:  # the corrupt image has no latent in either store
                continue
        return found

    files, shards = read_all(FOLDER), read_all('sharded')
    assert files.keys() == shards.keys() and len(files) == len(workdir.samples)
    assert all(torch.equal(files[k], shards[k]) for k in files)


def test_a_missing_or_wrong_vae_is_a_clear_error(workdir, tmp_path, tokenizer_path):
    cwd = workdir.root.parents[1]
    missing = tool('--vae', str(tmp_path / 'no-such-model'), tokenizer_path=tokenizer_path, cwd=cwd)
    assert missing.returncode == 2 and 'Traceback' not in missing.stderr
    assert 'cannot load a AutoencoderDC' in missing.stderr or 'no-such-model' in missing.stderr
    wrong = tmp_path / 'not-a-vae'
    wrong.mkdir()
    (wrong / 'config.json').write_text('{"_class_name": "UNet2DModel"}')
    result = tool('--vae', str(wrong), tokenizer_path=tokenizer_path, cwd=cwd)
    assert result.returncode == 2 and "names 'UNet2DModel', not one of" in result.stderr


def test_an_output_folder_that_cannot_be_written_stops_with_a_summary(workdir, vaes, tmp_path, tokenizer_path):
    from test_reliability import mounted_tmpfs, remount_read_only
    cwd = workdir.root.parents[1]
    with mounted_tmpfs(tmp_path / 'ro', '1m') as disk:
        remount_read_only(disk)
        result = tool('--vae', vaes['AutoencoderDC'], '--out', str(disk / 'latents'), tokenizer_path=tokenizer_path,
                      cwd=cwd)
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert 'the file system is read-only' in result.stderr and 'run the same command again' in result.stderr
