"""llm-service: Ollama behind per-model concurrency limits, with management and telemetry."""

__version__ = "0.1.0"
