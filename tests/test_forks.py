"""The forks' subclasses on the project's base, written as the forks write them (RecA's OpenUni and
Harmon: HorizonWind2004/OpenUni e982685 ``edit_datasets.py``, wishhyt/reconstruction-alignment
b4ea7a1 ``Harmon/src/datasets/text2image/text2image.py``): a ``data_list`` built by appending in
their own ``_load_data`` or assigned whole, no ``super().__init__()``, a glob or a hub id as
``data_path``. Each builds and reads samples; the records stay as the subclass made them."""
from __future__ import annotations

import glob
import io
import json
import os
import random
import tarfile

import numpy as np
import pytest
import torch
from einops import rearrange
from PIL import Image
from torch.utils.data import DataLoader

from src.datasets.collate_functions import collate_func_img2img
from src.datasets.image2image.edit_datasets import ImageEditDataset
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.datasets.text2image.text2image import Text2ImageDataset
from src.datasets.utils import crop2square
from src.synthetic.downloads import make_caption_layout
from src.synthetic.images import encode_image

RECON_PROMPTS = ['Reconstruct the image.', 'Keep the image as it is.']
HUB = {}  # hub id -> the local rows a test stands in for the hub's dataset with (no network here)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs' relative paths
    return tmp_path


def write_shards(folder, shards: int = 2, per_shard: int = 3) -> list[str]:
    """``<folder>/<n>.tar`` webdataset shards of ``<key>.jpg`` + ``<key>.txt``, as BLIP3o-60k's."""
    os.makedirs(folder, exist_ok=True)
    captions = []
    for shard in range(shards):
        with tarfile.open(os.path.join(folder, f'{shard:02d}.tar'), 'w') as tar:
            for i in range(per_shard):
                key, caption = f'{shard}{i:03d}', f'picture {shard} {i} of a quiet harbour'
                for name, data in ((f'{key}.jpg', encode_image(96 + 8 * i, 120, seed=shard * 10 + i)),
                                   (f'{key}.txt', caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                captions.append(caption)
    return captions


def shard_rows(pattern: str) -> list[dict]:
    """The rows of the shards ``pattern`` names, as ``load_dataset('webdataset', ...)`` gives them."""
    rows = {}
    for path in sorted(glob.glob(pattern)):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.rsplit('.', 1)
                rows.setdefault((path, key), {})[ext] = tar.extractfile(member).read()
    return [{'jpg': row['jpg'], 'txt': row['txt'].decode()} for row in rows.values()]


def to_pixels(image: Image.Image, size: int) -> torch.Tensor:
    image = crop2square(image).resize(size=(size, size))
    return rearrange(torch.from_numpy(np.array(image)).float() / 255 * 2 - 1, 'h w c -> c h w')


# ---- RecA's OpenUni: its own data_list by appending, a glob or a hub id as data_path ----------------
class BLIP3oReconstructionDataset(ImageEditDataset):
    """As RecA's OpenUni writes it: attributes set, ``_load_data`` called, then ``super().__init__``
    (which calls ``_load_data`` again); records ``{'image': <row>}`` appended to ``[]``."""

    def __init__(self, data_path=None, cache_dir=None, max_samples=None, *args, **kwargs):
        self.data_path = data_path
        self.cache_dir = cache_dir
        self.max_samples = max_samples
        self.prompt_list = RECON_PROMPTS
        self._load_data(data_path)
        super().__init__(data_path=data_path, *args, **kwargs)

    def _load_data(self, data_path):
        self.dataset = shard_rows(self.data_path) if '*' in data_path else HUB[data_path]
        self.data_list = []
        for idx in range(len(self.dataset)):
            if self.max_samples and idx >= self.max_samples:
                break
            self.data_list.append({'image': idx})

    def _read_image(self, image_idx):
        return Image.open(io.BytesIO(self.dataset[image_idx]['jpg']))

    def _process_image(self, image):
        return to_pixels(image, self.image_size)

    def __getitem__(self, idx):
        if self.debug:
            idx = 0
        try:
            data_sample = self.data_list[idx]
            image = self._read_image(data_sample['image']).convert('RGB')
            prompt = random.choice(self.prompt_list)
            pixel_values = pixel_values_src = self._process_image(image)
            data = self._process_text(prompt)
            data.update(pixel_values_src=pixel_values_src, pixel_values=pixel_values,
                        image_dir=self.image_folder, image_file=data_sample['image'], type='image2image')
            return data
        except Exception as e:  # noqa: BLE001 - the fork's way
            print(f'Error when reading {self.data_path}:{self.data_list[idx]}: {e}', flush=True)
            return self._retry()


@pytest.mark.parametrize('source', ['glob', 'hub-id'])
def test_a_data_list_built_by_appending_is_the_subclass_records(workdir, tokenizer, prompt_template, source):
    write_shards('data/BLIP3o-60k')
    data_path = 'data/BLIP3o-60k/*.tar'
    if source == 'hub-id':
        data_path = 'brivangl/midjourney-v6-llava'
        HUB[data_path] = shard_rows('data/BLIP3o-60k/*.tar')
    dataset = BLIP3oReconstructionDataset(data_path=data_path, max_samples=5, image_size=64,
                                          prompt_template=prompt_template, tokenizer=tokenizer)
    assert len(dataset) == 5 and dataset.data_list == [{'image': i} for i in range(5)]
    assert dataset[3]['image_file'] == 3  # the record as the subclass made it, an int
    dataset.data_list.append({'image': 5})  # the very list: appends after construction count
    assert len(dataset) == 6

    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_func_img2img)
    batch = next(iter(loader))['data']
    assert batch['pixel_values'].shape == batch['pixel_values_src'].shape == (3, 3, 64, 64)
    assert batch['pixel_values'].dtype == torch.float32 and batch['input_ids'].dtype == torch.long
    instruction = dataset.prompt_of(RECON_PROMPTS[0])
    assert len(batch['input_ids'][0]) >= len(tokenizer.encode(instruction)) - 1


# ---- a list assigned whole: held as made, read by the project's policies ---------------------------
class AssignedList(CaptionDataset):
    def _load_data(self, data_path):
        with open(data_path) as f:
            names = [line.strip() for line in f if line.strip()]
        self.data_list = [dict(image=name, caption=f'a picture named {name}', width=1, height=1) for name in names]


def test_an_assigned_list_is_not_refiltered_and_is_read_by_the_policies(workdir, tokenizer, prompt_template):
    os.makedirs('images')
    for i in range(3):
        with open(f'images/{i}.jpg', 'wb') as f:
            f.write(encode_image(120, 100, seed=i))
    with open('names.txt', 'w') as f:  # an index the base could not read; the subclass's own format
        f.write('0.jpg\n1.jpg\n../outside.jpg\n2.jpg\n')
    dataset = AssignedList('names.txt', image_folder='images', image_size=64, unconditional=0, seed=0,
                           tokenizer=tokenizer, prompt_template=prompt_template)
    # width/height 1 would be "too small" for the index's rules: the subclass's records are its own.
    assert len(dataset) == 4 and dataset.data_list[2]['image'] == '../outside.jpg'
    sample = dataset[0]
    assert sample['image_file'] == '0.jpg' and sample['pixel_values'].shape == (3, 64, 64)
    assert sample['input_ids'].tolist() == dataset._encode(dataset.prompt_of('a picture named 0.jpg')).tolist()
    # The path that climbs out of its folder is refused where it is read, counted and replaced.
    assert dataset[2]['image_file'] in {'0.jpg', '1.jpg', '2.jpg'}
    assert dataset.failures['unsafe-path'] >= 1
    assert dataset.fingerprint == AssignedList('names.txt', image_folder='images', tokenizer=tokenizer,
                                               prompt_template=prompt_template).fingerprint


def test_the_base_loader_still_checks_its_data_path(workdir, tokenizer, prompt_template):
    with pytest.raises(FileNotFoundError, match="CaptionDataset: data_path 'data/BLIP3o-60k/\\*.tar' does not exist"):
        CaptionDataset('data/BLIP3o-60k/*.tar', tokenizer=tokenizer, prompt_template=prompt_template)


# ---- RecA's Harmon: no super().__init__(), attributes set, a glob of tars --------------------------
class ReconstructionDataset(Text2ImageDataset):
    """As RecA's Harmon writes it: upstream's attributes set instead of ``super().__init__()``; its
    own ``_load_data`` (tars extracted into ``cache_dir``), ``_read_image`` and ``_process_text``;
    the base's ``_process_image``, ``__len__`` and ``_retry``."""

    def __init__(self, data_path, image_size, unconditional=0.1, tokenizer=None, prompt_template=None,
                 max_length=1024, crop_image=False, cap_source='caption', max_samples=None, cache_dir='cache'):
        self.data_path = data_path
        self.unconditional = unconditional
        self.local_folder = None
        self.cap_source = cap_source
        self.image_size = image_size
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.max_length = max_length
        self.crop_image = crop_image
        self.max_samples = max_samples
        self.cache_dir = cache_dir
        os.makedirs(self.cache_dir, exist_ok=True)
        self._load_data(data_path)
        self.recon_prompts = RECON_PROMPTS

    def _load_data(self, data_path):
        self.tar_files = sorted(glob.glob(os.path.expanduser(data_path)))
        self.data_list = []
        self.image_cache_paths = {}
        for tar_idx, tar_path in enumerate(self.tar_files):
            extract_dir = os.path.join(self.cache_dir, str(tar_idx))
            with tarfile.open(tar_path) as tar:
                tar.extractall(extract_dir, filter='data')
                for member in tar.getmembers():
                    if member.name.endswith('.jpg'):
                        self.data_list.append({'image': member.name, 'tar_idx': tar_idx})
                        self.image_cache_paths[member.name] = os.path.join(extract_dir, member.name)
        if len(self.data_list) == 0:
            raise RuntimeError(f'No valid images found in tar archives: {data_path}')

    def _read_image(self, image_file):
        if image_file not in self.image_cache_paths:
            raise ValueError(f'Image file {image_file} not found in cache')
        return Image.open(self.image_cache_paths[image_file])

    def _process_text(self, text):
        prompt = random.choice(self.recon_prompts)
        final_prompt = 'Generate an image.' if random.uniform(0, 1) < self.unconditional else f'\n{prompt}'
        final_prompt = self.prompt_template['INSTRUCTION'].format(input=final_prompt)
        input_ids = self.tokenizer.encode(final_prompt, add_special_tokens=True, return_tensors='pt')[0]
        input_ids = torch.cat([input_ids[:3], torch.tensor([-200], dtype=torch.long), input_ids[3:]], dim=0)
        return dict(input_ids=input_ids[:self.max_length])

    def __getitem__(self, idx):
        try:
            data_sample = self.data_list[idx]
            image = self._read_image(data_sample['image']).convert('RGB')
            data = self._process_image(image)
            data.update(self._process_text(''))
            data.update(type='recon')
            return data
        except Exception as e:  # noqa: BLE001 - the fork's way
            print(f'Error when processing index {idx}: {e}', flush=True)
            return self._retry()


def test_a_subclass_without_super_init_builds_and_reads(workdir, tokenizer, prompt_template):
    write_shards('data/BLIP3o-60k', shards=2, per_shard=3)
    dataset = ReconstructionDataset('data/BLIP3o-60k/*.tar', image_size=64, unconditional=0,
                                    tokenizer=tokenizer, prompt_template=prompt_template)
    assert len(dataset) == 6 and dataset.data_list[0] == {'image': '0000.jpg', 'tar_idx': 0}
    sample = dataset[4]
    assert sample['type'] == 'recon' and sample['pixel_values'].shape == (3, 64, 64)
    assert sample['input_ids'][3] == -200
    # Batches as a DataLoader asks for them (__getitems__), in forked workers.
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=lambda samples: samples)
    batches = list(loader)
    assert sum(len(batch) for batch in batches) == 6
    assert all(s['pixel_values'].shape == (3, 64, 64) for batch in batches for s in batch)
    # A picture that fails in the subclass is counted by the failure policy and replaced.
    os.remove(dataset.image_cache_paths['1001.jpg'])
    replaced = dataset[dataset.data_list.index({'image': '1001.jpg', 'tar_idx': 1})]
    assert replaced['type'] == 'recon' and dataset.failures['failed-in-subclass'] >= 1


# ---- SkyR0ver/Harmon e7b88bc: super().__init__() over Harmon's keywords, a hub loader's rows --------
class BlipO3Dataset(Text2ImageDataset):
    """As SkyR0ver's Harmon writes it: a glob as data_path, the shards read by Hugging Face's
    ``load_dataset('webdataset')``, records ``{'idx': i}`` appended; the base's hooks make the sample."""

    def __init__(self, data_path='data/BLIP3o-60k/*.tar', cache_dir='hf-cache', *args, **kwargs):
        self.data_path = data_path
        self.cache_dir = cache_dir
        super().__init__(data_path=data_path, *args, **kwargs)

    def _load_data(self, data_path):
        from datasets import load_dataset
        self.dataset = load_dataset('webdataset', data_files=glob.glob(data_path), cache_dir=self.cache_dir,
                                    split='train')
        self.data_list = []
        for idx in range(len(self.dataset)):
            self.data_list.append({'idx': idx})

    def __getitem__(self, idx):
        try:
            sample = self.dataset[self.data_list[idx]['idx']]
            data = self._process_image(sample['jpg'].convert('RGB'))
            data.update(self._process_text(sample['txt']))
            data.update(type='text2image')
            return data
        except Exception as e:  # noqa: BLE001 - the fork's way
            print(f'Error when processing index {idx}: {e}', flush=True)
            return self._retry()


def test_a_harmon_subclass_over_a_hub_loader_builds_and_reads(workdir, tokenizer, prompt_template, monkeypatch):
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    captions = write_shards('data/BLIP3o-60k', shards=2, per_shard=2)
    dataset = BlipO3Dataset(local_folder='data', image_size=64, unconditional=0, tokenizer=tokenizer,
                            prompt_template=prompt_template)
    assert dataset.data_list == [{'idx': i} for i in range(4)]
    samples = [dataset[i] for i in range(4)]
    assert all(s['pixel_values'].shape == (3, 64, 64) and s['type'] == 'text2image' for s in samples)
    expected = {tuple(dataset._encode(dataset.prompt_of(caption)).tolist()) for caption in captions}
    assert {tuple(s['input_ids'].tolist()) for s in samples} == expected


# ---- no super().__init__(), the base's own hooks reading files -----------------------------------
class SetsItsOwnAttributes(CaptionDataset):
    """Upstream's attributes set by hand; the base's ``_read_image``, ``_read_json``, ``_process_image``
    and ``_process_text`` do the reading (the readers, tokenizer calls and draws made on first use)."""

    folder_attribute = 'image_folder'  # OpenUni's name for the image folder

    def __init__(self, data_path, image_folder, cap_folder, tokenizer, prompt_template, image_size=64):
        self.data_path = data_path
        setattr(self, self.folder_attribute, image_folder)
        self.cap_folder, self.cap_source = cap_folder, 'caption'
        self.tokenizer, self.prompt_template = tokenizer, prompt_template
        self.image_size, self.max_length, self.unconditional = image_size, 128, 0
        with open(data_path) as f:
            self.data_list = json.load(f)

    def __getitem__(self, idx):
        try:
            record = self.data_list[idx]
            data = self._process_image(self._read_image(record['image']))
            data.update(self._process_text(self._read_json(record['annotation'])[self.cap_source]))
            return data
        except Exception as e:  # noqa: BLE001 - upstream's way
            print(f'Error when reading {self.data_path}:{self.data_list[idx]}: {e}', flush=True)
            return self._retry()


class SetsHarmonsAttributes(SetsItsOwnAttributes):
    folder_attribute = 'local_folder'  # Harmon's


@pytest.mark.parametrize('subclass', [SetsItsOwnAttributes, SetsHarmonsAttributes])
def test_a_subclass_without_super_init_reads_through_the_base_hooks(workdir, tokenizer, prompt_template, subclass):
    captions = make_caption_layout(workdir, 'data.json', 'images', 'caption', 'captions', n=4)
    dataset = subclass('data.json', 'images', 'captions', tokenizer, prompt_template)
    assert len(dataset) == 4
    expected = {tuple(dataset._encode(dataset.prompt_of(caption)).tolist()) for caption in captions.values()}
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=lambda samples: samples)
    samples = [sample for batch in loader for sample in batch]
    assert all(s['pixel_values'].shape == (3, 64, 64) for s in samples)
    assert {tuple(s['input_ids'].tolist()) for s in samples} == expected
    # The project's rules hold: a path out of its folder is refused where it is read, counted, replaced.
    dataset.data_list[0] = dict(dataset.data_list[0], image='../data.json')
    assert dataset[0]['pixel_values'].shape == (3, 64, 64) and dataset.failures['failed-in-subclass'] >= 1


class RecordsAfterInit(Text2ImageDataset):
    """As SkyR0ver's Harmon writes ``LargeText2ImageDataset``: ``_load_data`` loads nothing, the
    list is assigned after ``super().__init__()``."""

    def __init__(self, cap_folder=None, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cap_folder = self.local_folder if cap_folder is None else cap_folder
        self.data_list = []

    def _load_data(self, data_path):
        pass


def test_records_assigned_after_super_init(workdir, tokenizer, prompt_template):
    captions = make_caption_layout(workdir, 'data.json', 'images', 'caption', n=2)
    dataset = RecordsAfterInit(data_path='no/index/here', local_folder='images', image_size=64, unconditional=0,
                               tokenizer=tokenizer, prompt_template=prompt_template)
    assert len(dataset) == 0
    for image, caption in captions.items():
        dataset.data_list.append({'image': image, 'caption': caption})
    assert len(dataset) == 2 and dataset[1]['image_file'] == list(captions)[1]
