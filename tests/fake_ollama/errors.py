"""Exceptions that carry an Ollama-style answer out of the emulator's handlers."""

from __future__ import annotations


class ApiError(Exception):
    """An error Ollama answers with a status and ``{"error": message}``.

    Handlers raise it before a stream has started; the exchange turns it into the
    right rendering (native JSON, the stream's error line, or the OpenAI envelope).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StreamInterrupted(Exception):
    """A stream ended early on purpose (fault, mid-stream error); the response is final."""


QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
MANIFEST_MISSING = "pull model manifest: file does not exist"
INVALID_MODEL_NAME = "invalid model name"
