"""``src.datasets.index.token_ids``: the Rust tokenizer's own call gives transformers' ids, and is used
only where it does; everything else goes through transformers."""
from __future__ import annotations

import pickle

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from src.datasets.index.token_ids import TokenIds

TEXTS = ['<|im_start|>user\nGenerate an image: a red fox in the snow<|im_end|>\n<|im_start|>assistant\n<img>',
         '  spaces around, and a special token <|im_end|> inside  ',
         'Ünïcödé façade, naïve café — 東京 夜景, ночной город',
         '',
         ' '.join(['a long prompt'] * 200)]


def transformers_ids(tokenizer, kwargs: dict) -> tuple[list, list]:
    return [tokenizer.encode(text, **kwargs) for text in TEXTS], tokenizer(TEXTS, **kwargs)['input_ids']


@pytest.mark.parametrize('kwargs', [{}, {'add_special_tokens': True}, {'add_special_tokens': False}])
def test_the_direct_call_gives_transformers_ids(tokenizer, kwargs):
    tokens = TokenIds(tokenizer, kwargs)
    assert tokens.direct  # the fast path is taken
    one, many = transformers_ids(tokenizer, kwargs)
    assert [tokens.one(text) for text in TEXTS] == one
    assert tokens.many(TEXTS) == many == one


def test_other_kwargs_go_through_transformers(tokenizer):
    kwargs = dict(truncation=True, max_length=5)
    tokens = TokenIds(tokenizer, kwargs)
    assert not tokens.direct
    one, many = transformers_ids(tokenizer, kwargs)
    assert [tokens.one(text) for text in TEXTS] == one and tokens.many(TEXTS) == many
    assert max(len(ids) for ids in one) == 5


def test_truncation_left_set_by_another_caller_is_not_applied(tokenizer_path):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    tokens = TokenIds(tokenizer, {})
    whole = tokens.one(TEXTS[-1])
    tokenizer(TEXTS[-1], truncation=True, max_length=8)  # leaves the Rust tokenizer truncating
    assert tokenizer.backend_tokenizer.truncation is not None
    assert tokens.one(TEXTS[-1]) == whole and tokens.many(TEXTS[-1:]) == [whole]
    assert len(whole) > 8


def test_special_tokens_split_as_the_tokenizer_says(tokenizer_path):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, split_special_tokens=True)
    tokens = TokenIds(tokenizer, {})
    assert [tokens.one(text) for text in TEXTS] == transformers_ids(tokenizer, {})[0]
    assert tokens.one('<|im_end|>') != AutoTokenizer.from_pretrained(tokenizer_path).encode('<|im_end|>')


class _Lowercasing(PreTrainedTokenizerFast):
    """A tokenizer class whose encode path changes the text: its own ids must be used."""

    def _batch_encode_plus(self, batch_text_or_text_pairs, *args, **kwargs):
        return super()._batch_encode_plus([text.lower() for text in batch_text_or_text_pairs], *args, **kwargs)


def test_a_class_with_its_own_encode_path_goes_through_it(tokenizer_path):
    tokenizer = _Lowercasing.from_pretrained(tokenizer_path)
    tokens = TokenIds(tokenizer, {})
    assert not tokens.direct
    assert tokens.one('A Red FOX') == tokenizer.encode('a red fox') != tokenizer.backend_tokenizer.encode('A Red FOX').ids


def test_it_pickles_for_spawned_workers(tokenizer):
    tokens = pickle.loads(pickle.dumps(TokenIds(tokenizer, {})))
    assert tokens.direct and tokens.one(TEXTS[0]) == tokenizer.encode(TEXTS[0])
    whole = tokens.one(TEXTS[-1])
    tokens.tokenizer(TEXTS[-1], truncation=True, max_length=8)  # the copy's own Rust tokenizer is looked at
    assert tokens.one(TEXTS[-1]) == whole
