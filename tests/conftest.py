"""Fixtures shared by the test files: a local tokenizer and the prompt template of the configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from src.synthetic.tokenizer import build_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
PROCESSORS_CONFIG = REPO_ROOT / 'configs' / 'processors.py'

# DataLoader workers fork after the tokenizer has run: say up front that it runs single-threaded
# there, instead of the tokenizers library warning about it in every worker.
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')


@pytest.fixture(scope='session')
def tokenizer_path(tmp_path_factory) -> str:
    """A byte-level BPE tokenizer with the chat special tokens, saved for ``AutoTokenizer``."""
    return build_tokenizer(tmp_path_factory.mktemp('tokenizer') / 'tokenizer')


@pytest.fixture(scope='session')
def tokenizer(tokenizer_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tokenizer_path)


@pytest.fixture(scope='session')
def prompt_template() -> dict:
    """``prompt_template`` of configs/processors.py, as the dataset configs import it."""
    from mmengine.config import Config
    return Config.fromfile(str(PROCESSORS_CONFIG)).prompt_template.to_dict()
