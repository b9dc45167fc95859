"""Tokenizer and streaming text: agreement with `transformers`, whole UTF-8 characters, stop strings."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as FastTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tandem.engine.detokenize import IncrementalDetokenizer, StopMatcher
from tandem.errors import InvalidRequestError
from tandem.model.tokenizer import Tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Ünïcödé façade, naïve café.",
    "日本語のテキストと絵文字 🎉🚀 mixed with English words.",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
]
LLAMA3_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    # Few merges on purpose: multi-byte characters then span several tokens.
    tokenizer = FastTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>",
                "chat_template": LLAMA3_STYLE_TEMPLATE,
            }
        )
    )
    return directory


def test_encoding_and_chat_template_match_transformers(tokenizer_dir):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tokenizer_dir)
    ours = Tokenizer(tokenizer_dir)
    for text in CORPUS:
        assert ours.encode(text) == reference.encode(text)
        assert ours.decode(ours.encode(text)) == reference.decode(
            reference.encode(text), skip_special_tokens=True
        )
    messages = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Hello 🎉"}]
    expected = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours.render_chat(messages) == expected
    expected_ids = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(expected_ids, list):  # transformers 5 returns a BatchEncoding
        expected_ids = expected_ids["input_ids"]
    assert ours.encode_chat(messages) == list(expected_ids)
    assert ours.eos_token_ids == {ours.encode("<|eot_id|>", add_special_tokens=False)[0]}


def test_chat_rejects_unknown_roles(tokenizer_dir):
    with pytest.raises(InvalidRequestError, match="role"):
        Tokenizer(tokenizer_dir).render_chat([{"role": "wizard", "content": "hi"}])


def test_streamed_text_never_splits_a_character(tokenizer_dir):
    tokenizer = Tokenizer(tokenizer_dir)
    text = "日本語のテキストと絵文字 🎉🚀 façade"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text) // 2, "the test needs characters split across tokens"
    detokenizer = IncrementalDetokenizer(tokenizer.decode, tokenizer.encode("Prompt:"))
    pieces = [detokenizer.push(token) for token in ids]
    pieces.append(detokenizer.flush())
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == text
    assert sum(1 for piece in pieces if piece == "") > 0, "some tokens completed no character"


@pytest.mark.parametrize(
    "chunks,stops,expected",
    [
        (["Hello wor", "ld, and more"], ["world"], "Hello "),
        (["ab", "c", "d##", "#e"], ["###"], "abcd"),
        (["no stop here"], ["zzz"], "no stop here"),
        (["x", "y", "z"], ["yz", "xyz!"], "x"),
        (["END"], ["END"], ""),
    ],
)
def test_stop_strings_cut_text_across_chunks(chunks, stops, expected):
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(chunk) for chunk in chunks) + matcher.flush()
    assert out == expected


def test_stop_matcher_holds_back_only_possible_prefixes():
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("abc ST") == "abc "
    assert matcher.feed("ART") == "START"
    assert not matcher.stopped
