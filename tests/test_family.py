"""The whole family's data code at upstream's module paths: ``src.datasets.utils``, OpenUni's editing
datasets, Harmon's image-to-text dataset, their configs as upstream wrote them (built unchanged but
for the tokenizer path), joint configs through ``CollateConcat`` and ``FixedBatchMultiSourceSampler``
resumed exactly, and a subclass written against upstream's hooks over tar shards and objects."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from PIL import Image

from src.datasets import utils
from src.datasets.collate_functions import collate_func_img2img
from src.datasets.errors import SampleError
from src.datasets.image2image.edit_datasets import ImageEditDataset, ReconstructDataset
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.datasets.understanding.caption_prompts import dense_prompts
from src.synthetic.downloads import make_caption_layout
from src.synthetic.images import encode_image
from src.synthetic.local_config import localize

UPSTREAM = Path(__file__).resolve().parent / 'upstream_configs'


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def ids_of(batch_ids, mask) -> list[list[int]]:
    return [ids[row_mask].tolist() for ids, row_mask in zip(batch_ids, mask)]


# ---- src.datasets.utils --------------------------------------------------------------------------
def test_the_token_constants_are_xtuners():
    from xtuner.utils import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
    assert (utils.IGNORE_INDEX, utils.IMAGE_TOKEN_INDEX, utils.DEFAULT_IMAGE_TOKEN) == \
        (IGNORE_INDEX, IMAGE_TOKEN_INDEX, DEFAULT_IMAGE_TOKEN)
    assert utils.INPUT_IMAGE_TOKEN_INDEX == -200 and utils.OUTPUT_IMAGE_TOKEN_INDEX == -300


def test_crop2square_cuts_the_long_side_and_load_jsonl_reads_lines(tmp_path):
    for size in ((300, 200), (200, 300), (250, 250)):
        square = utils.crop2square(Image.new('RGB', size), random.Random(0))
        assert square.size == (min(size),) * 2
    (tmp_path / 'a.jsonl').write_text('{"image": "a.jpg"}\n\n{"image": "b.jpg"}\n')
    assert utils.load_jsonl(tmp_path / 'a.jsonl') == [{'image': 'a.jpg'}, {'image': 'b.jpg'}]


def test_encode_fn_places_image_placeholders_and_labels_only_the_answer(tokenizer):
    example = {'conversation': [{'input': 'look <image>\nwhat is it?', 'output': 'a red fox'}]}
    encoded = utils.encode_fn(example, tokenizer, image_length=3, with_image_token=True)
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    eos = [tokenizer.eos_token_id]
    expected = enc('look ') + [utils.IMAGE_TOKEN_INDEX] * 3 + enc('\nwhat is it?') + enc('a red fox') + eos
    assert encoded['input_ids'] == expected
    answer = len(enc('a red fox')) + 1
    assert encoded['labels'] == [utils.IGNORE_INDEX] * (len(expected) - answer) + expected[-answer:]
    cut = utils.encode_fn(example, tokenizer, max_length=4, image_length=3, with_image_token=True, truncation='left')
    assert cut['input_ids'] == expected[-4:] and cut['labels'] == encoded['labels'][-4:]


def test_vgt_pad_input_ids_pads_on_the_side_asked():
    ids = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    left, left_mask = utils.pad_input_ids(ids, padding_value=9)
    assert left.tolist() == [[1, 2, 3], [9, 9, 4]] and left_mask.tolist() == [[True] * 3, [False, False, True]]
    right, _ = utils.pad_input_ids(ids, padding_value=9, padding_mode='right')
    assert right.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert utils.pad_input_ids(ids, batch_first=False)[0].shape == (3, 2)


# ---- editing --------------------------------------------------------------------------------------
def edit_prompt_ids(tokenizer, template, instruction, image_length) -> list[int]:
    tokens = template['IMG_START_TOKEN'] + template['IMG_CONTEXT_TOKEN'] * image_length + template['IMG_END_TOKEN']
    return tokenizer.encode(template['INSTRUCTION'].format(input=f'{tokens}\n{instruction}') +
                            template['IMG_START_TOKEN'])


def test_image_edit_pairs_give_source_target_and_the_instruction(workdir, tokenizer, prompt_template):
    records = []
    for i in range(3):
        for role, seed in (('src', i), ('tgt', i + 10)):
            Path(f'images/{i}_{role}.jpg').parent.mkdir(exist_ok=True)
            Path(f'images/{i}_{role}.jpg').write_bytes(encode_image(200, 120, seed=seed))
        Path(f'captions/{i}.json').parent.mkdir(exist_ok=True)
        Path(f'captions/{i}.json').write_text(json.dumps({'caption': f'make picture {i} brighter'}))
        records.append({'source_image': f'{i}_src.jpg', 'target_image': f'{i}_tgt.jpg', 'annotation': f'{i}.json',
                        'image': f'{i}_tgt.jpg'})
    records.append({'source_image': '../escape.jpg', 'target_image': '0_tgt.jpg', 'annotation': '0.json'})
    Path('edits.json').write_text(json.dumps(records))
    dataset = ImageEditDataset('edits.json', image_folder='images', cap_folder='captions', tokenizer=tokenizer,
                               prompt_template=prompt_template, image_size=32, image_length=4, seed=0)
    assert len(dataset) == 3  # the path that leaves its folder is dropped
    sample = dataset[1]
    assert sample['type'] == 'image2image' and sample['image_file'] == '1_tgt.jpg'
    assert sample['pixel_values_src'].shape == sample['pixel_values'].shape == (3, 32, 32)
    assert not torch.equal(sample['pixel_values_src'], sample['pixel_values'])
    assert sample['input_ids'].tolist() == edit_prompt_ids(tokenizer, prompt_template, 'make picture 1 brighter', 4)
    batch = collate_func_img2img([dataset[0], dataset[1]], pad_index=0)['data']
    assert set(batch) == {'input_ids', 'attention_mask', 'pixel_values', 'pixel_values_src'}
    assert batch['pixel_values_src'].shape == (2, 3, 32, 32)


def test_stored_edit_instructions_are_the_ids_upstream_computes_unstripped(workdir, tokenizer, prompt_template):
    # Upstream puts the instruction in the template as it is; the stored ids (pretokenize) must too.
    Path('images').mkdir()
    records = []
    for i, instruction in enumerate([' make it brighter ', 'add a hat\n', 'plain']):
        for role in ('src', 'tgt'):
            Path(f'images/{i}_{role}.jpg').write_bytes(encode_image(200, 120, seed=i))
        records.append({'source_image': f'{i}_src.jpg', 'target_image': f'{i}_tgt.jpg', 'image': f'{i}_tgt.jpg',
                        'caption': instruction})
    Path('edits.json').write_text(json.dumps(records))
    options = dict(image_folder='images', tokenizer=tokenizer, prompt_template=prompt_template, image_size=32,
                   image_length=4, seed=0)
    stored, plain = (ImageEditDataset('edits.json', pretokenize=flag, **options) for flag in (True, False))
    assert stored.prompt_ids is not None
    for i, record in enumerate(records):
        expected = edit_prompt_ids(tokenizer, prompt_template, record['caption'], 4)
        assert stored[i]['input_ids'].tolist() == plain[i]['input_ids'].tolist() == expected


def test_openuni_reconstruct_config_builds_unchanged(workdir, tokenizer_path, tokenizer):
    make_caption_layout(workdir, 'data/megalith-10m/megalith10m_all.json', 'data/megalith-10m/raw',
                        'caption_internlm2_short', 'data/megalith-10m/captions', n=5)
    cfg = Config.fromfile(str(UPSTREAM / 'openuni' / 'internvl3_1b_512' / 'megalith10m_reconstruct.py'))
    loader = Runner.build_dataloader(localize(cfg, tokenizer_path, batch_size=4, num_workers=0, pin_memory=False),
                                     seed=0)
    batch = next(iter(loader))['data']
    assert set(batch) == {'input_ids', 'attention_mask', 'pixel_values', 'pixel_values_src'}
    assert batch['pixel_values'].shape == (4, 3, 512, 512) and torch.equal(batch['pixel_values'], batch['pixel_values_src'])
    expected = edit_prompt_ids(tokenizer, cfg.prompt_template, 'Keep the image as it is.', 256)  # the class's default
    assert ids_of(batch['input_ids'], batch['attention_mask']) == [expected] * 4


# ---- understanding --------------------------------------------------------------------------------
def test_harmon_image2text_config_builds_unchanged(workdir, tokenizer_path, tokenizer):
    captions = make_caption_layout(workdir, 'data/cc3m/cc3m_densecaps.json', 'data/cc3m/raw', 'caption',
                                   'data/cc3m/raw', n=4)
    cfg = Config.fromfile(str(UPSTREAM / 'harmon' / 'image2text.py'))
    loader = Runner.build_dataloader(localize(cfg, tokenizer_path, dataset_overrides=dict(image_size=64),
                                              batch_size=4, num_workers=1, pin_memory=False), seed=0)
    batch = next(iter(loader))
    assert set(batch['data']) == {'image2text'}
    data = batch['data']['image2text']
    assert set(data) == {'input_ids', 'attention_mask', 'labels', 'pixel_values'}
    assert data['pixel_values'].shape == (4, 3, 64, 64)
    from xtuner.dataset.map_fns import template_map_fn_factory
    template_map = template_map_fn_factory(template=cfg.prompt_template)
    allowed = set()
    for caption in captions.values():
        for prompt in dense_prompts:
            example = {'conversation': [{'input': f'<image>\n{prompt}', 'output': caption.strip()}]}
            example.update(template_map(example))
            # max_length (512) bounds the text; the 1088 placeholders come on top (upstream cut them and failed)
            allowed.add(tuple(utils.encode_fn(example, tokenizer, 512 + cfg.image_length, cfg.image_length, True,
                                              True)['input_ids']))
    rows = ids_of(data['input_ids'], data['attention_mask'])
    assert all(tuple(row) in allowed for row in rows)
    assert all(row.count(utils.IMAGE_TOKEN_INDEX) == cfg.image_length for row in rows)
    assert (data['labels'][data['input_ids'] == utils.IMAGE_TOKEN_INDEX] == utils.IGNORE_INDEX).all()


# ---- a subclass written against upstream's hooks ----------------------------------------------------
class UpstreamStyleReconstruct(CaptionDataset):
    """Written as OpenUni writes its ReconstructDataset: its own __getitem__ over data_list and the hooks."""

    def __getitem__(self, idx):
        try:
            data_sample = self.data_list[idx]
            image = self._read_image(data_sample['image']).convert('RGB')
            annotation = self._read_json(data_sample['annotation'])
            pixel_values = self._process_image(image)['pixel_values']
            data = self._process_text(annotation[self.cap_source])
            data.update(pixel_values_src=pixel_values, pixel_values=pixel_values, image_file=data_sample['image'],
                        type='image2image')
            return data
        except Exception as e:  # noqa: BLE001 - upstream's way
            print(f'Error when reading {self.data_path}:{self.data_list[idx]}: {e}', flush=True)
            return self._retry()


@pytest.mark.parametrize('subclass', [UpstreamStyleReconstruct], ids=['upstream-style'])
def test_a_subclass_written_against_upstream_runs_over_tar_shards(tmp_path, tokenizer_path, subclass):
    from test_no_extract import batches
    from src.datasets.storage.tar_index import INDEX_NAME
    from src.prepare.datasets import prepare_laion6m
    from src.prepare.tar_members import INDEX_MEMBERS
    from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS
    for workdir, step in ((tmp_path / 'files', None), (tmp_path / 'tars', INDEX_MEMBERS)):
        MAKERS['laion6m'](workdir / DEFAULT_ROOTS['laion6m'], n=6, faults=False)
        assert prepare_laion6m(str(workdir / DEFAULT_ROOTS['laion6m']), num_processes=1,
                               **({'step': step} if step else {})).exit_code() == 0
    options = dict(type=subclass, cap_source='re_caption')
    from_files = batches(tmp_path / 'files', 'laion6m', tokenizer_path, **options)
    from_tars = batches(tmp_path / 'tars', 'laion6m', tokenizer_path, tar_index=f'{DEFAULT_ROOTS["laion6m"]}/{INDEX_NAME}',
                        **options)
    assert not list((tmp_path / 'tars' / DEFAULT_ROOTS['laion6m'] / 'raw').rglob('*.jpg'))  # read from the tars
    for ours, theirs in zip(from_tars, from_files):
        assert ours['pixel_values'].shape == (4, 3, 64, 64)
        assert torch.equal(ours['input_ids'], theirs['input_ids']) and torch.equal(ours['pixel_values'], theirs['pixel_values'])


def test_retry_counts_what_a_subclass_could_not_use(workdir, tokenizer, prompt_template):
    """Upstream retried without end; here each retry is a counted failure under the policy."""
    make_caption_layout(workdir, 'data.json', 'images', 'caption', 'captions', n=3)
    for image in Path('images').iterdir():
        image.write_bytes(b'not an image')
    dataset = UpstreamStyleReconstruct('data.json', image_folder='images', cap_folder='captions', tokenizer=tokenizer,
                                       prompt_template=prompt_template, image_size=32, seed=0)
    with pytest.raises(RuntimeError, match='failed-in-subclass'):
        dataset[0]


def test_empty_captions_are_skipped_or_trained_on_as_upstream(workdir, tokenizer, prompt_template):
    make_caption_layout(workdir, 'data.json', 'images', 'caption', n=2)
    records = json.loads(Path('data.json').read_text())
    records[0]['caption'] = '   '
    Path('data.json').write_text(json.dumps(records))
    options = dict(image_folder='images', tokenizer=tokenizer, prompt_template=prompt_template, image_size=32,
                   unconditional=0, seed=0)
    with pytest.raises(SampleError, match='empty'):
        CaptionDataset('data.json', **options).prepare_data(0)
    kept = CaptionDataset('data.json', empty_captions='keep', **options).prepare_data(0)
    upstream = prompt_template['INSTRUCTION'].format(input='Generate an image: ') + prompt_template['IMG_START_TOKEN']
    assert kept['input_ids'].tolist() == tokenizer.encode(upstream)


# ---- joint configs, resumed exactly ---------------------------------------------------------------
def _recording_mix_model():
    """What a unified model is given, batch by batch: the batch's type, its prompts, its pictures."""
    from mmengine.model import BaseModel

    class Model(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(1, 1)
            self.batches = []

        def forward(self, data, data_samples=None, mode='loss'):
            (kind, batch), = data.items()
            pixels = batch.get('pixel_values')
            self.batches.append({'kind': kind, 'ids': batch['input_ids'][batch['attention_mask']].tolist(),
                                 'pixels': None if pixels is None else round(float(pixels.double().sum()), 3)})
            return {'loss': self.linear(torch.zeros(1, 1)).sum() * 0}
    return Model()


def joint_loader(cfg, tokenizer_path) -> dict:
    loader = localize(cfg, tokenizer_path, dataset_overrides=dict(image_size=32, seed=0), batch_size=2, num_workers=2,
                      pin_memory=False, persistent_workers=False)
    loader.sampler.batch_size = 2
    return loader  # a ConfigDict, whose lazy objects (xtuner's qwen_chat template) resolve when read


@pytest.mark.parametrize('config', ['harmon understanding + generation', 'generation + editing'])
def test_joint_configs_resume_at_the_exact_next_batch(workdir, tokenizer_path, config):
    from resume_helpers import train
    if config == 'harmon understanding + generation':
        make_caption_layout(workdir, 'data/cc3m/cc3m_densecaps.json', 'data/cc3m/raw', 'caption', 'data/cc3m/raw', n=6)
        make_caption_layout(workdir, 'data/laion8m/laion6m_shortcaps.json', 'data/laion8m/images', 'caption',
                            'data/laion8m/laion6m_shortcaps', n=6)
        cfg = Config.fromfile(str(UPSTREAM / 'harmon' / 'image2text_text2image.py'))
        kinds = ['image2text', 'text2image', 'text2image', 'text2image', 'text2image']
    else:
        make_caption_layout(workdir, 'data/megalith-10m/megalith10m_all.json', 'data/megalith-10m/raw',
                            'caption_internlm2_short', 'data/megalith-10m/captions', n=6)
        make_caption_layout(workdir, 'data/midjourney-23m/data.json', 'data/midjourney-23m', 'caption', n=6)
        cfg = Config.fromfile(str(Path(__file__).resolve().parents[1] / 'configs/datasets/generation_editing.py'))
        kinds = ['text2image', 'text2image', 'image2image']
    loader = joint_loader(cfg, tokenizer_path)
    whole = train(workdir / 'whole', loader, 10, 5, model=_recording_mix_model())
    assert [batch['kind'] for batch in whole] == (kinds * 4)[:10]  # sources take turns, repeat[s] batches each
    resumed = train(workdir / 'resumed', loader, 10, 5, resume_from=str(workdir / 'whole' / 'iter_5.pth'),
                    model=_recording_mix_model())
    assert resumed == whole[5:]
