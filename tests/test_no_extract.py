"""--no-extract: the same download, prepared without extracting and read from its tars, gives the
same index and the same samples as when extracted, through each dataset config."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from src.datasets.storage.tar_index import INDEX_NAME
from src.prepare.tar_members import INDEX_MEMBERS
from src.prepare import datasets as prepare
from src.synthetic.downloads import DEFAULT_ROOTS, MAKERS
from src.synthetic.local_config import localize

CONFIGS = Path(__file__).resolve().parents[1] / 'configs' / 'datasets'
BATCHES = 3


def read_index(path: Path):
    return pq.read_table(path).to_pylist() if path.suffix == '.parquet' else json.loads(path.read_text())


def batches(workdir: Path, name: str, tokenizer_path: str, **dataset_overrides) -> list[dict]:
    """The first batches of ``configs/datasets/<name>.py`` run from ``workdir``, on 2 workers."""
    cfg = Config.fromfile(str(CONFIGS / f'{name}.py'))
    loader_cfg = localize(cfg, tokenizer_path,
                          dataset_overrides=dict(image_size=64, unconditional=0.2, seed=0, **dataset_overrides),
                          batch_size=4, num_workers=2, pin_memory=False, persistent_workers=False)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        loader = Runner.build_dataloader(loader_cfg, seed=0)
        found = []
        for batch in loader:
            found.append(batch['data'])
            if len(found) == BATCHES:
                return found
        return found
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize('name', list(MAKERS))
def test_no_extract_gives_the_same_index_and_samples(tmp_path, name, tokenizer_path):
    extracted, packed = tmp_path / 'extracted', tmp_path / 'packed'
    for workdir, step in ((extracted, None), (packed, INDEX_MEMBERS)):
        root = workdir / DEFAULT_ROOTS[name]
        expected = MAKERS[name](root, n=6, hostile=True, truncated_tar=True)
        options = {} if step is None else {'step': step}
        report = getattr(prepare, f'prepare_{name}')(str(root), num_processes=1, **options)
        assert not report.index_error and report.indexes, report.summary()

    packed_root = packed / DEFAULT_ROOTS[name]
    assert (packed_root / INDEX_NAME).exists()
    assert not any((packed_root / expected.image_folder / image).exists() for image in expected.samples)
    assert read_index(packed_root / expected.data_path) == read_index(extracted / DEFAULT_ROOTS[name] / expected.data_path)

    from_files = batches(extracted, name, tokenizer_path)
    from_tars = batches(packed, name, tokenizer_path, tar_index=f'{DEFAULT_ROOTS[name]}/{INDEX_NAME}')
    assert len(from_tars) == len(from_files) == BATCHES
    for ours, theirs in zip(from_tars, from_files):
        assert torch.equal(ours['input_ids'], theirs['input_ids'])
        assert torch.equal(ours['attention_mask'], theirs['attention_mask'])
        assert torch.equal(ours['pixel_values'], theirs['pixel_values'])
