"""A checkpoint's tokenizer: `tokenizer.json` for the vocabulary, `tokenizer_config.json` (or
`chat_template.jinja`) for special tokens and the chat template, rendered with sandboxed Jinja."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as FastTokenizer

from tandem.errors import InvalidRequestError, ModelFormatError

CHAT_ROLES = ("system", "user", "assistant", "tool")


def _token_text(value: Any) -> str | None:
    # Special tokens appear as plain strings or as {"content": ...} objects.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"cannot read {path.name}: {error}") from None
    return data if isinstance(data, dict) else {}


def _template_environment() -> ImmutableSandboxedEnvironment:
    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return environment


class Tokenizer:
    """Encode, decode, and render chat messages the way the checkpoint's authors intended."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ModelFormatError(f"no tokenizer.json in {model_dir}")
        try:
            self._tokenizer = FastTokenizer.from_file(str(path))
        except Exception as error:  # the tokenizers library raises a bare Exception
            raise ModelFormatError(f"cannot read tokenizer.json: {error}") from None
        config = _read_json(model_dir / "tokenizer_config.json")
        generation = _read_json(model_dir / "generation_config.json")
        model_config = _read_json(model_dir / "config.json")
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.chat_template = self._find_chat_template(model_dir, config)
        self.eos_token_ids = self._eos_ids(generation, model_config)
        self._template: jinja2.Template | None = None

    def _find_chat_template(self, model_dir: Path, config: dict[str, Any]) -> str | None:
        jinja_file = model_dir / "chat_template.jinja"
        if jinja_file.is_file():
            return jinja_file.read_text()
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        return template if isinstance(template, str) else None

    def _eos_ids(self, generation: dict[str, Any], model_config: dict[str, Any]) -> frozenset[int]:
        ids: set[int] = set()
        for source in (generation.get("eos_token_id"), model_config.get("eos_token_id")):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(int(i) for i in source)
        if self.eos_token is not None:
            token_id = self._tokenizer.token_to_id(self.eos_token)
            if token_id is not None:
                ids.add(token_id)
        return frozenset(ids)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The most bytes of text one token can stand for (at most its vocabulary entry's UTF-8
        length: byte-level and SentencePiece spellings only ever take more bytes than they mean)."""
        return max(
            (len(token.encode("utf-8")) for token in self._tokenizer.get_vocab(with_added_tokens=True)),
            default=1,
        )

    def fewest_tokens(self, characters: int) -> int:
        """A lower bound on the tokens of any text of `characters` characters, known without
        tokenizing it (each character is at least one byte)."""
        return -(-characters // max(1, self.max_token_bytes))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def render_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """The prompt text for a conversation, from the checkpoint's chat template."""
        if self.chat_template is None:
            raise InvalidRequestError("this model has no chat template; send a plain prompt instead")
        for message in messages:
            if message.get("role") not in CHAT_ROLES:
                raise InvalidRequestError(f"unknown message role {message.get('role')!r}")
        if self._template is None:
            try:
                self._template = _template_environment().from_string(self.chat_template)
            except jinja2.TemplateError as error:
                raise ModelFormatError(f"the chat template does not compile: {error}") from None
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                **extra,
            )
        except jinja2.TemplateError as error:
            raise InvalidRequestError(f"the chat template rejected the messages: {error}") from None

    def encode_chat(self, messages: list[dict[str, Any]], **extra: Any) -> list[int]:
        """Token ids of a conversation; the template already holds any BOS, so none is added."""
        return self.encode(self.render_chat(messages, **extra), add_special_tokens=False)
