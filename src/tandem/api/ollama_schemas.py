"""Request and response bodies of the Ollama-compatible routes (/api/*)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class OllamaOptions(Lenient):
    """Ollama's model options; those not listed (num_ctx, num_thread, mirostat...) are ignored."""

    temperature: float | None = Field(None, ge=0, le=100, description="default 0.8; 0 is greedy")
    top_p: float | None = Field(None, gt=0, le=1, description="default 0.9")
    top_k: int | None = Field(None, ge=0, description="default 40; 0: off")
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    num_predict: int | None = Field(None, ge=-2, description="most tokens; -1 or -2: to the context's end")
    stop: list[str] | str | None = None
    repeat_penalty: float | None = Field(None, ge=0, le=100, description="default 1; 0 or 1: off")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)


class OllamaChatMessage(Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = Field(None, description="not supported: must be empty")
    tool_calls: list[dict[str, Any]] | None = Field(None, description="an assistant's earlier calls")
    tool_name: str | None = Field(None, description="a tool message: the tool that answered")


class OllamaChatRequest(Lenient):
    model: str = Field(min_length=1)
    messages: list[OllamaChatMessage] = Field(default_factory=list, description="empty: only load the model")
    stream: bool | None = Field(True, description="JSON lines unless false")
    options: OllamaOptions | None = None
    format: str | dict[str, Any] | None = Field(None, description="'json' or a JSON Schema")
    tools: list[dict[str, Any]] | None = Field(None, description="functions the model may call")
    tool_choice: Any = Field(None, description="extension: OpenAI's tool_choice (default 'auto')")
    keep_alive: int | float | str | None = Field(None, description="accepted and ignored")


class OllamaGenerateRequest(Lenient):
    model: str = Field(min_length=1)
    prompt: str = Field("", description="empty: only load the model")
    system: str | None = None
    raw: bool | None = Field(False, description="true: the prompt as is, without the chat template")
    stream: bool | None = Field(True, description="JSON lines unless false")
    options: OllamaOptions | None = None
    format: str | dict[str, Any] | None = Field(None, description="'json' or a JSON Schema")
    images: list[str] | None = Field(None, description="not supported: must be empty")
    suffix: str | None = Field(None, description="not supported")
    template: str | None = Field(None, description="not supported")
    context: list[int] | None = Field(None, description="accepted and ignored")
    keep_alive: int | float | str | None = Field(None, description="accepted and ignored")


class OllamaShowRequest(Lenient):
    model: str | None = Field(None, description="the model (older clients send `name`)")
    name: str | None = None


class OllamaFunctionCall(BaseModel):
    name: str
    arguments: dict[str, Any]


class OllamaToolCall(BaseModel):
    function: OllamaFunctionCall


class OllamaReplyMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    tool_calls: list[OllamaToolCall] | None = None


class OllamaStats(BaseModel):
    """On the last line (`done: true`); durations in nanoseconds."""

    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class OllamaChatResponse(OllamaStats):
    """One line of the stream, or the whole answer with stream: false."""

    message: OllamaReplyMessage


class OllamaGenerateResponse(OllamaStats):
    """One line of the stream, or the whole answer with stream: false."""

    response: str


class OllamaModelDetails(BaseModel):
    parent_model: str = ""
    format: str = "safetensors"
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class OllamaModelEntry(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str = Field(description="a stable hash of the name (Tandem keeps no Ollama blobs)")
    details: OllamaModelDetails


class OllamaTags(BaseModel):
    models: list[OllamaModelEntry]


class OllamaRunningModel(OllamaModelEntry):
    expires_at: str
    size_vram: int


class OllamaRunning(BaseModel):
    models: list[OllamaRunningModel]


class OllamaVersion(BaseModel):
    version: str


class OllamaShowResponse(BaseModel):
    modelfile: str
    parameters: str
    template: str
    details: OllamaModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
