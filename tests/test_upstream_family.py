"""The whole upstream family on this project's src/: VGT's pretraining config (per-batch
resolutions), Harmon's text-to-image config (its dataset classes, FixedBatchMultiSourceSampler and
CollateConcat, a chat template without generation keys), and code written against upstream's
``self.data_list``. The configs are in tests/upstream_configs/, as upstream writes them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from src.datasets.text2image.caption_datasets import CaptionDataset
from src.synthetic.downloads import make_caption_layout
from src.synthetic.local_config import localize

UPSTREAM = Path(__file__).resolve().parent / 'upstream_configs'

# VGT pretrain23m_images.py's datasets: (data_path, image_folder, cap_source, caption json folder or
# None for inline captions), as its config reads them.
VGT_DATA = [
    ('data/megalith-10m/megalith10m_all.json', 'data/megalith-10m/raw', 'caption_internlm2_short',
     'data/megalith-10m/captions'),
    ('data/laion6m/data.json', 'data/laion6m/raw', 're_caption', 'data/laion6m/raw'),
    ('data/midjourney-23m/data.json', 'data/midjourney-23m', 'caption', None),
    ('data/text-to-image-2M/data/data_512_2M.json', 'data/text-to-image-2M/raw/data_512_2M', 'prompt',
     'data/text-to-image-2M/raw/data_512_2M'),
    ('data/imagenet1k-t2i/data.json', 'data/imagenet1k-t2i', 'caption', 'data/imagenet1k-t2i'),
]


@pytest.fixture
def workdir(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


def prompt_ids(tokenizer, template: dict, text: str, start_token: bool, max_length: int) -> list[int]:
    ids = tokenizer.encode(template['INSTRUCTION'].format(input=text) + (template['IMG_START_TOKEN'] if start_token else ''))
    return ids[:max_length]


def rows(batch_data: dict) -> list[list[int]]:
    return [ids[mask].tolist() for ids, mask in zip(batch_data['input_ids'], batch_data['attention_mask'])]


def test_vgt_pretrain23m_config_builds_and_resizes_each_batch(workdir, tokenizer_path, tokenizer):
    captions = {}
    for data_path, image_folder, cap_source, cap_folder in VGT_DATA:
        captions.update(make_caption_layout(workdir, data_path, image_folder, cap_source, cap_folder, n=4))
    cfg = Config.fromfile(str(UPSTREAM / 'vgt' / 'pretrain23m_images.py'))
    # The tokenizer path is the one change; fewer workers only to keep the test quick on 2 cores.
    loader = Runner.build_dataloader(localize(cfg, tokenizer_path, num_workers=2), seed=0)

    assert len(loader.dataset) == 5 * 4
    batch = next(iter(loader))['data']
    assert batch['pixel_values'].shape == (32, 3, 448, 448) and batch['batch_resolution'] == (448, 448)
    template = cfg.prompt_template
    allowed = {tuple(prompt_ids(tokenizer, template, template['GENERATION'].format(input=c), False, 256))
               for c in captions.values()}
    allowed.add(tuple(prompt_ids(tokenizer, template, template['CFG'], False, 256)))
    assert all(tuple(ids) in allowed for ids in rows(batch))  # IMG_START_TOKEN_FOR_GENERATION=False


def _tokenizer(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def test_vgt_train_number_samples_keeps_the_first_records(workdir, tokenizer_path, prompt_template):
    make_caption_layout(workdir, 'data.json', 'images', 'caption', n=6)
    common = dict(image_folder='images', tokenizer=_tokenizer(tokenizer_path), prompt_template=prompt_template)
    first = CaptionDataset('data.json', train_number_samples=4, **common)
    full = CaptionDataset('data.json', **common)
    assert len(first) == 4 and len(full) == 6
    assert list(first.data_list) == list(full.data_list[:4])


def test_harmon_text2image_config_builds_with_its_sampler_and_collate(workdir, tokenizer_path, tokenizer):
    captions = make_caption_layout(workdir, 'data/laion8m/laion6m_shortcaps.json', 'data/laion8m/images', 'caption',
                                   'data/laion8m/laion6m_shortcaps', n=5)
    cfg = Config.fromfile(str(UPSTREAM / 'harmon' / 'text2image.py'))
    loader = Runner.build_dataloader(localize(cfg, tokenizer_path, num_workers=2), seed=0)

    batch = next(iter(loader))
    assert set(batch) == {'data', 'data_samples'} and set(batch['data']) == {'text2image'}
    data = batch['data']['text2image']
    assert data['pixel_values'].shape == (32, 3, 512, 512)
    # qwen_chat has no GENERATION, CFG or IMG_START_TOKEN: Harmon's own prompt, no start token.
    template = cfg.prompt_template
    allowed = {tuple(prompt_ids(tokenizer, template, f'Generate an image: {c}', False, 128)) for c in captions.values()}
    allowed.add(tuple(prompt_ids(tokenizer, template, 'Generate an image.', False, 128)))
    assert all(tuple(ids) in allowed for ids in rows(data))
    assert (data['input_ids'][~data['attention_mask']] == cfg.pad_index).all()


def test_harmon_dataset_classes_keep_their_keywords(workdir, tokenizer_path, prompt_template):
    from src.datasets.text2image.text2image import LargeText2ImageDataset, Text2ImageDataset
    inline = make_caption_layout(workdir, 'inline.json', 'images', 'prompt', n=3)
    dataset = Text2ImageDataset('inline.json', 'images', 64, unconditional=0, tokenizer=_tokenizer(tokenizer_path),
                                prompt_template=prompt_template, crop_image=False, cap_source='prompt', seed=0)
    sample = dataset[0]
    assert sample['type'] == 'text2image' and sample['pixel_values'].shape == (3, 64, 64)
    assert sample['image_file'] in inline and dataset.local_folder == 'images'
    annotated = make_caption_layout(workdir, 'large.json', 'raw', 'caption', 'raw', n=3)
    large = LargeText2ImageDataset(data_path='large.json', local_folder='raw', image_size=64, unconditional=0,
                                   tokenizer=_tokenizer(tokenizer_path), prompt_template=prompt_template)
    assert large.cap_folder == 'raw' and large[0]['image_file'] in annotated


def test_code_written_against_upstreams_data_list_works(workdir, tokenizer_path, prompt_template):
    """OpenUni's ReconstructDataset and other subclasses read ``self.data_list[idx]``."""
    class ReconstructDataset(CaptionDataset):
        def __getitem__(self, idx):
            record = self.data_list[idx]
            return os.path.join(self.image_folder, record['image'])

    captions = make_caption_layout(workdir, 'data.json', 'images', 'caption', n=5)
    dataset = ReconstructDataset('data.json', image_folder='images', tokenizer=_tokenizer(tokenizer_path),
                                 prompt_template=prompt_template)
    records = dataset.data_list
    assert len(records) == 5 and records[-1] == records[4] and list(records[1:3]) == [records[1], records[2]]
    assert [record['caption'] for record in records] == list(captions.values())
    assert dataset[2] == os.path.join('images', records[2]['image'])
    with pytest.raises(TypeError):
        records[0] = {}
    with pytest.raises(IndexError):
        records[5]
