"""The upstream client: every call this service makes to Ollama goes through `OllamaClient`.

Policy (DESIGN §6), in one place:

* every call has a connect timeout and a read timeout; nothing waits unbounded;
* idempotent reads (version, tags, ps, show) retry connection errors and 502/503/504 with
  exponential back-off (3 attempts, 0.5 s factor);
* delete retries connection errors; a 404 after a retried attempt means the first attempt
  already deleted it;
* POSTs are never retried after a read timeout (a generation is not idempotent): ``post_json``
  does not retry at all, and inference goes through the proxy's own path;
* ``requests`` exceptions are translated into this module's typed errors at one boundary
  (`_translate_errors`), so callers never see transport-library types.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError as Urllib3HTTPError

RETRY_STATUSES = frozenset({502, 503, 504})
READ_ATTEMPTS = 3
BACKOFF_FACTOR = 0.5


class OllamaError(Exception):
    """Base of every error raised by the client."""


class OllamaUnreachable(OllamaError):
    """No connection could be made (refused, reset before a response, DNS, connect timeout)."""


class OllamaTimeout(OllamaError):
    """Connected, but Ollama did not answer within the read timeout."""


class OllamaStatusError(OllamaError):
    """Ollama answered with an error status; `message` is Ollama's own error text."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"Ollama answered {status}: {message}")


class OllamaProtocolError(OllamaError):
    """Ollama answered 2xx with a body we could not understand."""


class OllamaStreamBroken(OllamaError):
    """The connection failed after the request was sent (reset, cut mid-stream, aborted)."""


def _error_message(response: requests.Response) -> str:
    """Ollama's error text from an error response (JSON ``error`` field or the plain body)."""
    text = response.text.strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text[:500] or response.reason or f"HTTP {response.status_code}"
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return payload["error"]
    return text[:500]


@contextlib.contextmanager
def _translate_errors() -> Iterator[None]:
    try:
        yield
    except requests.ConnectTimeout as exc:
        raise OllamaUnreachable("connect timeout") from exc
    except requests.ReadTimeout as exc:
        raise OllamaTimeout("read timeout") from exc
    except requests.ConnectionError as exc:
        # Mid-body read timeouts surface as ConnectionError wrapping urllib3's ReadTimeoutError.
        if exc.args and isinstance(exc.args[0], urllib3.exceptions.ReadTimeoutError):
            raise OllamaTimeout("read timeout") from exc
        raise OllamaUnreachable("connection failed") from exc
    except requests.RequestException as exc:
        raise OllamaError(type(exc).__name__) from exc


class OllamaClient:
    """Pooled, bounded client for the Ollama HTTP API."""

    def __init__(
        self,
        base_url: str,
        *,
        pool_size: int = 32,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        backoff_factor: float = BACKOFF_FACTOR,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.backoff_factor = backoff_factor
        self._sleep = sleep
        self._session = requests.Session()
        # Retries are ours (per-method policy above), never urllib3's blanket Retry.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        # Ollama rejects foreign Host/Origin headers on a loopback bind; send neither of ours.
        self._session.headers.update({"User-Agent": "llm-service", "Accept": "application/json"})

    # --- plumbing

    def url(self, path: str) -> str:
        return self.base_url + path

    def _timeout(self, read_timeout: float | None) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout if read_timeout is None else read_timeout)

    def _send(
        self, method: str, path: str, *, read_timeout: float | None = None, **kwargs: Any
    ) -> requests.Response:
        with _translate_errors():
            return self._session.request(
                method, self.url(path), timeout=self._timeout(read_timeout), **kwargs
            )

    def _backoff(self, attempt: int) -> None:
        self._sleep(self.backoff_factor * (2**attempt))

    def _request_idempotent(
        self,
        method: str,
        path: str,
        *,
        read_timeout: float | None = None,
        retry: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """Retry connection errors and 502/503/504; return the last response or raise."""
        attempts = READ_ATTEMPTS if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._send(method, path, read_timeout=read_timeout, **kwargs)
            except OllamaUnreachable:
                if last:
                    raise
                self._backoff(attempt)
                continue
            if response.status_code in RETRY_STATUSES and not last:
                response.close()
                self._backoff(attempt)
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _json(response: requests.Response) -> Any:
        if response.status_code >= 400:
            raise OllamaStatusError(response.status_code, _error_message(response))
        try:
            return response.json()
        except ValueError as exc:
            raise OllamaProtocolError("response is not JSON") from exc

    # --- reads (idempotent, retried)

    def get_json(self, path: str, *, read_timeout: float | None = None, retry: bool = True) -> Any:
        """GET a JSON document. ``retry=False`` is for probes that must answer within a bound."""
        response = self._request_idempotent("GET", path, read_timeout=read_timeout, retry=retry)
        return self._json(response)

    def version(self, *, read_timeout: float | None = None, retry: bool = True) -> str:
        payload = self.get_json("/api/version", read_timeout=read_timeout, retry=retry)
        if not isinstance(payload, dict) or not isinstance(payload.get("version"), str):
            raise OllamaProtocolError("unexpected /api/version body")
        return payload["version"]

    def tags(self, *, read_timeout: float | None = None) -> list[dict[str, Any]]:
        return self._models_list(self.get_json("/api/tags", read_timeout=read_timeout))

    def ps(self, *, read_timeout: float | None = None, retry: bool = True) -> list[dict[str, Any]]:
        return self._models_list(self.get_json("/api/ps", read_timeout=read_timeout, retry=retry))

    def show(self, model: str, *, read_timeout: float | None = None) -> dict[str, Any]:
        # /api/show is a POST but reads only, so it gets the read retry policy.
        response = self._request_idempotent(
            "POST", "/api/show", json={"model": model}, read_timeout=read_timeout
        )
        payload = self._json(response)
        if not isinstance(payload, dict):
            raise OllamaProtocolError("unexpected /api/show body")
        return payload

    @staticmethod
    def _models_list(payload: Any) -> list[dict[str, Any]]:
        if not isinstance(payload, dict):
            raise OllamaProtocolError("expected a JSON object with 'models'")
        models = payload.get("models") or []
        if not isinstance(models, list):
            raise OllamaProtocolError("'models' is not a list")
        return [m for m in models if isinstance(m, dict)]

    # --- mutations

    def delete(self, model: str, *, read_timeout: float | None = None) -> None:
        """Delete a model; retried on connection errors only.

        Raises OllamaStatusError(404) when the model does not exist — unless an earlier attempt
        may have deleted it already, in which case the 404 means success.
        """
        retried = False
        for attempt in range(READ_ATTEMPTS):
            try:
                response = self._send(
                    "DELETE", "/api/delete", json={"model": model}, read_timeout=read_timeout
                )
            except OllamaUnreachable:
                if attempt == READ_ATTEMPTS - 1:
                    raise
                retried = True
                self._backoff(attempt)
                continue
            if response.status_code == 404 and retried:
                return
            if response.status_code >= 400:
                raise OllamaStatusError(response.status_code, _error_message(response))
            return

    def post_json(
        self, path: str, body: dict[str, Any], *, read_timeout: float | None = None
    ) -> Any:
        """One POST, never retried (used for load/unload forms and other non-idempotent calls)."""
        return self._json(self._send("POST", path, json=body, read_timeout=read_timeout))

    def pull_stream(self, model: str, *, idle_timeout: float) -> PullStream:
        """A streaming ``POST /api/pull``, not yet sent: call ``open()``, then iterate.

        Never retried here: a pull is retried as a job (models/pulls.py), which resumes where Ollama
        stopped. ``idle_timeout`` bounds every wait for the next bytes.
        """
        parts = urlsplit(self.base_url)
        cls = HTTPSConnection if parts.scheme == "https" else HTTPConnection
        port = parts.port or (443 if parts.scheme == "https" else 80)
        conn = cls(parts.hostname or "127.0.0.1", port, timeout=self.connect_timeout)
        return PullStream(conn, model, idle_timeout=idle_timeout)

    def close(self) -> None:
        self._session.close()


class PullStream:
    """One ``POST /api/pull`` with ``stream: true``; iterating yields Ollama's progress objects.

    Our own connection rather than the session's, so that `abort()` can shut the socket from
    another thread at any stage (connecting, waiting for the head, mid-body): the blocked reader
    wakes up and Ollama sees the FIN, which is how a pull job is cancelled. The socket's read
    timeout is the idle limit between two reads; `set_idle_timeout` changes it between reads.
    """

    def __init__(self, conn: HTTPConnection, model: str, *, idle_timeout: float) -> None:
        self._conn = conn
        self._model = model
        self._idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._aborted = False
        self._response: Any = None

    def open(self) -> None:
        """Connect, send the request and read the response head.

        Raises OllamaUnreachable (no connection), OllamaTimeout (no head within the idle
        timeout), OllamaStatusError (Ollama refused the request, e.g. 400 invalid model name),
        OllamaStreamBroken (aborted, or the connection failed after sending).
        """
        body = json.dumps({"model": self._model, "stream": True}).encode()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/x-ndjson",
            "User-Agent": "llm-service",
        }
        try:
            self._conn.connect()
        except (OSError, Urllib3HTTPError) as exc:
            raise OllamaUnreachable("connection failed") from exc
        with self._lock:
            if self._aborted:
                raise OllamaStreamBroken("aborted")
        # From here on every read waits at most the idle timeout (urllib3 re-applies the
        # connection's `timeout` to the socket in getresponse()).
        self._conn.timeout = self._idle_timeout
        try:
            self._conn.request(
                "POST", "/api/pull", body=body, headers=headers, preload_content=False
            )
            response = self._conn.getresponse()
        except TimeoutError as exc:
            raise OllamaTimeout("read timeout") from exc
        except (OSError, Urllib3HTTPError) as exc:
            raise OllamaStreamBroken("connection failed after sending") from exc
        self._response = response
        if response.status >= 400:
            raise OllamaStatusError(response.status, self._error_text(response))

    @staticmethod
    def _error_text(response: Any) -> str:
        try:
            raw = response.read(64 * 1024, decode_content=True)
        except (OSError, Urllib3HTTPError):
            raw = b""
        text = raw.decode("utf-8", "replace").strip()
        try:
            payload = json.loads(text)
        except ValueError:
            return text[:500] or f"HTTP {response.status}"
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            return payload["error"]
        return text[:500]

    def set_idle_timeout(self, seconds: float) -> None:
        if seconds == self._idle_timeout:
            return
        self._idle_timeout = seconds
        self._conn.timeout = seconds
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(seconds)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        response = self._response
        if response is None:
            raise OllamaStreamBroken("not open")
        buffer = b""
        try:
            chunks = (
                response.read_chunked(decode_content=True)
                if response.chunked
                else iter([response.read(decode_content=True)])
            )
            for chunk in chunks:
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield self._parse(line)
        except TimeoutError as exc:
            raise OllamaTimeout("read timeout") from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise OllamaTimeout("read timeout") from exc
        except (OSError, Urllib3HTTPError, ValueError) as exc:
            # ValueError: urllib3 reading a chunk size from a socket that was shut down.
            raise OllamaStreamBroken("the stream was cut") from exc
        if buffer.strip():
            yield self._parse(buffer)

    @staticmethod
    def _parse(line: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(line)
        except ValueError as exc:
            raise OllamaProtocolError("a pull progress line is not JSON") from exc
        if not isinstance(payload, dict):
            raise OllamaProtocolError("a pull progress line is not a JSON object")
        return payload

    def abort(self) -> None:
        """Shut the connection from any thread; a blocked read returns at once."""
        with self._lock:
            self._aborted = True
            sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
