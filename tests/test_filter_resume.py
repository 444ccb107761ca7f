"""A filter is part of the data fingerprint: a resume with other filters is refused naming both,
unless allowed, and then says how many records entered and left the dataset."""
from __future__ import annotations

import pytest
from mmengine.config import Config

from src.engine.data_facts import DataFacts
from src.engine.positions import ResumeError, plan_resume
from src.prepare.datasets import prepare_midjourney23m
from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS
from src.synthetic.local_config import localize

from config_helpers import CONFIGS
from resume_helpers import collate_with_files, train

ITERS, EVERY = 4, 2
OLD = dict(aspect=(0.5, 2.0))
NEW = dict(aspect=(0.3, 3.0), min_side=100)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('filter-resume')
    MAKERS['midjourney23m'](workdir / DEFAULT_ROOTS['midjourney23m'], n=16, faults=False)
    assert prepare_midjourney23m(str(workdir / DEFAULT_ROOTS['midjourney23m']), num_processes=1).exit_code() == 0
    return workdir


def loader(tokenizer_path, filters) -> dict:
    cfg = Config.fromfile(str(CONFIGS / 'midjourney23m.py'))
    cfg = localize(cfg, tokenizer_path, dataset_overrides=dict(image_size=32, filters=filters), batch_size=2,
                   num_workers=0, pin_memory=False, persistent_workers=False)
    cfg.collate_fn = dict(type=collate_with_files, pad_index=0)
    cfg.sampler = dict(type='InfiniteSampler', shuffle=True)
    return cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg


def test_a_resume_with_other_filters_is_refused_or_says_what_moved(data, tmp_path, tokenizer_path, monkeypatch,
                                                                   capfd):
    monkeypatch.chdir(data)
    train(tmp_path / 'whole', loader(tokenizer_path, OLD), EVERY, EVERY)
    checkpoint = str(tmp_path / 'whole' / f'iter_{EVERY}.pth')
    with pytest.raises(ResumeError, match=r"filters changed \(filters \{'aspect': \[0.5, 2.0\]\} when the checkpoint "
                                          r"was made, \{'min_side': 100.0, 'aspect': \[0.3, 3.0\]\} now\)"):
        train(tmp_path / 'refused', loader(tokenizer_path, NEW), ITERS, EVERY, resume_from=checkpoint)
    capfd.readouterr()
    resumed = train(tmp_path / 'asked', loader(tokenizer_path, NEW), ITERS, EVERY, resume_from=checkpoint,
                    allow_data_change=True)
    assert len(resumed) == ITERS - EVERY
    said = capfd.readouterr()
    line = next(line for line in (said.out + said.err).splitlines() if 'The filters changed' in line)
    assert 'records entered and' in line and 'left the dataset' in line
    # The same filters resume as ever.
    again = train(tmp_path / 'same', loader(tokenizer_path, OLD), ITERS, EVERY, resume_from=checkpoint)
    assert len(again) == ITERS - EVERY


def test_the_numbers_of_records_that_entered_and_left(data, tokenizer, prompt_template):
    from src.datasets.text2image.caption_datasets import CaptionDataset
    root = data / DEFAULT_ROOTS['midjourney23m']
    def build(filters):
        return CaptionDataset(str(root / 'data.json'), image_folder=str(root), tokenizer=tokenizer,
                              prompt_template=prompt_template, filters=filters)
    old, new = build(OLD), build(NEW)
    old_files = {old.index[i]['image'] for i in range(len(old))}
    new_files = {new.index[i]['image'] for i in range(len(new))}
    assert new.records_moved(OLD) == (len(new_files - old_files), len(old_files - new_files))
    assert old_files != new_files


def test_plan_resume_tells_filters_apart_from_other_changes():
    base = dict(batch_size=2, world_size=1, sampler='InfiniteSampler', seed=0, samples_per_epoch=None)
    saved = DataFacts(dataset_size=10, data='10:a filters=x', filters={'min_side': 1.0}, **base)
    now = DataFacts(dataset_size=8, data='8:b filters=y', filters={'min_side': 2.0}, **base)
    with pytest.raises(ResumeError, match="filters changed"):
        plan_resume(3, saved, now)
    start = plan_resume(3, saved, now, allow_data_change=True)
    assert start.skip == 6 and 'filters changed' in start.note
