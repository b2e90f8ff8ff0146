#!/usr/bin/python3
"""A stand-in ``ollama`` binary for the image tests: ``ollama serve`` answers Ollama's API.

No registry is reachable from this machine, so the tests cannot pull ``ollama/ollama``. This
file becomes ``/usr/bin/ollama`` of a local stand-in image that the product's Dockerfile takes
as ``OLLAMA_IMAGE``; it runs on the image's own ``/usr/bin/python3`` (standard library only:
the image has nothing else outside /opt/venv). It answers the calls the service and the tests
make, in Ollama's shapes; the full emulator (tests/fake_ollama) is what the other suites use.

Knobs (environment, read at start):
  OLLAMA_HOST                     host:port to listen on (as Ollama reads it)
  OLLAMA_STANDIN_TOKEN_SECONDS    pause before each streamed token (default 0.02)
  OLLAMA_STANDIN_FAIL             "1": exit 1 at once, like an Ollama that cannot start
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION = "0.32.15"
MODEL = "llama3.2:1b"
DIGEST = "baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878"
SIZE = 1_321_098_329
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "on", "a")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.installed = {MODEL}
        self.loaded: dict[str, float] = {}  # name -> expiry (epoch seconds)

    def tags(self) -> list[dict[str, Any]]:
        with self.lock:
            names = sorted(self.installed)
        return [
            {
                "name": name,
                "model": name,
                "modified_at": _now(),
                "size": SIZE,
                "digest": DIGEST,
                "details": {
                    "format": "gguf",
                    "family": "llama",
                    "families": ["llama"],
                    "parameter_size": "1.2B",
                    "quantization_level": "Q8_0",
                },
            }
            for name in names
        ]

    def ps(self) -> list[dict[str, Any]]:
        now = time.time()
        with self.lock:
            loaded = {n: e for n, e in self.loaded.items() if e > now}
            self.loaded = loaded
        return [
            {
                **entry,
                "size_vram": SIZE,
                "context_length": 4096,
                "expires_at": datetime.fromtimestamp(
                    loaded[entry["name"]], timezone.utc
                ).isoformat(),
            }
            for entry in self.tags()
            if entry["name"] in loaded
        ]


STATE = State()


def _canonical(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ollama-standin"

    def log_message(self, format: str, *args: Any) -> None:
        sys.stdout.write(f"[GIN] {self.command} {self.path} " + (format % args) + "\n")
        sys.stdout.flush()

    # --- plumbing
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._error(400, "invalid character in request body")
            return None
        if not isinstance(body, dict):
            self._error(400, "json: cannot unmarshal into Go value of type api.Request")
            return None
        return body

    # --- routes
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.path == "/":
            self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif self.path == "/api/version":
            self._json(200, {"version": VERSION})
        elif self.path == "/api/tags":
            self._json(200, {"models": STATE.tags()})
        elif self.path == "/api/ps":
            self._json(200, {"models": STATE.ps()})
        else:
            self._send(404, b"404 page not found", "text/plain")

    def do_POST(self) -> None:
        routes = {
            "/api/generate": self._generate,
            "/api/chat": self._generate,
            "/api/embed": self._embed,
            "/api/show": self._show,
            "/api/pull": self._pull,
        }
        handler = routes.get(self.path)
        if handler is None:
            self._send(404, b"404 page not found", "text/plain")
            return
        body = self._body()
        if body is not None:
            handler(body)

    def _model(self, body: dict[str, Any]) -> str | None:
        name = _canonical(str(body.get("model") or ""))
        if name == ":latest":
            self._error(400, "model is required")
            return None
        with STATE.lock:
            known = name in STATE.installed
        if not known:
            self._error(404, f"model '{body.get('model')}' not found")
            return None
        return name

    def _keep(self, name: str, body: dict[str, Any]) -> float:
        keep_alive = body.get("keep_alive", 300)
        seconds = float(keep_alive) if isinstance(keep_alive, (int, float)) else 300.0
        with STATE.lock:
            if seconds == 0:
                STATE.loaded.pop(name, None)
            else:
                STATE.loaded[name] = time.time() + (seconds if seconds > 0 else 10**9)
        return seconds

    def _generate(self, body: dict[str, Any]) -> None:
        name = self._model(body)
        if name is None:
            return
        chat = self.path == "/api/chat"
        empty = not body.get("messages") if chat else not body.get("prompt")
        seconds = self._keep(name, body)
        base = {"model": name, "created_at": _now()}
        if empty:
            reason = "unload" if seconds == 0 else "load"
            final = {**base, "done": True, "done_reason": reason}
            final.update(
                {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
            )
            self._json(200, final)
            return
        count = int((body.get("options") or {}).get("num_predict") or 8)
        words = [WORDS[i % len(WORDS)] + " " for i in range(max(count, 1))]

        def piece(text: str) -> dict[str, Any]:
            if chat:
                return {"message": {"role": "assistant", "content": text}}
            return {"response": text}

        stats = {
            "total_duration": 1000,
            "load_duration": 10,
            "prompt_eval_count": 5,
            "prompt_eval_duration": 100,
            "eval_count": len(words),
            "eval_duration": 900,
        }
        if body.get("stream") is False:
            done = {**base, **piece("".join(words)), "done": True, "done_reason": "length", **stats}
            self._json(200, done)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        delay = float(os.environ.get("OLLAMA_STANDIN_TOKEN_SECONDS", "0.02"))
        for word in words:
            time.sleep(delay)
            self._chunk({**base, **piece(word), "done": False})
        self._chunk({**base, **piece(""), "done": True, "done_reason": "length", **stats})
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _embed(self, body: dict[str, Any]) -> None:
        name = self._model(body)
        if name is None:
            return
        self._keep(name, body)
        inputs = body.get("input") or []
        inputs = [inputs] if isinstance(inputs, str) else inputs
        vectors = [[round((len(text) % 7) / 7 + i / 100, 4) for i in range(8)] for text in inputs]
        self._json(
            200,
            {
                "model": name,
                "embeddings": vectors,
                "total_duration": 1000,
                "load_duration": 10,
                "prompt_eval_count": len(inputs),
            },
        )

    def _show(self, body: dict[str, Any]) -> None:
        name = self._model(body)
        if name is None:
            return
        self._json(
            200,
            {
                "modelfile": f"FROM {name}\n",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": STATE.tags()[0]["details"],
                "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
                "capabilities": ["completion"],
                "modified_at": _now(),
            },
        )

    def _pull(self, body: dict[str, Any]) -> None:
        name = _canonical(str(body.get("model") or body.get("name") or ""))
        with STATE.lock:
            STATE.installed.add(name)
        if body.get("stream") is False:
            self._json(200, {"status": "success"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for status in ("pulling manifest", "verifying sha256 digest", "success"):
            self._chunk({"status": status})
        self.wfile.write(b"0\r\n\r\n")


def serve() -> int:
    if os.environ.get("OLLAMA_STANDIN_FAIL") == "1":
        print("Error: ollama stand-in told to fail at start (OLLAMA_STANDIN_FAIL=1)", flush=True)
        return 1
    address = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").split("://")[-1]
    host, _, port = address.rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    print(
        f"Listening on {address} (version {VERSION}, llm-service image-test stand-in)", flush=True
    )
    server.serve_forever()
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        return serve()
    if argv[:1] in (["-v"], ["--version"]):
        print(f"ollama version is {VERSION}")
        return 0
    print(
        f"ollama stand-in: only 'serve' and '--version' are provided (asked: {argv})",
        file=sys.stderr,
    )
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
