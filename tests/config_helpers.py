"""Helpers for tests that build a dataset config and check what it yields."""
from __future__ import annotations

from pathlib import Path

from mmengine.config import Config
from mmengine.runner import Runner

from src.synthetic.local_config import localize

CONFIGS = Path(__file__).resolve().parents[1] / 'configs' / 'datasets'


def load(name: str) -> Config:
    return Config.fromfile(str(CONFIGS / f'{name}.py'))


def build(name: str, tokenizer_path: str, dataset_overrides: dict | None = None, **overrides):
    """``configs/datasets/<name>.py``'s dataloader, small and deterministic, relative to the cwd."""
    loader_cfg = localize(load(name), tokenizer_path,
                          dataset_overrides=dict(image_size=64, unconditional=0, seed=0, **(dataset_overrides or {})),
                          batch_size=4, num_workers=0, pin_memory=False, **overrides)
    return Runner.build_dataloader(loader_cfg, seed=0)


def expected_ids(tokenizer, template: dict, caption: str) -> list[int]:
    prompt = template['INSTRUCTION'].format(input=template['GENERATION'].format(input=caption.strip()))
    return tokenizer.encode(prompt + template['IMG_START_TOKEN'])[:128]


def ids_by_image(dataset) -> dict[str, list[int]]:
    """Every sample's ``input_ids`` by its ``image_file`` (images checked to be 64 px squares)."""
    found = {}
    for idx in range(len(dataset)):
        sample = dataset[idx]
        assert sample['pixel_values'].shape == (3, 64, 64)
        found.setdefault(sample['image_file'], sample['input_ids'].tolist())
    return found


def assert_reads_expected_samples(dataset, expected_samples: dict, tokenizer, template: dict) -> None:
    """``dataset`` yields exactly ``expected_samples`` (image -> caption), each with its own caption."""
    found = ids_by_image(dataset)
    assert set(found) == set(expected_samples)
    for image, caption in expected_samples.items():
        assert found[image] == expected_ids(tokenizer, template, caption), image
