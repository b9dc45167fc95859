"""`tandem generate` as a user runs it: a real process, streamed text, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from cli_helpers import assert_one_line_error


def tandem(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli.main", *args], capture_output=True, text=True, timeout=timeout
    )


def test_generate_streams_text_and_reports_timing(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    result = tandem(
        "generate",
        "--model",
        str(checkpoint.path),
        "--prompt",
        "The quick brown",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--ignore-eos",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "time to first token" in result.stderr and "tokens/s" in result.stderr


def test_generate_on_the_demo_model_with_chat_template():
    result = tandem(
        "generate",
        "--model",
        "demo",
        "--prompt",
        "What say you, good sir?",
        "--chat",
        "--max-tokens",
        "40",
        "--seed",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) >= 3


@pytest.fixture
def broken_copy(checkpoint_factory, tmp_path):
    def make(family: str = "llama-gqa"):
        source = checkpoint_factory(family).path
        target = tmp_path / "broken"
        shutil.copytree(source, target)
        return target

    return make


def test_missing_weights(broken_copy):
    path = broken_copy()
    (path / "model.safetensors").unlink()
    assert_one_line_error(tandem("generate", "--model", str(path), "--prompt", "hi"), "no *.safetensors")


def test_truncated_weights(broken_copy):
    path = broken_copy()
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert_one_line_error(tandem("generate", "--model", str(path), "--prompt", "hi"), "truncated")


def test_wrong_tensor_shape(broken_copy):
    path = broken_copy()
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][
        :, :10
    ].clone()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    assert_one_line_error(
        tandem("generate", "--model", str(path), "--prompt", "hi"),
        "model.layers.1.mlp.up_proj.weight",
        "shape",
    )


def test_missing_tensor(broken_copy):
    path = broken_copy()
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.2.self_attn.k_proj.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    assert_one_line_error(
        tandem("generate", "--model", str(path), "--prompt", "hi"),
        "model.layers.2.self_attn.k_proj.weight",
        "missing",
    )


def test_unsupported_model_type_names_the_supported_ones(broken_copy):
    path = broken_copy()
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (path / "config.json").write_text(json.dumps(config))
    assert_one_line_error(
        tandem("generate", "--model", str(path), "--prompt", "hi"),
        "gpt_neox",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
    )


def test_prompt_longer_than_the_context(checkpoint_factory):
    path = checkpoint_factory("llama-gqa").path
    assert_one_line_error(
        tandem("generate", "--model", str(path), "--prompt", "word " * 40, "--context", "16"), "context"
    )


@pytest.mark.parametrize(
    "flag,value,fragment",
    [
        ("--temperature", "-1", "temperature"),
        ("--top-p", "0", "top_p"),
        ("--top-k", "-3", "top_k"),
        ("--min-p", "1.5", "min_p"),
        ("--presence-penalty", "9", "presence_penalty"),
        ("--max-tokens", "0", "max_tokens"),
        ("--device", "tpu", "device"),
        ("--dtype", "int3", "dtype"),
    ],
)
def test_invalid_values(checkpoint_factory, flag, value, fragment):
    path = checkpoint_factory("llama-gqa").path
    assert_one_line_error(tandem("generate", "--model", str(path), "--prompt", "hi", flag, value), fragment)


def test_missing_model_directory(tmp_path):
    assert_one_line_error(
        tandem("generate", "--model", str(tmp_path / "nope"), "--prompt", "hi"), "not found"
    )
