"""Embeddings through the official `openai` and `ollama` clients against a live node: the right
shape, deterministic, equal to transformers' AutoModel hidden states with the checkpoint's
pooling; a model that is not an embedding model is a clear 400."""

from __future__ import annotations

import numpy as np
import ollama
import openai
import pytest
import torch

from embedding_checkpoints import build_embedding_checkpoint, reference_embedding
from nodes import launch
from tandem.model.tokenizer import Tokenizer

TEXTS = ["What news, my lord?", "The king is in the garden, reading letters.", "Peace!"]


@pytest.fixture(scope="module")
def embedding_model(demo_node, api_models_dir):
    """A Qwen3-Embedding-style tiny checkpoint (last token, normalised), running on the node."""
    checkpoint = build_embedding_checkpoint(api_models_dir / "embedding", "qwen3-qknorm", "last", True)
    launch(demo_node, model=str(checkpoint.path), context=64)
    return checkpoint


def expected(checkpoint, text: str) -> torch.Tensor:
    ids = Tokenizer(checkpoint.path).encode(text)
    return reference_embedding(checkpoint.path, ids, "last", True)


def test_openai_embeddings_equal_transformers(demo_node, embedding_model):
    model = str(embedding_model.path)
    with openai.OpenAI(base_url=f"{demo_node.url}/v1", api_key="unused", max_retries=0) as client:
        reply = client.embeddings.create(model=model, input=TEXTS)  # the client asks for base64
        again = client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
        one = client.embeddings.create(model=model, input=TEXTS[1])
        with pytest.raises(openai.BadRequestError) as refused:
            client.embeddings.create(model="demo", input="hi")
    assert [item.index for item in reply.data] == [0, 1, 2]
    hidden = embedding_model.config["hidden_size"]
    for text, item, same in zip(TEXTS, reply.data, again.data, strict=True):
        vector = torch.tensor(item.embedding)
        assert vector.shape == (hidden,)
        torch.testing.assert_close(vector, expected(embedding_model, text), rtol=1e-5, atol=1e-5)
        # base64 carries float32, the float list the same numbers at full precision
        assert np.allclose(item.embedding, same.embedding, rtol=1e-6, atol=1e-7)
    assert one.data[0].embedding == again.data[1].embedding  # deterministic
    tokenizer = Tokenizer(embedding_model.path)
    assert reply.usage.prompt_tokens == sum(len(tokenizer.encode(t)) for t in TEXTS)
    assert "not an embedding model" in refused.value.message and refused.value.param == "model"


def test_dimensions_keep_a_renormalised_prefix(demo_node, embedding_model):
    model = str(embedding_model.path)
    full = expected(embedding_model, TEXTS[0])
    with openai.OpenAI(base_url=f"{demo_node.url}/v1", api_key="unused", max_retries=0) as client:
        short = client.embeddings.create(model=model, input=TEXTS[0], dimensions=8, encoding_format="float")
        with pytest.raises(openai.BadRequestError) as too_many:
            client.embeddings.create(model=model, input=TEXTS[0], dimensions=len(full) + 1)
    vector = torch.tensor(short.data[0].embedding)
    torch.testing.assert_close(vector, torch.nn.functional.normalize(full[:8], dim=0), rtol=1e-5, atol=1e-5)
    assert too_many.value.param == "dimensions"
    ollama_short = ollama.Client(host=demo_node.url).embed(model=model, input=TEXTS[0], dimensions=8)
    torch.testing.assert_close(torch.tensor(ollama_short.embeddings[0]), vector, rtol=1e-6, atol=1e-7)


def test_ollama_embed_equals_transformers(demo_node, embedding_model):
    client = ollama.Client(host=demo_node.url)
    model = str(embedding_model.path)
    reply = client.embed(model=model, input=TEXTS)
    assert len(reply.embeddings) == len(TEXTS)
    for text, vector in zip(TEXTS, reply.embeddings, strict=True):
        torch.testing.assert_close(
            torch.tensor(vector), expected(embedding_model, text), rtol=1e-5, atol=1e-5
        )
    assert client.embed(model=model, input=TEXTS[0]).embeddings[0] == reply.embeddings[0]
    legacy = client.embeddings(model=model, prompt=TEXTS[2])
    assert list(legacy.embedding) == reply.embeddings[2]
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="demo", input="hi")
    assert refused.value.status_code == 400 and "not an embedding model" in refused.value.error
