"""Request structs of the Ollama API (``api/types.go``, ``openai/openai.go``) as schemas."""

from __future__ import annotations

from typing import Any

from .bodies import (
    ANY,
    BOOL,
    FLOAT32,
    FLOAT64,
    INT,
    INT32,
    MAP,
    STRING,
    Kind,
    custom,
    list_of,
    map_of,
    struct_of,
)
from .durations import parse_keep_alive
from .errors import ApiError

THINK_LEVELS = ("high", "medium", "low", "max")


def parse_think(value: Any) -> bool | str:
    """``api.ThinkValue``: a bool or one of the named levels."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in THINK_LEVELS:
            raise ApiError(
                400,
                f'invalid think value: "{value}" (must be "high", "medium", "low", true, or false)',
            )
        return value
    raise ApiError(
        400, 'think must be a boolean or string ("high", "medium", "low", true, or false)'
    )


KEEP_ALIVE = custom("*api.Duration", parse_keep_alive)
THINK = custom("*api.ThinkValue", parse_think)
IMAGES = list_of(Kind("api.ImageData", STRING.check), "[]api.ImageData")
TOOL_CALLS = list_of(
    struct_of(
        {
            "id": STRING,
            "function": struct_of({"name": STRING, "arguments": MAP}, "api.ToolCallFunction"),
        },
        "api.ToolCall",
    ),
    "[]api.ToolCall",
)
MESSAGE = {
    "role": STRING,
    "content": STRING,
    "thinking": STRING,
    "images": IMAGES,
    "tool_calls": TOOL_CALLS,
    "tool_name": STRING,
    "tool_call_id": STRING,
}
# api.Message has its own UnmarshalJSON (role lower-casing) decoding through an alias type.
MESSAGES = list_of(struct_of(MESSAGE, "api.Alias"), "[]api.Message")
TOOLS = list_of(
    struct_of(
        {
            "type": STRING,
            "function": struct_of(
                {"name": STRING, "description": STRING, "parameters": ANY}, "api.ToolFunction"
            ),
        },
        "api.Tool",
    ),
    "api.Tools",
)

GENERATE = {
    "model": STRING,
    "prompt": STRING,
    "suffix": STRING,
    "system": STRING,
    "template": STRING,
    "context": list_of(INT, "[]int"),
    "stream": BOOL,
    "raw": BOOL,
    "format": ANY,
    "keep_alive": KEEP_ALIVE,
    "images": IMAGES,
    "options": MAP,
    "think": THINK,
    "truncate": BOOL,
    "shift": BOOL,
    "_debug_render_only": BOOL,
    "logprobs": BOOL,
    "top_logprobs": INT,
    "width": INT32,
    "height": INT32,
    "steps": INT32,
}
CHAT = {
    "model": STRING,
    "messages": MESSAGES,
    "stream": BOOL,
    "format": ANY,
    "keep_alive": KEEP_ALIVE,
    "tools": TOOLS,
    "options": MAP,
    "think": THINK,
    "truncate": BOOL,
    "shift": BOOL,
    "_debug_render_only": BOOL,
    "logprobs": BOOL,
    "top_logprobs": INT,
}
EMBED = {
    "model": STRING,
    "input": ANY,
    "keep_alive": KEEP_ALIVE,
    "truncate": BOOL,
    "dimensions": INT,
    "options": MAP,
}
EMBEDDINGS = {"model": STRING, "prompt": STRING, "keep_alive": KEEP_ALIVE, "options": MAP}
PULL = {
    "model": STRING,
    "insecure": BOOL,
    "username": STRING,
    "password": STRING,
    "stream": BOOL,
    "name": STRING,
}
PUSH = PULL
DELETE = {"model": STRING, "name": STRING}
SHOW = {
    "model": STRING,
    "system": STRING,
    "template": STRING,
    "verbose": BOOL,
    "options": MAP,
    "name": STRING,
}
COPY = {"source": STRING, "destination": STRING}
STRING_MAP = map_of(STRING, "map[string]string")
CREATE = {
    "model": STRING,
    "stream": BOOL,
    "quantize": STRING,
    "from": STRING,
    "files": STRING_MAP,
    "adapters": STRING_MAP,
    "template": STRING,
    "license": ANY,
    "system": STRING,
    "parameters": MAP,
    "messages": MESSAGES,
    "renderer": STRING,
    "parser": STRING,
    "requires": STRING,
    "name": STRING,
}

STREAM_OPTIONS = struct_of({"include_usage": BOOL}, "openai.StreamOptions")
OPENAI_CHAT = {
    "model": STRING,
    "messages": list_of(
        struct_of(
            {"role": STRING, "content": ANY, "name": STRING, "tool_call_id": STRING},
            "openai.Message",
        ),
        "[]openai.Message",
    ),
    "stream": BOOL,
    "stream_options": STREAM_OPTIONS,
    "max_tokens": INT,
    "max_completion_tokens": INT,
    "seed": INT,
    "stop": ANY,
    "temperature": FLOAT64,
    "frequency_penalty": FLOAT64,
    "presence_penalty": FLOAT64,
    "top_p": FLOAT64,
    "response_format": struct_of({"type": STRING, "json_schema": ANY}, "openai.ResponseFormat"),
    "tools": TOOLS,
    "reasoning": struct_of({"effort": STRING}, "openai.Reasoning"),
    "reasoning_effort": STRING,
    "logprobs": BOOL,
    "top_logprobs": INT,
}
OPENAI_COMPLETION = {
    "model": STRING,
    "prompt": STRING,
    "frequency_penalty": FLOAT32,
    "max_tokens": INT,
    "presence_penalty": FLOAT32,
    "seed": INT,
    "stop": ANY,
    "stream": BOOL,
    "stream_options": STREAM_OPTIONS,
    "temperature": FLOAT32,
    "top_p": FLOAT32,
    "suffix": STRING,
    "logprobs": INT,
}
OPENAI_EMBED = {"input": ANY, "model": STRING, "dimensions": INT, "encoding_format": STRING}

# Options that must be set when a runner loads: differing values force a reload.
RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
_OPTION_TYPES = {
    **dict.fromkeys(
        (
            "num_keep",
            "seed",
            "num_predict",
            "top_k",
            "repeat_last_n",
            "mirostat",
            "num_ctx",
            "num_batch",
            "num_gpu",
            "main_gpu",
            "num_thread",
        ),
        "integer",
    ),
    **dict.fromkeys(
        (
            "top_p",
            "min_p",
            "typical_p",
            "temperature",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "mirostat_tau",
            "mirostat_eta",
        ),
        "float32",
    ),
    **dict.fromkeys(("numa", "penalize_newline", "use_mlock", "use_mmap"), "boolean"),
    "stop": "array",
}


def check_options(options: dict[str, Any]) -> None:
    """``api.Options.FromMap``: known options of the wrong type are a 500."""
    for key, value in options.items():
        expected = _OPTION_TYPES.get(key)
        if expected is None or value is None:
            continue
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if expected in ("integer", "float32") and not numeric:
            raise ApiError(500, f'option "{key}" must be of type {expected}')
        if expected == "boolean" and not isinstance(value, bool):
            raise ApiError(500, f'option "{key}" must be of type boolean')
        if expected == "array":
            if not isinstance(value, list):
                raise ApiError(500, f'option "{key}" must be of type array')
            if not all(isinstance(item, str) for item in value):
                raise ApiError(500, f'option "{key}" must be of an array of strings')
