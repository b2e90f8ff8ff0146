"""Limits file: the shipped example, validation messages, resolution and live reload."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from management_api.proxy.file_reload import file_identity
from management_api.proxy.limits_config import (
    LIMIT_KEYS,
    SCHEDULER_KEYS,
    LimitsConfig,
    LimitsConfigError,
    LimitsReloader,
    LimitsResolver,
    ModelLimits,
    load_limits,
    parse_limits,
    simple_normalize,
)
from tests.configmap_volume import ConfigMapVolume

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "limits.toml"


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def write(path: Path, text: str, bump: int = 0) -> None:
    path.write_text(text)
    # Force a distinct mtime: two writes within one filesystem tick must still look different.
    stamp = 1_700_000_000 + bump
    os.utime(path, (stamp, stamp))


# --- the shipped file ----------------------------------------------------------------------------


def test_shipped_file_holds_the_documented_defaults_and_two_examples():
    config = load_limits(SHIPPED)

    assert config.source == str(SHIPPED)
    assert config.defaults == ModelLimits(
        max_concurrency=1,
        max_queue=64,
        max_wait_seconds=300,
        first_byte_timeout_seconds=600,
        idle_timeout_seconds=120,
    )
    assert config.global_max_concurrency == 0
    assert [rule.match for rule in config.models] == ["qwen3:14b-q8", "nomic-embed-text*"]
    assert config.models[0].limits == ModelLimits(max_concurrency=2)
    assert config.models[1].limits == ModelLimits(max_concurrency=8, max_queue=232)
    assert config.models[1].overrides == ("max_concurrency", "max_queue")


def test_shipped_file_comments_every_key():
    lines = SHIPPED.read_text().splitlines()
    keys_seen = set()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            key = line.split("=", 1)[0].strip()
            keys_seen.add(key)
            assert lines[index - 1].startswith("#"), f"{key} (line {index + 1}) has no comment"
    assert keys_seen == {*LIMIT_KEYS, *SCHEDULER_KEYS, "match"}


def test_shipped_examples_resolve_as_their_comments_say():
    resolver = LimitsResolver(load_limits(SHIPPED))

    assert resolver.limits_for("qwen3:14b-q8").max_concurrency == 2
    assert resolver.limits_for("QWEN3:14B-Q8").max_concurrency == 2
    assert resolver.limits_for("qwen3:8b").max_concurrency == 1
    assert resolver.limits_for("nomic-embed-text").max_queue == 232
    assert resolver.limits_for("nomic-embed-text:v1.5").max_concurrency == 8
    assert resolver.limits_for("llama3.2").max_queue == 64


# --- parsing and defaults ------------------------------------------------------------------------


def test_empty_file_means_builtin_defaults():
    config = parse_limits("", "empty.toml")
    assert config.defaults == ModelLimits()
    assert config.global_max_concurrency == 0
    assert config.models == ()


def test_model_entry_inherits_defaults_and_overrides_any_key():
    config = parse_limits(
        """
        [defaults]
        max_concurrency = 3
        max_wait_seconds = 1.5
        [[models]]
        match = "a"
        max_queue = 0
        idle_timeout_seconds = 7
        """
    )
    rule = config.models[0]
    assert rule.limits == ModelLimits(
        max_concurrency=3,
        max_queue=0,
        max_wait_seconds=1.5,
        first_byte_timeout_seconds=600,
        idle_timeout_seconds=7,
    )
    assert rule.overrides == ("max_queue", "idle_timeout_seconds")


def test_to_dict_is_plain_data():
    config = parse_limits('[global]\nmax_concurrency = 4\n[[models]]\nmatch = "x*"', "f.toml")
    assert config.to_dict() == {
        "source": "f.toml",
        "defaults": ModelLimits().to_dict(),
        "global": {"max_concurrency": 4},
        "scheduler": {"policy": "fifo", "max_loaded_models": 0, "max_hold_seconds": 20.0},
        "models": [
            {"match": "x*", "glob": True, "overrides": [], "limits": ModelLimits().to_dict()}
        ],
    }


def test_missing_file_uses_defaults_and_says_so(tmp_path, caplog):
    missing = tmp_path / "nope.toml"
    with caplog.at_level(logging.WARNING, logger="management_api.proxy.limits_config"):
        config = load_limits(missing)
    assert config == LimitsConfig()
    assert config.source is None
    assert any(
        str(missing) in r.getMessage() and "defaults" in r.getMessage() for r in caplog.records
    )


def test_unreadable_or_binary_file_is_an_error(tmp_path):
    with pytest.raises(LimitsConfigError, match="cannot read"):
        load_limits(tmp_path)  # a directory
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[defaults]")
    with pytest.raises(LimitsConfigError, match=r"bin\.toml: not UTF-8"):
        load_limits(binary)


# --- validation messages -------------------------------------------------------------------------

INVALID = [
    ("[limits]\nx = 1", "limits", "unknown section", "defaults, global, models"),
    ("foo = 1", "foo", "unknown key", "defaults, global, models"),
    ("[defaults]\nmax_concurency = 2", "defaults.max_concurency", "unknown key", "max_queue"),
    ("[global]\nmax_queue = 2", "global.max_queue", "unknown key", "max_concurrency"),
    (
        '[[models]]\nmatch = "a"\n[[models]]\nmatch = "b"\nmax_queu = 1',
        "models[1].max_queu",
        "unknown key",
        "match, max_concurrency",
    ),
    ("[defaults]\nmax_concurrency = 0", "defaults.max_concurrency", "got 0", "integer >= 1"),
    ("[defaults]\nmax_concurrency = 1.5", "defaults.max_concurrency", "got 1.5", "integer >= 1"),
    ("[defaults]\nmax_concurrency = true", "defaults.max_concurrency", "got True", "integer"),
    ('[defaults]\nmax_queue = "10"', "defaults.max_queue", "got '10'", "integer >= 0"),
    ("[defaults]\nmax_queue = -1", "defaults.max_queue", "got -1", "integer >= 0"),
    ("[defaults]\nmax_wait_seconds = 0", "defaults.max_wait_seconds", "got 0", "positive finite"),
    ("[defaults]\nidle_timeout_seconds = -2.5", "defaults.idle_timeout_seconds", "-2.5", "seconds"),
    ("[defaults]\nmax_wait_seconds = inf", "defaults.max_wait_seconds", "inf", "positive finite"),
    ("[defaults]\nmax_wait_seconds = nan", "defaults.max_wait_seconds", "nan", "positive finite"),
    (
        '[defaults]\nfirst_byte_timeout_seconds = "1m"',
        "first_byte_timeout_seconds",
        "'1m'",
        "number",
    ),
    ("[global]\nmax_concurrency = -1", "global.max_concurrency", "got -1", "integer >= 0"),
    ("defaults = 3", "defaults", "got 3", "a table [defaults]"),
    ("global = []", "global", "got []", "a table [global]"),
    ("models = 3", "models", "got 3", "[[models]] tables"),
    ("models = [1]", "models[0]", "got 1", "a [[models]] table"),
    ("[[models]]\nmax_concurrency = 2", "models[0].match", "missing", "non-empty model name"),
    ('[[models]]\nmatch = "  "', "models[0].match", "got '  '", "non-empty model name"),
    ("[[models]]\nmatch = 5", "models[0].match", "got 5", "non-empty model name or glob"),
    ('[[models]]\nmatch = "a"\nmax_concurrency = 0', "models[0].max_concurrency", "got 0", ">= 1"),
    ('[scheduler]\npolicy = "lifo"', "scheduler.policy", "got 'lifo'", '"fifo" or "affinity"'),
    ("[scheduler]\npolicy = 1", "scheduler.policy", "got 1", '"fifo" or "affinity"'),
    ("[scheduler]\nmax_loaded_models = -1", "scheduler.max_loaded_models", "got -1", ">= 0"),
    ("[scheduler]\nmax_loaded_models = 1.5", "scheduler.max_loaded_models", "1.5", "integer"),
    ("[scheduler]\nmax_hold_seconds = 0", "scheduler.max_hold_seconds", "got 0", "positive"),
    ("[scheduler]\nmax_hold = 3", "scheduler.max_hold", "unknown key", "max_hold_seconds"),
    ("scheduler = 3", "scheduler", "got 3", "a table [scheduler]"),
    (
        "[defaults]\nearly_headers_after_seconds = -1",
        "defaults.early_headers_after_seconds",
        "got -1",
        ">= 0 (0 = off)",
    ),
    (
        '[[models]]\nmatch = "a"\nearly_headers_after_seconds = inf',
        "models[0].early_headers_after_seconds",
        "inf",
        "finite",
    ),
]


def test_scheduler_section_and_early_headers_parse():
    config = parse_limits(
        """
        [defaults]
        early_headers_after_seconds = 0
        [scheduler]
        policy = "affinity"
        max_loaded_models = 1
        max_hold_seconds = 2.5
        [[models]]
        match = "big*"
        early_headers_after_seconds = 240
        """
    )
    assert config.scheduler.to_dict() == {
        "policy": "affinity",
        "max_loaded_models": 1,
        "max_hold_seconds": 2.5,
    }
    assert config.defaults.early_headers_after_seconds == 0
    assert config.models[0].limits.early_headers_after_seconds == 240
    assert parse_limits("").scheduler.policy == "fifo"


@pytest.mark.parametrize(("text", "key_path", "problem", "expected"), INVALID)
def test_each_invalid_value_names_file_key_and_accepted_form(text, key_path, problem, expected):
    with pytest.raises(LimitsConfigError) as info:
        parse_limits(text, "conf/limits.toml")
    message = str(info.value)
    assert message.startswith("conf/limits.toml: ")
    assert key_path in message
    assert problem in message
    assert "expected" in message and expected in message
    assert "\n" not in message


def test_several_unknown_keys_are_all_named():
    with pytest.raises(LimitsConfigError) as info:
        parse_limits("[defaults]\nfoo = 1\nbar = 2", "f.toml")
    assert "defaults.foo, defaults.bar: unknown keys" in str(info.value)


def test_toml_syntax_error_is_one_line_naming_the_file():
    with pytest.raises(LimitsConfigError) as info:
        parse_limits("[defaults]\nmax_queue = = 3", "bad.toml")
    message = str(info.value)
    assert message.startswith("bad.toml: invalid TOML: ")
    assert "line 2" in message
    assert "\n" not in message


def test_long_bad_values_are_shortened_in_the_message():
    with pytest.raises(LimitsConfigError) as info:
        parse_limits(f'[defaults]\nmax_queue = "{"x" * 500}"', "f.toml")
    assert len(str(info.value)) < 200


# --- resolution ----------------------------------------------------------------------------------


def test_simple_normalize_defaults_the_tag_and_lowercases():
    assert simple_normalize("LLAMA3.2") == "llama3.2:latest"
    assert simple_normalize(" llama3.2:Q4 ") == "llama3.2:q4"
    assert simple_normalize("localhost:5000/ns/m") == "localhost:5000/ns/m:latest"


def test_first_matching_entry_wins():
    config = parse_limits(
        """
        [[models]]
        match = "qwen3*"
        max_concurrency = 5
        [[models]]
        match = "qwen3:14b"
        max_concurrency = 2
        [[models]]
        match = "qwen3:14b"
        max_concurrency = 9
        """
    )
    resolver = LimitsResolver(config)
    assert resolver.limits_for("qwen3:14b").max_concurrency == 5
    assert resolver.rule_for("qwen3:14b") is config.models[0]
    assert resolver.rule_for("llama3") is None
    assert resolver.limits_for("llama3") == config.defaults
    assert resolver.exact_models == ("qwen3:14b",)


def test_exact_match_is_normalised_on_both_sides():
    config = parse_limits('[[models]]\nmatch = "Llama3.2"\nmax_concurrency = 3')
    resolver = LimitsResolver(config)
    for name in ("llama3.2", "llama3.2:latest", "LLAMA3.2:LATEST"):
        assert resolver.limits_for(name).max_concurrency == 3, name
    assert resolver.rule_for("llama3.2:1b") is None
    assert resolver.exact_models == ("llama3.2:latest",)


def test_glob_is_lowercased_and_matched_against_the_normalised_name():
    config = parse_limits(
        """
        [[models]]
        match = "NOMIC-EMBED-TEXT*"
        max_concurrency = 8
        [[models]]
        match = "llama3.?:*b"
        max_concurrency = 4
        [[models]]
        match = "*:q[48]"
        max_concurrency = 6
        """
    )
    resolver = LimitsResolver(config)
    assert resolver.limits_for("nomic-embed-text").max_concurrency == 8  # ...:latest
    assert resolver.limits_for("Nomic-Embed-Text:V1.5").max_concurrency == 8
    assert resolver.limits_for("llama3.2:3b").max_concurrency == 4
    assert resolver.limits_for("llama3.2").max_concurrency == 1  # :latest does not end in b
    assert resolver.limits_for("phi3:q8").max_concurrency == 6
    assert resolver.limits_for("phi3:q5").max_concurrency == 1


def test_injected_normaliser_is_used_for_names_and_exact_matches():
    def normalize(name: str) -> str:
        name = simple_normalize(name)
        return name.removeprefix("registry.ollama.ai/").removeprefix("library/")

    config = parse_limits('[[models]]\nmatch = "library/llama3.2"\nmax_concurrency = 2')
    resolver = LimitsResolver(config, normalize)
    assert resolver.limits_for("registry.ollama.ai/library/llama3.2:latest").max_concurrency == 2
    assert resolver.limits_for("llama3.2").max_concurrency == 2


def test_exact_match_the_normaliser_rejects_is_a_config_error():
    def strict(name: str) -> str:
        if " " in name.strip():
            raise ValueError("spaces are not allowed")
        return simple_normalize(name)

    config = parse_limits('[[models]]\nmatch = "x*"\n[[models]]\nmatch = "bad name"', "l.toml")
    with pytest.raises(LimitsConfigError) as info:
        LimitsResolver(config, strict)
    message = str(info.value)
    assert message.startswith("l.toml: models[1].match: 'bad name' is not a valid model name")
    assert "spaces are not allowed" in message
    assert "expected" in message


# --- reloading -----------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.applied: list[LimitsConfig] = []
        self.lock = threading.Lock()

    def __call__(self, config: LimitsConfig) -> None:
        with self.lock:
            self.applied.append(config)


def test_check_picks_up_an_edit_and_nothing_else(tmp_path):
    path = tmp_path / "limits.toml"
    write(path, "[defaults]\nmax_concurrency = 1\n")
    apply = Recorder()
    reloader = LimitsReloader(path, apply)

    initial = reloader.load_initial()
    assert initial.defaults.max_concurrency == 1
    assert apply.applied == [initial]
    assert reloader.check() is False

    write(path, "[defaults]\nmax_concurrency = 4\n", bump=1)
    assert reloader.check() is False  # changed since the last look: let it settle
    assert reloader.check() is True
    assert apply.applied[-1].defaults.max_concurrency == 4
    assert reloader.current is apply.applied[-1]
    assert reloader.check() is False
    assert len(apply.applied) == 2


def test_broken_file_keeps_last_good_config_and_logs_one_line(tmp_path, caplog):
    path = tmp_path / "limits.toml"
    write(path, "[defaults]\nmax_concurrency = 2\n")
    apply = Recorder()
    reloader = LimitsReloader(path, apply)
    good = reloader.load_initial()

    write(path, "[defaults]\nmax_concurrency = 0\n", bump=1)
    with caplog.at_level(logging.INFO, logger="management_api.proxy.limits_config"):
        assert reloader.check() is False  # settling
        assert reloader.check() is False
        assert reloader.check() is False  # unchanged broken file: no second line
    assert reloader.current is good
    assert apply.applied == [good]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    line = errors[0].getMessage()
    assert "keeping the last good config" in line
    assert "defaults.max_concurrency" in line and str(path) in line
    assert "\n" not in line

    write(path, "[defaults]\nmax_concurrency = 3\n", bump=2)
    assert reloader.check() is False
    assert reloader.check() is True
    assert reloader.current.defaults.max_concurrency == 3


def test_a_file_caught_mid_write_is_not_applied(tmp_path):
    # Truncate-then-write: a check that sees the empty file must not make "all defaults" the
    # last good config, which a broken final text would then keep.
    path = tmp_path / "limits.toml"
    write(path, "[defaults]\nmax_concurrency = 3\n")
    reloader = LimitsReloader(path, Recorder())
    good = reloader.load_initial()
    write(path, "", bump=1)
    assert reloader.check() is False
    write(path, "[defaults]\nmax_concurrency = 'lots'\n", bump=2)
    assert reloader.check() is False
    assert reloader.check() is False
    assert reloader.current is good
    write(path, "[defaults]\nmax_concurrency = 5\n", bump=3)
    assert reloader.check() is False
    assert reloader.check() is True
    assert reloader.current.defaults.max_concurrency == 5


def test_vanished_file_keeps_last_good_config(tmp_path, caplog):
    path = tmp_path / "limits.toml"
    write(path, "[global]\nmax_concurrency = 5\n")
    reloader = LimitsReloader(path, Recorder())
    good = reloader.load_initial()
    path.unlink()
    with caplog.at_level(logging.ERROR, logger="management_api.proxy.limits_config"):
        assert reloader.check() is False
        assert reloader.check() is False
    assert reloader.current is good
    assert len(caplog.records) == 1
    assert "disappeared" in caplog.records[0].getMessage()


def test_apply_refusing_the_config_keeps_the_last_good_one(tmp_path, caplog):
    path = tmp_path / "limits.toml"
    write(path, "")
    refused: list[LimitsConfig] = []

    def apply(config: LimitsConfig) -> None:
        if config.models:
            refused.append(config)
            raise LimitsConfigError(f"{config.source}: models[0].match: nope; expected better")

    reloader = LimitsReloader(path, apply)
    good = reloader.load_initial()
    write(path, '[[models]]\nmatch = "x"\n', bump=1)
    with caplog.at_level(logging.ERROR, logger="management_api.proxy.limits_config"):
        assert reloader.check() is False
        assert reloader.check() is False
    assert len(refused) == 1
    assert reloader.current is good
    assert "models[0].match: nope" in caplog.records[0].getMessage()


def test_load_initial_raises_on_a_broken_file(tmp_path):
    path = tmp_path / "limits.toml"
    write(path, "[nonsense]\n")
    apply = Recorder()
    with pytest.raises(LimitsConfigError, match="nonsense"):
        LimitsReloader(path, apply).load_initial()
    assert apply.applied == []


def test_reload_now_rereads_even_without_a_change(tmp_path):
    path = tmp_path / "limits.toml"
    write(path, "[defaults]\nmax_queue = 7\n")
    apply = Recorder()
    reloader = LimitsReloader(path, apply)
    reloader.load_initial()
    assert reloader.reload_now() is True
    assert [c.defaults.max_queue for c in apply.applied] == [7, 7]


def test_poll_thread_applies_an_edit_and_stops(tmp_path):
    path = tmp_path / "limits.toml"
    write(path, "[defaults]\nmax_concurrency = 1\n")
    apply = Recorder()
    reloader = LimitsReloader(path, apply, interval_seconds=0.02)
    reloader.load_initial()
    reloader.start()
    try:
        write(path, "[defaults]\nmax_concurrency = 6\n", bump=1)
        assert wait_until(lambda: reloader.current.defaults.max_concurrency == 6)
        assert apply.applied[-1].defaults.max_concurrency == 6
    finally:
        reloader.stop()
    assert not any(t.name == "limits-reloader" for t in threading.enumerate())


def test_request_reload_wakes_the_thread_at_once(tmp_path):
    path = tmp_path / "limits.toml"
    write(path, "[defaults]\nmax_queue = 1\n")
    apply = Recorder()
    # A poll interval far beyond the test's deadline: only the request can cause the reload.
    reloader = LimitsReloader(path, apply, interval_seconds=3600)
    reloader.load_initial()
    reloader.start()
    try:
        reloader.request_reload()
        assert wait_until(lambda: len(apply.applied) == 2)
    finally:
        reloader.stop()


# --- a ConfigMap mounted in a pod ----------------------------------------------------------------


def test_file_identity_follows_symlinks_and_is_none_when_unreadable(tmp_path):
    assert file_identity(tmp_path / "missing.toml") is None
    dangling = tmp_path / "dangling.toml"
    dangling.symlink_to(tmp_path / "nowhere.toml")
    assert file_identity(dangling) is None
    volume = ConfigMapVolume(tmp_path / "config")
    version = volume.write({"limits.toml": "[defaults]\n"})
    identity = file_identity(volume.path("limits.toml"))
    assert identity is not None
    assert identity[0] == os.path.realpath(version / "limits.toml")
    assert identity[2] == (version / "limits.toml").stat().st_ino


def test_a_configmap_update_is_applied_even_with_the_same_size_and_mtime(tmp_path):
    volume = ConfigMapVolume(tmp_path / "config")
    stamp = 1_700_000_000
    volume.write({"limits.toml": "[defaults]\nmax_concurrency = 1\n"}, mtime=stamp)
    apply = Recorder()
    reloader = LimitsReloader(volume.path("limits.toml"), apply)
    assert reloader.load_initial().defaults.max_concurrency == 1
    link_before = os.lstat(volume.path("limits.toml"))

    # Same length, same mtime: only the ..data swap tells the versions apart.
    volume.write({"limits.toml": "[defaults]\nmax_concurrency = 7\n"}, mtime=stamp)
    link_after = os.lstat(volume.path("limits.toml"))
    assert (link_after.st_ino, link_after.st_mtime_ns) == (
        link_before.st_ino,
        link_before.st_mtime_ns,
    )
    assert reloader.check() is False  # settling, as for any edit
    assert reloader.check() is True
    assert apply.applied[-1].defaults.max_concurrency == 7

    # A broken version keeps the last good config; the next good one is applied.
    volume.write({"limits.toml": "[defaults]\nmax_concurrency = 0\n"})
    assert reloader.check() is False
    assert reloader.check() is False
    assert reloader.current.defaults.max_concurrency == 7
    volume.write({"limits.toml": "[defaults]\nmax_concurrency = 3\n"})
    reloader.check()
    assert reloader.check() is True
    assert reloader.current.defaults.max_concurrency == 3
    assert reloader.check() is False
    assert len(apply.applied) == 3


def test_poll_thread_applies_configmap_updates(tmp_path):
    volume = ConfigMapVolume(tmp_path / "config")
    volume.write({"limits.toml": "[defaults]\nmax_queue = 1\n"})
    apply = Recorder()
    reloader = LimitsReloader(volume.path("limits.toml"), apply, interval_seconds=0.02)
    reloader.load_initial()
    reloader.start()
    try:
        for queue in (2, 3):
            volume.write({"limits.toml": f"[defaults]\nmax_queue = {queue}\n"})
            assert wait_until(lambda q=queue: reloader.current.defaults.max_queue == q)
    finally:
        reloader.stop()
    assert [c.defaults.max_queue for c in apply.applied] == [1, 2, 3]


# --- what the worker can hold (issue 29)


def test_capacity_leaves_threads_for_other_routes():
    from management_api.proxy.limits_config import request_capacity

    assert request_capacity(256) == 240
    assert request_capacity(16) == 14
    assert request_capacity(1) == 1


def test_a_file_promising_more_waiters_than_threads_is_refused():
    from management_api.proxy.limits_config import check_capacity

    text = '[[models]]\nmatch = "nomic-embed-text*"\nmax_concurrency = 8\nmax_queue = 256\n'
    config = parse_limits(text, "limits.toml")
    with pytest.raises(LimitsConfigError) as err:
        check_capacity(config, 256)
    message = str(err.value)
    assert "\n" not in message
    assert "models[0].max_queue" in message and "264" in message and "240" in message
    check_capacity(config, 512)  # a larger pool holds it


def test_defaults_count_too():
    from management_api.proxy.limits_config import check_capacity

    with pytest.raises(LimitsConfigError, match=r"defaults\.max_queue"):
        check_capacity(parse_limits("[defaults]\nmax_queue = 64\n", "f"), 32)


@pytest.mark.parametrize("path", ["config/limits.toml", "deploy/k8s/base/limits.toml"])
def test_shipped_limits_fit_the_default_pool(path):
    from management_api.proxy.limits_config import check_capacity
    from management_api.settings import Settings
    from tests.service_harness import ROOT

    check_capacity(load_limits(ROOT / path), Settings.load({}).worker_threads)
    assert (ROOT / path).read_text() == (ROOT / "config/limits.toml").read_text()


def test_the_limiter_refuses_arrivals_past_what_the_worker_holds():
    from management_api.proxy.limiter import Limiter, QueueFull

    config = parse_limits("[defaults]\nmax_concurrency = 1\nmax_queue = 6\n", "f")
    limiter = Limiter(config, worker_threads=16)  # holds 14
    tickets = [limiter.submit(f"m{i % 3}:latest") for i in range(14)]
    with pytest.raises(QueueFull):
        limiter.submit("m3:latest")  # a fourth model, with room of its own, is still refused
    tickets[0].slot.release()
    limiter.submit("m3:latest")


def test_a_reload_past_capacity_keeps_the_config():
    from management_api.proxy.limiter import Limiter

    limiter = Limiter(parse_limits("[defaults]\nmax_queue = 4\n", "f"), worker_threads=16)
    with pytest.raises(LimitsConfigError):
        limiter.update_config(parse_limits("[defaults]\nmax_queue = 40\n", "g"))
    assert limiter.config.defaults.max_queue == 4
