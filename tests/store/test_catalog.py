"""The shipped catalog: its sizes agree with what the model makers publish, and its names resolve."""

from __future__ import annotations

import subprocess
import sys

import pytest

from model_configs import DEEPSEEK_V3, KIMI_K2, QWEN3_235B_A22B
from tandem.model.config import parse_model_config
from tandem.model.shapes import shape_from_hf_config
from tandem.store.catalog import WEIGHT_BYTES, catalog, find_card

# Total (and, for mixtures of experts, active) parameters as the model cards on the Hub state them.
PUBLISHED = {
    "llama-3.2-1b": (1.24e9, None),
    "llama-3.2-3b": (3.21e9, None),
    "llama-3.1-8b": (8.03e9, None),
    "llama-3.1-70b": (70.6e9, None),
    "llama-3.3-70b": (70.6e9, None),
    "llama-3.1-405b": (405.9e9, None),
    "qwen2.5-0.5b": (0.49e9, None),
    "qwen2.5-1.5b": (1.54e9, None),
    "qwen2.5-3b": (3.09e9, None),
    "qwen2.5-7b": (7.61e9, None),
    "qwen2.5-14b": (14.7e9, None),
    "qwen2.5-32b": (32.5e9, None),
    "qwen2.5-72b": (72.7e9, None),
    "qwen3-0.6b": (0.6e9, None),
    "qwen3-1.7b": (1.7e9, None),
    "qwen3-4b": (4.0e9, None),
    "qwen3-8b": (8.2e9, None),
    "qwen3-14b": (14.8e9, None),
    "qwen3-32b": (32.8e9, None),
    "mistral-7b": (7.25e9, None),
    "mistral-nemo-12b": (12.2e9, None),
    "mistral-small-24b": (23.6e9, None),
    "mistral-large-123b": (123e9, None),
    "qwen3-30b-a3b": (30.5e9, 3.3e9),
    "qwen3-235b-a22b": (235e9, 22e9),
    "mixtral-8x7b": (46.7e9, 12.9e9),
    "deepseek-v3": (671e9, 37e9),
    "kimi-k2": (1.04e12, 32e9),
}


@pytest.mark.parametrize("card", catalog(), ids=lambda card: card.id)
def test_sizes_match_the_published_counts(card):
    total, active = PUBLISHED[card.id]
    assert card.parameters == pytest.approx(total, rel=0.02)
    assert card.active_parameters == pytest.approx(active or total, rel=0.03)
    assert card.bytes_per_dtype == {
        dtype: int(card.parameters * size) for dtype, size in WEIGHT_BYTES.items()
    }
    assert card.layers == card.config["num_hidden_layers"]
    assert card.context == card.config["max_position_embeddings"]


def test_the_catalog_covers_the_engine_families_and_the_planned_mixtures():
    cards = catalog()
    assert set(PUBLISHED) == {c.id for c in cards}
    assert len({c.repo for c in cards}) == len(cards)
    runs = [c for c in cards if c.engine == "runs"]
    for family in ("llama", "qwen2", "qwen3", "mistral"):
        assert min(c.parameters for c in runs if c.family == family) < 8e9, family
    for family in ("llama", "qwen2", "mistral"):  # Qwen3's largest dense model is 32B
        assert max(c.parameters for c in runs if c.family == family) >= 70e9, family
    assert min(c.parameters for c in runs) < 1e9 and max(c.parameters for c in runs) > 100e9
    for card in runs:
        parse_model_config(card.config)  # the engine takes every config it claims to run
    assert {"qwen3-30b-a3b", "qwen3-235b-a22b", "mixtral-8x7b"} <= {c.id for c in runs}
    # Their Hub weights are FP8 blocks, experts included: the engine holds them compact.
    assert {"deepseek-v3", "kimi-k2"} <= {c.id for c in runs}
    assert find_card("kimi-k2").engine_refusal is None
    assert find_card("deepseek-v3").checkpoint_dtype == "float8"
    assert find_card("deepseek-v3").download_bytes == find_card("deepseek-v3").parameters


def test_the_mixtures_agree_with_the_configs_placement_is_tested_on():
    for card_id, config in (
        ("qwen3-235b-a22b", QWEN3_235B_A22B),
        ("deepseek-v3", DEEPSEEK_V3),
        ("kimi-k2", KIMI_K2),
    ):
        expected = shape_from_hf_config(config)
        assert find_card(card_id).parameters == expected.total_parameter_count()
        assert find_card(card_id).active_parameters == expected.active_parameter_count()


def test_cards_are_found_by_id_or_repo_in_any_case():
    card = find_card("qwen2.5-7b")
    assert card is not None and card.repo == "Qwen/Qwen2.5-7B-Instruct"
    assert find_card("QWEN/qwen2.5-7b-instruct") is card
    assert find_card("no-such-model") is None


def test_tandem_models_lists_the_catalog():
    result = subprocess.run(
        [sys.executable, "-m", "tandem.cli.main", "models"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["ID", "PARAMETERS"]
    for card in catalog():
        row = next(line for line in lines if line.startswith(card.id + " "))
        assert card.repo in row and card.engine in row
    assert "671.0B (37.6B active)" in result.stdout
    demo = lines[1].split()
    assert demo[0] == "demo" and demo[1].endswith("M") and "(bundled" in lines[1] and "yes" in demo
