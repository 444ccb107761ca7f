"""Downloads, indexes, latent files and configs from others, tried as a hostile user would: nothing
in them runs code or a program, reads or writes outside its folder, hangs a worker, reads without
bound or crashes a parser; each class ends in a counted skip or a clear error naming the file."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from src.datasets.errors import SampleError
from src.datasets.storage.files import read_file, unsafe_path, unsafe_path_mask
from src.datasets.storage.object_store import ObjectFolder, StorageConfigError, read_petrel_config
from src.datasets.sample import records as kept_records
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.prepare import datasets as prepare
from src.prepare.extract import EXTRACT
from src.prepare.tar_headers import TarJob
from src.prepare.resize import NotResized, shrink_image
from src.prepare.tar_members import INDEX_MEMBERS
from src.synthetic.downloads import MAKERS
from src.synthetic.images import encode_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset_over(tmp_path, tokenizer, prompt_template):
    """A dataset over ``records`` (data.json) with images in ``tmp_path/images``."""
    (tmp_path / 'images').mkdir()

    def make(records, **options):
        (tmp_path / 'data.json').write_text(json.dumps(records))
        options = {'image_folder': str(tmp_path / 'images'), 'image_size': 32, 'unconditional': 0, 'seed': 0,
                   **options}
        return CaptionDataset(str(tmp_path / 'data.json'), tokenizer=tokenizer, prompt_template=prompt_template,
                              **options)
    return make


def good_image(folder: Path, name: str, seed: int = 0) -> dict:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(encode_image(120, 100, seed=seed))
    return {'image': name, 'caption': f'picture {name}'}


def reason_of(dataset, idx: int) -> str:
    with pytest.raises(SampleError) as err:
        dataset.prepare_data(idx)
    return err.value.reason


# ---- 1. code execution through latents ---------------------------------------------------------
class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").write("ran")',)


def test_a_latent_pickle_runs_no_code_whatever_the_environment(tmp_path, dataset_over, monkeypatch):
    latents, marker = tmp_path / 'latents', tmp_path / 'ran.txt'
    records = [good_image(tmp_path / 'images', f'{i}.jpg', i) for i in range(3)]
    for record in records[:2]:
        (latents / record['image']).parent.mkdir(parents=True, exist_ok=True)
        torch.save(torch.zeros(4, 2, 2), latents / f'{record["image"]}.pt')
    torch.save(_RunsCode(str(marker)), latents / '2.jpg.pt')
    # The workaround for mmengine checkpoints on torch >= 2.6, common in training scripts.
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    dataset = dataset_over(records, image_latents_folder=str(latents))
    assert reason_of(dataset, 2) == 'bad-tensor' and not marker.exists()
    assert dataset.prepare_data(0)['image_latents'].shape == (4, 2, 2)


def test_every_torch_load_of_data_is_weights_only():
    for path in [*(REPO / 'src').rglob('*.py'), *(REPO / 'tools').glob('*.py')]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if 'torch.load(' in line and not line.lstrip().startswith('#'):
                assert 'weights_only=True' in line, f'{path}:{number}: {line.strip()}'


# ---- 2. no external program on what a tar holds -----------------------------------------------
EPS = (b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 200 200\n%%EndComments\n'
       b'newpath 0 0 moveto 200 200 lineto stroke showpage\n%%EOF\n')


@pytest.fixture
def no_programs(monkeypatch):
    """Fails the test if anything starts a program (Pillow's EPS plugin runs Ghostscript)."""
    started = []

    def refuse(self, args, *a, **k):
        started.append(args)
        raise AssertionError(f'a program was started: {args}')
    monkeypatch.setattr(subprocess.Popen, '__init__', refuse)
    return started


def test_an_eps_file_named_jpg_starts_no_program(tmp_path, dataset_over, no_programs):
    (tmp_path / 'images').mkdir(exist_ok=True)
    (tmp_path / 'images' / 'x.jpg').write_bytes(EPS)
    (tmp_path / 'staged.jpg').write_bytes(EPS)
    with pytest.raises(NotResized, match='bad-image'):
        shrink_image(str(tmp_path / 'staged.jpg'), 64)  # --resize-to
    dataset = dataset_over([{'image': 'x.jpg', 'caption': 'c'}, good_image(tmp_path / 'images', 'g.jpg')])
    assert reason_of(dataset, 0) == 'bad-image'
    from src.report.statistics import dataset_stats
    assert dataset_stats(dataset, 2).failures == {'bad-image': 1}  # the report reads image headers
    assert not no_programs and (tmp_path / 'staged.jpg').read_bytes() == EPS


def test_images_are_opened_by_one_function_only():
    """``grep`` finds no other ``Image.open`` in the project's code that reads data."""
    allowed = {REPO / 'src/datasets/storage/images.py'}
    for path in [*(REPO / 'src').rglob('*.py'), *(REPO / 'tools').glob('*.py')]:
        if path not in allowed and 'synthetic' not in path.parts:
            assert 'Image.open(' not in path.read_text(), path


# ---- 3. paths that leave their folder ----------------------------------------------------------
def test_unsafe_paths_are_judged_alike_one_by_one_and_by_column():
    paths = ['a.jpg', 'sub/a.jpg', '/etc/passwd', '../x.jpg', 'a/../../x.jpg', 'a/..', 'a..b.jpg', '..a/b.jpg',
             'nul\0.jpg', './a.jpg']
    expected = [False, False, True, True, True, True, False, False, True, False]
    assert [unsafe_path(p) is not None for p in paths] == expected
    assert unsafe_path_mask(pa.chunked_array([pa.array(paths)])).tolist() == expected


def test_index_paths_outside_their_folder_are_refused_and_counted(tmp_path, dataset_over, monkeypatch):
    lines = []
    monkeypatch.setattr(kept_records, 'print_log', lambda message, **_: lines.append(message))
    outside = tmp_path / 'secret'
    outside.mkdir()
    (outside / 'abs.jpg').write_bytes(encode_image(120, 100))
    (outside / 'cap.json').write_text('{"caption": "leaked"}')
    good = good_image(tmp_path / 'images', 'g.jpg')
    records = [good, {'image': str(outside / 'abs.jpg'), 'caption': 'x'}, {'image': '../secret/abs.jpg', 'caption': 'x'},
               {'image': 'g.jpg', 'annotation': '../secret/cap.json'}]
    dataset = dataset_over(records, cap_folder=str(tmp_path / 'images'))
    assert len(dataset) == 1 and dataset[0]['image_file'] == 'g.jpg'
    log = '\n'.join(lines)
    assert '3 of 4 records' in log and 'allow_outside_paths=True' in log and '(dropped: 3 unsafe path)' in log
    allowed = dataset_over(records, cap_folder=str(tmp_path / 'images'), allow_outside_paths=True)
    assert len(allowed) == 4 and allowed.prepare_data(1)['image_file'] == str(outside / 'abs.jpg')


def test_a_hook_path_that_leaves_its_folder_is_a_counted_skip(tmp_path, dataset_over):
    """Paths are checked where they are joined too, not only when the index is loaded."""
    dataset = dataset_over([good_image(tmp_path / 'images', 'g.jpg')])
    with pytest.raises(SampleError) as err:
        dataset.read_image('../../etc/passwd')
    assert err.value.reason == 'unsafe-path' and 'allow_outside_paths' in str(err.value)


def test_prepared_indexes_refuse_paths_outside_their_folder(tmp_path):
    expected = MAKERS['laion6m'](tmp_path / 'laion', n=4, faults=False)
    index = expected.root / 'data.json'
    records = json.loads(index.read_text())
    (expected.root / 'secret.jpg').write_bytes(encode_image(120, 100))
    records += [{'image': str(expected.root / 'secret.jpg'), 'annotation': records[0]['annotation']},
                {'image': '../secret.jpg', 'annotation': records[0]['annotation']},
                {'image': records[0]['image'], 'annotation': '../../x.json'}]
    index.write_text(json.dumps(records))
    report = prepare.prepare_laion6m(str(expected.root), num_processes=1)
    assert report.indexes[0].drops.counts['unsafe-path'] == 3 and report.indexes[0].entries == 4

    mj = MAKERS['midjourney23m'](tmp_path / 'mj', n=4, faults=False)
    table = next((mj.root / 'raw').glob('table-*.parquet'))
    rows = pq.read_table(table).to_pylist()
    rows += [dict(rows[0], filename='../raw/x.jpg'), dict(rows[0], filename='/etc/hosts')]
    pq.write_table(pa.Table.from_pylist(rows), table)
    report = prepare.prepare_midjourney23m(str(mj.root), num_processes=1)
    assert report.indexes[0].drops.counts['unsafe-path'] == 2


def test_object_keys_outside_the_folder_are_a_counted_skip(monkeypatch):
    for name, value in (('AWS_ENDPOINT_URL', 'http://127.0.0.1:9'), ('AWS_ACCESS_KEY_ID', 'k'),
                        ('AWS_SECRET_ACCESS_KEY', 's')):
        monkeypatch.setenv(name, value)
    store = ObjectFolder('s3://bucket/data', None)
    assert store.key('s3://bucket/data/a/b.jpg') == 'data/a/b.jpg'
    for path in ('s3://bucket/data/../other/b.jpg', 's3://bucket/elsewhere/b.jpg'):
        with pytest.raises(SampleError) as err:
            store.key(path)
        assert err.value.reason == 'unsafe-path'


# ---- 4. secrets ---------------------------------------------------------------------------------
def test_a_percent_in_a_secret_is_read_raw_and_no_secret_reaches_a_message(tmp_path):
    config = tmp_path / 'petreloss.conf'
    config.write_text('[DEFAULT]\ndefault_cluster = c\n[c]\naccess_key = AKIA\nsecret_key = 50%off%(x)s\n'
                      'host_base = http://127.0.0.1:9\n')
    clusters, default = read_petrel_config(str(config))
    assert default == 'c' and clusters['c'].secret_key == '50%off%(x)s'
    assert '50%off' not in repr(clusters['c'])
    for broken in ('[c]\nsecret_key = TOPSECRET%\n  continued = TOPSECRET\n[c]\n',
                   'secret_key = TOPSECRET\n', '[c]\nsecret_key TOPSECRET\n'):
        config.write_text(broken)
        with pytest.raises(StorageConfigError) as err:
            read_petrel_config(str(config))
        assert 'TOPSECRET' not in str(err.value) and str(config) in str(err.value)


# ---- 5. only regular files, bounded ------------------------------------------------------------
def test_a_fifo_and_a_device_are_counted_skips_and_never_hang_a_worker(tmp_path, dataset_over):
    os.mkfifo(tmp_path / 'images' / 'fifo.jpg')
    (tmp_path / 'images' / 'zero.jpg').symlink_to('/dev/zero')
    records = [good_image(tmp_path / 'images', 'g.jpg'), {'image': 'fifo.jpg', 'caption': 'c'},
               {'image': 'zero.jpg', 'caption': 'c'}]
    dataset = dataset_over(records)
    assert reason_of(dataset, 1) == reason_of(dataset, 2) == 'not-a-file'
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1, sampler=[1, 2, 0], timeout=60)
    assert [sample['image_file'] for sample in loader][-1] == 'g.jpg'  # the skips were replaced


def test_a_file_beyond_the_bound_is_too_large_not_read(tmp_path):
    (tmp_path / 'big.jpg').write_bytes(b'\0' * 1000)
    assert read_file(str(tmp_path / 'big.jpg'), max_bytes=1000) == b'\0' * 1000
    with pytest.raises(SampleError) as err:
        read_file(str(tmp_path / 'big.jpg'), max_bytes=999)
    assert err.value.reason == 'too-large' and 'big.jpg' in str(err.value)


# ---- 6. deeply nested JSON ---------------------------------------------------------------------
DEEP = b'{"caption": ' + b'[' * 100_000 + b']' * 100_000 + b'}'


def test_deeply_nested_json_members_are_counted_drops_in_every_builder(tmp_path):
    dalle = MAKERS['dalle3'](tmp_path / 'dalle3', n=4, faults=False)
    tar = sorted(dalle.root.rglob('*.tar'))[0]
    with tarfile.open(tar, 'a') as archive:
        for name, data in (('deep.json', DEEP), ('deep.png', encode_image(120, 100, fmt='PNG'))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    report = prepare.prepare_dalle3(str(dalle.root), num_processes=1)
    assert report.indexes[0].drops.counts['unreadable json'] == 1 and report.indexes[0].entries == 4

    redcaps = MAKERS['redcaps5m'](tmp_path / 'redcaps', n=4, faults=False)
    records = json.loads((redcaps.root / 'redcaps5m_data.json').read_text())
    report = prepare.prepare_redcaps5m(str(redcaps.root), num_processes=1)  # extract first
    (redcaps.root / 'raw' / records[0]['annotation']).write_bytes(DEEP)
    report = prepare.prepare_redcaps5m(str(redcaps.root), num_processes=1)
    assert report.indexes[0].drops.counts['unreadable json'] == 1


# ---- 7. a pax size beyond the file -------------------------------------------------------------
def test_an_absurd_pax_size_is_the_same_damage_in_both_modes(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    with tarfile.open(root / 'evil.tar', 'w', format=tarfile.PAX_FORMAT) as archive:
        for name, data, pax in (('good.jpg', b'good', {}), ('evil.jpg', b'abc', {'size': str(10 ** 30)})):
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = len(data), pax
            archive.addfile(info, io.BytesIO(data))
    results = {step.name: step.process(TarJob(str(root), 'evil.tar', 'out')) for step in (EXTRACT, INDEX_MEMBERS)}
    for result in results.values():
        assert result.status == 'partial' and result.members == 1 and 'evil.jpg' in result.error
    assert (root / 'out' / 'good.jpg').read_bytes() == b'good' and not (root / 'out' / 'evil.jpg').exists()


# ---- 8. captions that are not text -------------------------------------------------------------
def test_captions_that_are_not_text_are_bad_captions_and_a_list_gives_its_first(tmp_path, dataset_over):
    images = [good_image(tmp_path / 'images', f'{i}.jpg', i)['image'] for i in range(7)]
    captions = ['plain text', ['first', 'second'], {'en': 'x'}, 42, True, float('nan'), float('inf')]
    # json.dumps writes NaN and Infinity as JSON's extensions, as Python-made indexes hold them
    dataset = dataset_over([{'image': image, 'caption': caption} for image, caption in zip(images, captions)])
    first = dataset.prepare_data(1)['input_ids'].tolist()
    assert first == dataset._encode(dataset.prompt_of('first')).tolist()
    assert [reason_of(dataset, i) for i in range(2, 7)] == ['bad-caption'] * 5


# ---- 9. resuming on other records: test_resume.py ----------------------------------------------
# ---- 10. latents of another shape --------------------------------------------------------------
def test_a_latent_of_another_shape_is_a_counted_skip_naming_the_file(tmp_path, dataset_over):
    latents = tmp_path / 'latents'
    latents.mkdir()
    records = [good_image(tmp_path / 'images', f'{i}.jpg', i) for i in range(8)]
    for i, record in enumerate(records):
        torch.save(torch.zeros((4, 8, 8) if i != 6 else (4, 16, 16)), latents / f'{record["image"]}.pt')
    dataset = dataset_over(records, image_latents_folder=str(latents))  # no record: the first latents decide
    with pytest.raises(SampleError, match=r'6.jpg.pt: a latent of shape \[4, 16, 16\], not \[4, 8, 8\]') as err:
        dataset.prepare_data(6)
    assert err.value.reason == 'bad-latent-shape'
    (latents / 'latents.json').write_text(json.dumps({'format': 1, 'vae': 'v', 'image_size': 32, 'buckets': None,
                                                      'shapes': {'32x32': [4, 16, 16]}}))
    recorded = dataset_over(records, image_latents_folder=str(latents))
    assert recorded.prepare_data(6)['image_latents'].shape == (4, 16, 16)
    assert reason_of(recorded, 0) == 'bad-latent-shape'
    with pytest.raises(ValueError, match="made with {'image_size': 32}.*asks for {'image_size': 64}"):
        dataset_over(records, image_latents_folder=str(latents), image_size=64)


# ---- 11. --resize-to on members whose bytes are another format ---------------------------------
def test_resize_to_keeps_the_real_format_and_never_loses_a_tar(tmp_path):
    cmyk = encode_image(400, 300, fmt='JPEG', mode='CMYK', seed=1)
    grey16 = np.linspace(0, 65535, 400 * 300).reshape(300, 400).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey16).save(buffer, 'PNG')
    root = tmp_path / 'blip' / 'raw'
    root.mkdir(parents=True)
    with tarfile.open(root / 'a.tar', 'w') as archive:
        for name, data in (('cmyk.png', cmyk), ('deep.jpg', buffer.getvalue()), ('cmyk.txt', b'a'), ('deep.txt', b'b'),
                           ('broken.jpg', cmyk[:300]), ('broken.txt', b'c')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    report = prepare.prepare_blip3o60k(str(tmp_path / 'blip'), num_processes=1,
                                       step=type(EXTRACT)(resize_to=100))
    assert report.tars['raw/a.tar']['status'] == 'done' and report.tars['raw/a.tar']['members'] == 6
    with Image.open(root / 'a' / 'cmyk.png') as img:
        assert img.format == 'JPEG' and min(img.size) == 100
    with Image.open(root / 'a' / 'deep.jpg') as img:
        assert img.format == 'PNG' and min(img.size) == 100
        values = np.asarray(img.convert('L'), dtype=float)
        assert 100 < values.mean() < 155 and values.min() < 40  # the ramp, not a white page
    assert report.not_resized().counts == {'bad-image': 1}  # kept as it was, for the dataset to judge


# ---- 13. Ctrl-C during prepare -----------------------------------------------------------------
def test_ctrl_c_during_prepare_says_what_was_kept_in_one_line(tmp_path):
    expected = MAKERS['blip3o60k'](tmp_path / 'blip', n=12, faults=False, shards=4)
    tars = sorted(path.relative_to(expected.root).as_posix() for path in expected.root.glob('raw/*.tar'))
    hook = tmp_path / 'hook'
    hook.mkdir()
    # One tar never ends: the run is stopped there, as a person stops a long one.
    (hook / 'sitecustomize.py').write_text(
        'import os, time\nfrom src.prepare import extract\noriginal = extract.Extract.process\n'
        'def process(self, job):\n'
        '    if job.name == os.environ["T2I_BLOCKED_TAR"]:\n'
        '        time.sleep(600)\n'
        '    return original(self, job)\n'
        'extract.Extract.process = process\n')
    command = [sys.executable, str(REPO / 'tools' / 'prepare_blip3o60k.py'), '--root', str(expected.root),
               '--num-processes', '2']
    process = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=f'{hook}:{REPO}', T2I_BLOCKED_TAR=tars[1]),
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    markers = expected.root / '.prepare' / 'extract'
    deadline = time.monotonic() + 120
    while len(list(markers.rglob('*.done.json'))) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal does: the whole group, workers too
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and 'Traceback' not in stderr, stderr[-3000:]
    assert 'interrupted: 3 tars are done and kept' in stderr and 'run the same command again' in stderr
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0 and '3 skipped (done by an earlier run)' in done.stderr
