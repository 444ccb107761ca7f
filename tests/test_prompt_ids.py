"""CaptionDataset(pretokenize=True): the ids it stores are the ids it would compute, stored once per
tokenizer and template, rebuilt when they disagree, and never in the way when they cannot be stored."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from src.datasets.index import prompt_ids
from src.datasets.text2image.caption_datasets import CaptionDataset
from src.synthetic.images import encode_image

LONG = ' '.join(['a very long and detailed description of the picture'] * 12)


@pytest.fixture
def records(tmp_path):
    """Inline captions short and long, a caption file, records the dataset drops (too small, as
    the index says) and one without any caption: every way a prompt is found, or not."""
    folder = tmp_path / 'images'
    folder.mkdir()
    records = []
    for i in range(9):
        (folder / f'{i}.jpg').write_bytes(encode_image(160, 120, seed=i))
        records.append({'image': f'{i}.jpg', 'caption': f'  picture number {i} of a cat  ', 'width': 160,
                        'height': 120})
    records[2]['caption'] = LONG
    records[3] = {'image': '3.jpg', 'annotation': '3.txt', 'width': 160, 'height': 120}
    (folder / '3.txt').write_text('a caption that lives in a file')
    records[5].update(width=50, height=40)  # dropped from the index: positions and rows part here
    records[7] = {'image': '7.jpg', 'width': 160, 'height': 120}  # no caption: a counted failure
    (tmp_path / 'data.json').write_text(json.dumps(records))
    return records


@pytest.fixture
def make(tmp_path, tokenizer, prompt_template):
    def make(**kwargs):
        options = dict(data_path=str(tmp_path / 'data.json'), image_folder=str(tmp_path / 'images'),
                       cap_folder=str(tmp_path / 'images'), tokenizer=tokenizer,
                       prompt_template=prompt_template, image_size=32, unconditional=0.3, seed=0,
                       max_length=40, max_failure_ratio=0.9)
        return CaptionDataset(**{**options, **kwargs})
    return make


def folders(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if '.prompt-ids-' in p.name and p.is_dir())


@pytest.mark.parametrize('truncation', ['ids', 'caption'])
def test_stored_ids_are_the_ids_the_dataset_computes(make, records, truncation, tmp_path):
    plain, stored = make(truncation=truncation), make(truncation=truncation, pretokenize=True)
    assert len(plain) == len(stored) == 8 and stored.prompt_ids is not None
    assert len(folders(tmp_path)) == 1
    for _ in range(3):  # unconditional draws, the caption file, the long caption, the failure
        for idx in range(len(plain)):
            ours, theirs = stored[idx], plain[idx]
            assert ours['input_ids'].dtype == torch.long and len(ours['input_ids']) <= 40
            assert torch.equal(ours['input_ids'], theirs['input_ids']), (idx, ours['image_file'])
            assert torch.equal(ours['pixel_values'], theirs['pixel_values'])
    assert stored.failures == plain.failures and stored.failures['no-caption'] > 0
    # what is stored: inline captions only, by row of the whole index (record 5 is not a sample)
    assert stored.prompt_ids.known.tolist() == [True, True, True, False, True, True, True, False, True]
    assert stored.prompt_ids.get(2).tolist() == stored.tokenizer.encode(stored.prompt_of(LONG))
    assert len(stored.prompt_ids.get(2)) > 40  # stored whole; cut as the truncation option says


def test_a_batch_tokenizes_its_inline_prompts_first_and_gives_the_same_samples(make, records):
    plain, batched = make(truncation='caption'), make(truncation='caption')
    calls = []
    tokens = batched._tokens()
    one = tokens.one
    tokens.one = lambda text: calls.append(text) or one(text)
    tokens.many = lambda texts: pytest.fail('the batch call hangs in forked workers')
    indices = [0, 1, 2, 3, 4, 6, 0, 5, 7]  # a repeat; 6 has no caption (a failure, replaced)
    inline = [batched.caption_prompt(batched.index[idx]['caption']) for idx in (0, 1, 2, 4, 0, 5, 7)]
    for _ in range(3):  # unconditional draws differ by round
        calls.clear()
        batch = batched.__getitems__(indices)
        expected = [plain[idx] for idx in indices]
        for ours, theirs in zip(batch, expected):
            assert ours['image_file'] == theirs['image_file']
            assert torch.equal(ours['input_ids'], theirs['input_ids']), ours['image_file']
            assert torch.equal(ours['pixel_values'], theirs['pixel_values'])
        # the inline captions first, in the batch's order (3's caption is in a file, 6 has none);
        # then, with the samples: the caption file, the failure's replacement, the long caption's
        # cuts, the CFG prompt (the repeat's ids were made twice, each sample has its own)
        assert calls[:7] == inline
        assert not hasattr(batched._state(), 'batch_ids')  # handed to each sample, kept nowhere
    assert batched.failures == plain.failures and batched.failures['no-caption'] > 0


@pytest.mark.slow
def test_forked_workers_read_batches_after_the_parent_used_the_tokenizers_threads(make, records):
    # The Rust tokenizer's batch call starts a thread pool; a worker forked after that hangs if it
    # calls it. pretokenize uses it in the parent; the workers' batches then tokenize one by one.
    stored = make(unconditional=0, pretokenize=True)
    stored._tokens().many(['warm the pool'] * 64)
    plain = make(unconditional=0)
    loader = DataLoader(plain, batch_size=4, num_workers=2, multiprocessing_context='fork', timeout=120,
                        collate_fn=lambda batch: batch)
    got = {sample['image_file']: sample['input_ids'] for batch in loader for sample in batch}
    for idx in range(len(stored)):
        sample = stored[idx]
        assert torch.equal(got[sample['image_file']], sample['input_ids'])


def test_a_dataloader_with_workers_reads_the_same_ids(make, records):
    plain, stored = make(unconditional=0), make(unconditional=0, pretokenize=True)
    loader = DataLoader(stored, batch_size=None, num_workers=2, multiprocessing_context='spawn')
    got = {sample['image_file']: sample['input_ids'] for sample in loader}
    for idx in range(len(plain)):
        sample = plain[idx]
        assert torch.equal(got[sample['image_file']], sample['input_ids'])


def test_stored_once_and_mapped_by_later_runs(make, records, monkeypatch, tmp_path):
    first = make(pretokenize=True)
    monkeypatch.setattr(prompt_ids, 'tokenize_index', lambda *a, **k: pytest.fail('tokenized again'))
    again = make(pretokenize=True, train_number_samples=4)  # another selection of the same index
    assert isinstance(again.prompt_ids.ids.base, np.memmap) and again.prompt_ids.folder == first.prompt_ids.folder
    assert len(pickle.dumps(again.prompt_ids)) < 500  # a spawned worker maps the folder again
    assert pickle.loads(pickle.dumps(again.prompt_ids)).get(0).tolist() == again.prompt_ids.get(0).tolist()


def test_a_part_of_the_index_tokenizes_only_its_rows_and_the_whole_store_serves_it_later(make, records, tmp_path):
    part = make(pretokenize=True, train_number_samples=4)  # rows 0-3: the 9-row index is not tokenized whole
    assert part.prompt_ids.folder.name.endswith('-first4') and len(part.prompt_ids.known) == 4
    assert part.prompt_ids.get(8) is None
    plain = make(train_number_samples=4)
    assert [part[i]['input_ids'].tolist() for i in range(4)] == [plain[i]['input_ids'].tolist() for i in range(4)]
    whole = make(pretokenize=True)
    smaller = make(pretokenize=True, train_number_samples=2)
    assert smaller.prompt_ids.folder in (part.prompt_ids.folder, whole.prompt_ids.folder)  # no third store
    assert len(folders(tmp_path)) == 2


def test_another_template_or_tokenizer_setting_is_stored_apart(make, records, prompt_template, tmp_path):
    make(pretokenize=True)
    other = dict(prompt_template, INSTRUCTION='<|im_start|>system\n{input}<|im_end|>\n')
    dataset = make(pretokenize=True, prompt_template=other)
    assert dataset[0]['input_ids'].tolist() == make(prompt_template=other)[0]['input_ids'].tolist()
    make(pretokenize=True, tokenizer_kwargs=dict(add_special_tokens=False))
    assert len(folders(tmp_path)) == 3


def test_ids_that_disagree_with_the_tokenizer_are_rebuilt(make, records, tmp_path):
    folder = make(pretokenize=True).prompt_ids.folder
    ids = np.memmap(folder / 'ids.int32', '<i4', mode='r+')
    ids[:] = ids[::-1].copy()  # as if the tokenizer had changed in a way its digest missed
    ids.flush()
    del ids
    dataset = make(pretokenize=True, unconditional=0)
    assert torch.equal(dataset[0]['input_ids'], make(unconditional=0)[0]['input_ids'])
    assert folders(tmp_path) == [folder.name]


def test_a_killed_build_leaves_nothing_that_is_read(make, records, tmp_path):
    folder = make(pretokenize=True).prompt_ids.folder
    os.rename(folder, f'{folder}.tmp-{2 ** 22 + 1}-0badf00d')  # a build killed before its rename: never read
    dataset = make(pretokenize=True, unconditional=0)
    assert folder.is_dir() and not list(tmp_path.glob('*.tmp-*'))
    assert torch.equal(dataset[0]['input_ids'], make(unconditional=0)[0]['input_ids'])


def test_where_nothing_can_be_stored_prompts_are_tokenized_as_they_are_read(make, records):
    folder = make(pretokenize=True).prompt_ids.folder
    shutil.rmtree(folder)
    Path(f'{folder}.lock').unlink()
    Path(f'{folder}.lock').mkdir()  # the lock cannot be opened, even by root (a read-only folder can)
    dataset = make(pretokenize=True, unconditional=0)
    assert dataset.prompt_ids is None and not folder.exists()
    assert torch.equal(dataset[0]['input_ids'], make(unconditional=0)[0]['input_ids'])


def test_what_cannot_be_stored_faithfully_is_refused_up_front(make, records, tokenizer_path):
    with pytest.raises(ValueError, match=r"tokenizer_kwargs .*\['padding'\]"):
        make(pretokenize=True, tokenizer_kwargs=dict(add_special_tokens=True, padding=True))
    slow = AutoTokenizer.from_pretrained(tokenizer_path, use_fast=False)
    if getattr(slow, 'backend_tokenizer', None) is None:
        with pytest.raises(ValueError, match='fast tokenizer'):
            make(pretokenize=True, tokenizer=slow)
