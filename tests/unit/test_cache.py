"""The cache package on its own: cacheability, keys, the LRU store with its TTL, capture and
replay of answers, embedding items."""

from __future__ import annotations

import json

import pytest

from management_api.bodies import LossyObject, go_object
from management_api.cache import policy
from management_api.cache.answers import Answer, finish_reason, render
from management_api.cache.embeddings import (
    AnswerSplitter,
    compose_answer,
    split_answer,
    token_shares,
)
from management_api.cache.service import ResponseCache
from management_api.cache.store import ENTRY_OVERHEAD_BYTES, LruStore
from management_api.proxy.inference import classify

CHAT = {
    "model": "llama3.2:1b",
    "messages": [{"role": "user", "content": "hi"}],
    "options": {"temperature": 0},
}


def _cacheable(path: str, body: dict) -> bool:
    intent = classify(path, body)
    assert intent is not None
    return policy.is_cacheable(intent, body)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/api/chat", CHAT, True),
        ("/api/chat", {**CHAT, "options": {"temperature": 0.0, "seed": 1}}, True),
        ("/api/chat", {**CHAT, "options": {}}, False),  # omitted is not 0
        ("/api/chat", {k: v for k, v in CHAT.items() if k != "options"}, False),
        ("/api/chat", {**CHAT, "options": {"temperature": 0.1}}, False),
        ("/api/chat", {**CHAT, "options": {"temperature": False}}, False),
        ("/api/chat", {**CHAT, "options": {"temperature": "0"}}, False),
        ("/api/chat", {**CHAT, "temperature": 0, "options": {}}, False),  # not Ollama's field
        ("/api/chat", {"model": "llama3.2:1b", "options": {"temperature": 0}}, False),  # load
        ("/api/generate", {"model": "m", "prompt": "x", "options": {"temperature": 0}}, True),
        ("/api/generate", {"model": "m", "prompt": "", "options": {"temperature": 0}}, False),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user"}], "temperature": 0},
            True,
        ),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user"}]}, False),
        ("/v1/completions", {"model": "m", "prompt": "x", "temperature": 0}, True),
        ("/v1/responses", {"model": "m", "input": "x", "temperature": 0}, False),
        ("/api/embed", {"model": "m", "input": ["a", "b"]}, True),
        ("/api/embed", {"model": "m", "input": []}, False),  # load form
        ("/api/embeddings", {"model": "m", "prompt": "a"}, True),
        ("/v1/embeddings", {"model": "m", "input": "a"}, True),
        ("/api/chat", {**CHAT, "model": "not a valid name!"}, False),
    ],
)
def test_what_is_cacheable(path, body, expected):
    assert _cacheable(path, body) is expected


def _go_key(path: str, digest: str, raw: bytes, scope: str = "") -> str:
    """The key of a body as the proxy reads it (bodies.go_object), as in the service."""
    return policy.request_key(path, digest, go_object(raw), scope)


def test_key_ignores_framing_and_residency_but_not_the_answer():
    key = policy.request_key("/api/chat", "d1", CHAT)
    same = [
        {**CHAT, "stream": True},
        {**CHAT, "stream": False, "keep_alive": "10m"},
        dict(reversed(list(CHAT.items()))),  # field order
    ]
    for body in same:
        assert policy.request_key("/api/chat", "d1", body) == key
    different = [
        ("/api/chat", "d2", CHAT),  # another digest (a pull changed the model)
        ("/api/generate", "d1", CHAT),
        ("/api/chat", "d1", {**CHAT, "options": {"temperature": 0, "num_ctx": 4096}}),
        ("/api/chat", "d1", {**CHAT, "model": "llama3.2:1B"}),  # the answer echoes the name
        ("/api/chat", "d1", {**CHAT, "format": "json"}),
        ("/api/chat", "d1", {**CHAT, "think": False}),
        ("/api/chat", "d1", {**CHAT, "messages": [{"role": "user", "content": "hi!"}]}),
        # Empty values are values to Ollama (issue 28): never read as absent.
        ("/api/chat", "d1", {**CHAT, "format": {}}),
        ("/api/chat", "d1", {**CHAT, "format": ""}),
        ("/api/chat", "d1", {**CHAT, "tools": []}),
        ("/api/chat", "d1", {**CHAT, "system": ""}),
    ]
    assert len({policy.request_key(*args) for args in different} | {key}) == len(different) + 1


def test_key_reads_field_names_as_go_does():
    """Case variants are one field, the last one wins (encoding/json), before keying."""
    plain = b'{"model":"m","prompt":"hi","system":"be brief","options":{"temperature":0}}'
    key = _go_key("/api/generate", "d", plain)
    assert key == _go_key(
        "/api/generate",
        "d",
        b'{"MODEL":"m","Prompt":"hi","SYSTEM":"be brief","options":{"temperature":0}}',
    )
    # "SYSTEM": "" after "system": Go runs with no system prompt: another key.
    emptied = (
        b'{"model":"m","prompt":"hi","system":"be brief","SYSTEM":"","options":{"temperature":0}}'
    )
    assert _go_key("/api/generate", "d", emptied) != key
    assert _go_key("/api/generate", "d", emptied) == _go_key(
        "/api/generate", "d", b'{"model":"m","prompt":"hi","system":"","options":{"temperature":0}}'
    )
    # The body's order decides, even when a dict would keep the first place of a repeat.
    repeat = (
        b'{"model":"m","prompt":"hi","system":"x","SYSTEM":"","system":"be brief",'
        b'"options":{"temperature":0}}'
    )
    assert _go_key("/api/generate", "d", repeat) == key


def test_openai_empty_stop_and_native_empty_format_are_in_the_key():
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    plain = policy.request_key("/v1/chat/completions", "d", chat)
    assert policy.request_key("/v1/chat/completions", "d", {**chat, "stop": ""}) != plain
    native = {"model": "m", "prompt": "hi", "options": {"temperature": 0}}
    assert policy.request_key("/api/generate", "d", {**native, "format": {}}) != (
        policy.request_key("/api/generate", "d", native)
    )


def test_keys_are_per_scope():
    one = policy.request_key("/api/chat", "d1", CHAT, "key:a")
    assert one != policy.request_key("/api/chat", "d1", CHAT, "key:b")
    assert one != policy.request_key("/api/chat", "d1", CHAT)
    body = {"model": "m", "input": ["a"]}
    assert policy.item_key("/api/embed", "d", body, "a", "key:a") != policy.item_key(
        "/api/embed", "d", body, "a", "key:b"
    )
    assert policy.task_key("t", "i", ["d"], {"input": "x"}, "key:a") != policy.task_key(
        "t", "i", ["d"], {"input": "x"}, "key:b"
    )


def test_a_body_that_is_not_utf8_is_never_cached():
    raw = b'{"model":"m","prompt":"caf\xe9","options":{"temperature":0}}'
    payload = go_object(raw)
    assert isinstance(payload, LossyObject) and payload["model"] == "m"
    assert not policy.is_cacheable(classify("/api/generate", payload), payload)


def test_key_refuses_what_json_cannot_repeat():
    with pytest.raises(ValueError):
        options = {"temperature": 0, "top_p": float("nan")}
        policy.request_key("/api/chat", "d", {**CHAT, "options": options})


def test_item_keys_depend_on_the_item_and_the_other_fields():
    body = {"model": "m", "input": ["a", "b"], "truncate": True}
    a = policy.item_key("/api/embed", "d", body, "a")
    assert a == policy.item_key("/api/embed", "d", {**body, "input": ["x", "a"]}, "a")
    assert a != policy.item_key("/api/embed", "d", body, "b")
    assert a != policy.item_key("/api/embed", "d", {**body, "dimensions": 64}, "a")


def test_cache_control_directives():
    headers = [("Cache-Control", "max-age=0, No-Cache"), ("cache-control", "no-store")]
    assert policy.cache_control(headers) == {"no-cache", "no-store"}
    assert policy.cache_control([("Cache-Control", "max-age=5")]) == frozenset()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lru_evicts_least_recently_used_first():
    size = 1000
    store = LruStore(max_bytes=4 * (size + ENTRY_OVERHEAD_BYTES) + 10, ttl_seconds=60)
    for key in "abcd":
        assert store.put(key, "/api/chat", "m", key, size)
    assert store.get("a") is not None  # a is now the most recent; b the least
    store.put("e", "/api/chat", "m", "e", size)
    assert store.get("b") is None
    assert [k for k in "acde" if store.get(k) is not None] == list("acde")
    assert store.counts() == (4, 4 * (size + ENTRY_OVERHEAD_BYTES))
    assert store.evictions == 1


def test_an_entry_over_a_quarter_of_the_cap_is_not_stored():
    store = LruStore(max_bytes=4000, ttl_seconds=60)
    assert not store.put("big", "/api/chat", "m", "x", 1000)
    assert store.counts() == (0, 0)


def test_ttl_expires_entries():
    clock = Clock()
    store = LruStore(max_bytes=100_000, ttl_seconds=10, clock=clock)
    store.put("a", "/api/chat", "m", "a", 10)
    clock.now += 9.9
    assert store.get("a") is not None
    clock.now += 0.2
    assert store.get("a") is None
    store.put("b", "/api/embed", "e", "b", 10)
    clock.now += 11
    snapshot = store.snapshot()  # expired entries are swept, not counted
    assert snapshot["entries"] == 0 and snapshot["bytes"] == 0 and snapshot["expirations"] == 2


def test_replacing_an_entry_keeps_the_byte_count_right():
    store = LruStore(max_bytes=100_000, ttl_seconds=60)
    store.put("a", "/api/chat", "m", "a", 100)
    store.put("a", "/api/chat", "m", "a2", 300)
    assert store.counts() == (1, 300 + ENTRY_OVERHEAD_BYTES)
    assert store.clear() == 1 and store.counts() == (0, 0)


# --- answers

LINES = [
    {"model": "m", "created_at": "2025-01-01T00:00:00.1Z",
     "message": {"role": "assistant", "content": "Hel"}, "done": False},
    {"model": "m", "created_at": "2025-01-01T00:00:00.2Z",
     "message": {"role": "assistant", "content": "lo"}, "done": False},
    {"model": "m", "created_at": "2025-01-01T00:00:00.3Z",
     "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
     "total_duration": 5, "eval_count": 2},
]  # fmt: skip
NDJSON = b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in LINES)


def test_finish_reason_accepts_only_whole_answers():
    assert finish_reason("chat", "ndjson", NDJSON) == "stop"
    assert finish_reason("chat", "ndjson", NDJSON.replace(b'"stop"', b'"length"')) == "length"
    cut = b"".join(NDJSON.splitlines(keepends=True)[:2])
    assert finish_reason("chat", "ndjson", cut) is None
    failed = cut + b'{"error":"model runner has unexpectedly stopped"}\n'
    assert finish_reason("chat", "ndjson", failed) is None
    sse = (b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')  # fmt: skip
    assert finish_reason("openai_chat", "sse", sse + b"data: [DONE]\n\n") == "stop"
    assert finish_reason("openai_chat", "sse", sse) is None  # no [DONE]: cut
    assert finish_reason("embed", "json", b'{"model":"e","embeddings":[[0.1]]}') == "stop"
    assert finish_reason("embed", "json", b'{"error":"x"}') is None


def test_same_shape_replay_changes_only_the_creation_time():
    answer = Answer("chat", {"ndjson": NDJSON}, {"ndjson": "application/x-ndjson"})
    content_type, pieces = render(answer, "ndjson")
    assert content_type == "application/x-ndjson" and len(pieces) == 3
    replayed = [json.loads(piece) for piece in pieces]
    assert all(p["created_at"] != "2025-01-01T00:00:00.1Z" for p in replayed)
    for line, again in zip(LINES, replayed, strict=True):
        assert {**again, "created_at": None} == {**line, "created_at": None}


def test_a_stream_renders_as_one_object_and_back():
    answer = Answer("chat", {"ndjson": NDJSON}, {"ndjson": "application/x-ndjson"})
    _, (body,) = render(answer, "json")
    whole = json.loads(body)
    assert whole["message"] == {"role": "assistant", "content": "Hello"}
    assert list(whole) == list(LINES[-1])  # Ollama's field order
    assert (whole["done_reason"], whole["total_duration"]) == ("stop", 5)
    back = Answer("chat", {"json": body}, {"json": "application/json; charset=utf-8"})
    _, pieces = render(back, "ndjson")
    lines = [json.loads(piece) for piece in pieces]
    assert "".join(line["message"]["content"] for line in lines) == "Hello"
    assert lines[-1]["done"] is True and lines[-1]["message"]["content"] == ""


OPENAI_JSON = json.dumps({
    "id": "chatcmpl-7", "object": "chat.completion", "created": 1, "model": "m",
    "system_fingerprint": "fp_ollama",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}).encode()  # fmt: skip


def _events(pieces: list[bytes]) -> list[dict]:
    assert pieces[-1] == b"data: [DONE]\n\n"
    return [json.loads(p.removeprefix(b"data: ")) for p in pieces[:-1]]


def test_an_openai_answer_renders_as_sse_and_back():
    answer = Answer("openai_chat", {"json": OPENAI_JSON}, {"json": "application/json"})
    content_type, pieces = render(answer, "sse+usage")
    assert content_type == "text/event-stream"
    events = _events(pieces)
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert {e["id"] for e in events} == {"chatcmpl-7"} and events[0]["created"] > 1
    assert events[0]["choices"][0]["delta"] == {"role": "assistant"}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "Hello"
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 5
    assert finish_reason("openai_chat", "sse+usage", b"".join(pieces)) == "stop"
    # Without include_usage there is no usage chunk.
    assert all("usage" not in e for e in _events(render(answer, "sse")[1]))
    # A stream with usage gives the JSON object back; one without cannot.
    with_usage = Answer("openai_chat", {"sse+usage": b"".join(pieces)}, {})
    assert json.loads(render(with_usage, "json")[1][0])["choices"][0]["message"]["content"] == (
        "Hello"
    )
    without = Answer("openai_chat", {"sse": b"".join(render(answer, "sse")[1])}, {})
    assert render(without, "json") is None and render(without, "sse+usage") is None


# --- embeddings


def test_token_shares_add_up():
    shares = token_shares(["a", "bbbb", "cc"], 10)
    assert sum(shares) == 10 and shares[1] > shares[0]
    assert token_shares(["only"], 7) == [7]


def test_split_and_compose_keep_order_and_values():
    answer = {"model": "e", "embeddings": [[0.5, -0.25], [1e-05, 0.0]], "total_duration": 9,
              "load_duration": 2, "prompt_eval_count": 6}  # fmt: skip
    raw = json.dumps(answer, separators=(",", ":")).encode()
    split = split_answer(["x", "y"], raw)
    assert split is not None
    items, fields = split
    assert fields == {"model": "e", "total_duration": 9, "load_duration": 2,
                      "prompt_eval_count": 6}  # fmt: skip
    assert items["y"].vector == b"[1e-05,0.0]"  # the bytes Ollama sent, not re-encoded
    pieces = compose_answer("e", [items["y"], items["x"]], total_duration=9, load_duration=2,
                            prompt_eval_count=6)  # fmt: skip
    assert any(piece is items["y"].vector for piece in pieces)  # shared, not copied
    body = json.loads(b"".join(pieces))
    assert body["embeddings"] == [[1e-05, 0.0], [0.5, -0.25]]
    assert list(body) == ["model", "embeddings", "total_duration", "load_duration",
                          "prompt_eval_count"]  # fmt: skip
    assert split_answer(["x"], raw) is None  # counts differ: not split


def test_a_repeated_input_keeps_its_first_vector_and_the_counts_split_over_distinct_ones():
    raw = b'{"model":"e","embeddings":[[1],[2],[3]],"prompt_eval_count":10}'
    items, _ = split_answer(["a", "b", "a"], raw)
    assert items["a"].vector == b"[1]" and items["b"].vector == b"[2]"
    assert items["a"].tokens + items["b"].tokens == 10


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "embeddings", "embeddings" : [ [1, 2.5e-3] , [-3] ], "total_duration": 1}',
        b'{"embeddings":[[0.1],[0.2]],"model":"e"}',
    ],
)
def test_vectors_are_found_whatever_the_spacing_and_a_value_spelled_like_the_key(raw):
    split = split_answer(["a", "b"], raw)
    assert split is not None
    assert [json.loads(i.vector) for i in split[0].values()] == json.loads(raw)["embeddings"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"e","embeddings":[[1,"x"],[2]]}',  # not a number
        b'{"model":"e","embeddings":[[1,[2]],[3]]}',  # nested
        b'{"model":"e","embeddings":[[1,true],[2]]}',
        b'{"model":"e","embeddings":[[1],[2]]',  # cut short
        b'{"model":"e","embeddings":[[1],[2],]}',
        b'{"model":"e","embeddings":[[1] [2]]}',
        b'{"model":"e","embeddings":[[1,2.3.4],[2]]}',
        b'{"model":"e","embeddings":{"a":[1]}}',
        b'{"model":"e","embeddings":[[1],[2]],"embeddings":[[3],[4]]}',
        b'{"model":"e"}',
        b"[[1],[2]]",
    ],
)
def test_an_answer_of_another_shape_is_not_split(raw):
    assert split_answer(["a", "b"], raw) is None


@pytest.mark.parametrize("step", [1, 3, 7, 13, 64, 10**6])
def test_an_answer_is_split_the_same_whatever_pieces_it_arrives_in(step):
    vectors = [[i / 7, -i * 1e-05, i] for i in range(40)]
    answer = {"model": "embeddings", "embeddings": vectors, "total_duration": 5,
              "load_duration": 1, "prompt_eval_count": 40}  # fmt: skip
    raw = json.dumps(answer).encode()  # with spaces, as a stranger might write it
    splitter = AnswerSplitter()
    for at in range(0, len(raw), step):
        splitter.feed(raw[at : at + step])
    texts = [f"t{i}" for i in range(40)]
    items, fields = split_answer(texts, splitter)
    assert [json.loads(items[t].vector) for t in texts] == vectors
    assert fields["model"] == "embeddings" and fields["prompt_eval_count"] == 40
    assert sum(item.tokens for item in items.values()) == 40


def test_the_recorder_stores_a_finished_answer_before_its_last_chunk_goes_out():
    from management_api.cache.service import _Recorder

    ended: list[bytes | None] = []

    class Body(list):
        complete = True

    lines = NDJSON.splitlines(keepends=True)
    recorder = _Recorder(Body(lines), shape="ndjson", kind="chat", limit=1 << 20,
                         on_end=ended.append)  # fmt: skip
    relayed = []
    for chunk in recorder:
        relayed.append(chunk)
        if len(relayed) == len(lines) - 1:
            assert ended == []
    assert ended == [NDJSON]  # before the last chunk was handed on
    recorder.close()
    assert ended == [NDJSON] and b"".join(relayed) == NDJSON

    class CutBody(list):
        complete = False  # what ProxiedBody says when upstream failed part-way

    cut = _Recorder(CutBody(lines[:2]), shape="ndjson", kind="chat", limit=1 << 20,
                    on_end=ended.append)  # fmt: skip
    list(cut)
    cut.close()
    assert ended[-1] is None  # the stream never finished: nothing to keep


def test_the_scope_is_the_key_unless_entries_are_shared():
    per_key = ResponseCache(max_bytes=1 << 20, ttl_seconds=60, digest_of=lambda _: "d")
    assert per_key.scope("app") != per_key.scope("other") != per_key.scope(None)
    shared = ResponseCache(
        max_bytes=1 << 20, ttl_seconds=60, digest_of=lambda _: "d", shared_across_keys=True
    )
    assert shared.scope("app") == shared.scope("other") == shared.scope(None) == ""


def test_recordings_count_against_the_cap_and_give_their_bytes_back_once():
    from management_api.cache.service import _Recorder

    class Body(list):
        complete = True

    first, *_, last = NDJSON.splitlines(keepends=True)
    lines = [first] * 40 + [last]  # a longer answer, relayed a line at a time
    answer = b"".join(lines)
    held = len(answer) - len(last)  # what a recording holds before the last chunk
    # Room for two recordings that far, not three.
    store = LruStore(max_bytes=2 * held + held // 2, ttl_seconds=60)
    assert store.put("old", "/api/chat", "m", "kept", 10)  # stored: evicted to make room
    ended: list[list[bytes | None]] = [[], [], []]
    recorders = [
        _Recorder(Body(lines), shape="ndjson", kind="chat", limit=1 << 20,
                  on_end=ended[i].append, reserve=store.reserve, unreserve=store.unreserve)
        for i in range(3)
    ]  # fmt: skip
    streams = [iter(r) for r in recorders]
    relayed: list[list[bytes]] = [[], [], []]
    for _ in range(len(lines) - 1):  # all three mid-answer at once
        for index, stream in enumerate(streams):
            relayed[index].append(next(stream))
        assert store.reserved + store.counts()[1] <= store.max_bytes
    assert store.get("old") is None  # the recordings needed its room
    for index, stream in enumerate(streams):
        relayed[index].extend(stream)
        recorders[index].close()
    # Every client got the whole answer; the one that found no room was not recorded.
    assert all(b"".join(r) == answer for r in relayed)
    assert sorted(e[0] is None for e in ended) == [False, False, True]
    assert store.reserved == 0  # every byte given back, exactly once
    for recorder in recorders:
        recorder.close()
    assert store.reserved == 0
