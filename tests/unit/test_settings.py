import re
from pathlib import Path

import pytest

from management_api.settings import PROJECT_ROOT, SETTINGS, Settings, SettingsError

CONFIGURATION_DOC = PROJECT_ROOT / "docs" / "configuration.md"


def test_defaults():
    s = Settings.load({}, None)
    assert s.ollama_url == "http://127.0.0.1:11433"
    assert (s.proxy_port, s.management_port) == (11434, 11436)
    assert s.proxy_enabled is True
    assert s.default_model is None
    assert s.keep_alive_seconds is None and s.context_length is None
    assert s.stats_interval == 5
    assert s.model_cache_ttl == 30
    assert (s.cache_max_mb, s.cache_ttl_seconds) == (0, 900)  # the response cache is off
    assert s.cache_shared_across_keys is False  # per API key
    assert s.limits_file == PROJECT_ROOT / "config" / "limits.toml"
    assert s.log_dir == PROJECT_ROOT / "logs"
    assert s.ollama_log_file == PROJECT_ROOT / "logs" / "ollama.log"
    assert s.supervisor_socket == Path("/run/llm-service/supervisor.sock")
    assert s.management_url == "http://127.0.0.1:11436"
    assert s.auth_mode == "off"
    assert s.api_keys == () and s.cors_origins == ()
    assert s.max_body_mb == 64
    assert s.pull_retries == 3 and s.pull_stall_seconds == 60 and s.pull_min_free_gb == 2
    assert s.models_dir == Path.home() / ".ollama" / "models"
    assert s.state_dir == PROJECT_ROOT / "state"  # beside the log directory
    assert (s.usage_retention_days, s.usage_flush_seconds) == (90, 2)
    assert (s.jobs_workers, s.jobs_max_concurrent, s.jobs_max_queued) == (4, 2, 10000)
    assert (s.jobs_max_attempts, s.jobs_ttl_seconds) == (3, 86400)
    assert (s.jobs_max_stored, s.jobs_max_stored_mb, s.jobs_max_result_mb) == (10000, 256, 16)
    assert s.jobs_callback_hosts == () and s.jobs_callback_attempts == 5


def test_every_variable_is_read_from_the_environment(tmp_path):
    env = {
        "OLLAMA_URL": "http://10.0.0.5:11500/",
        "LLM_PROXY_PORT": "12000",
        "LLM_MANAGEMENT_PORT": "12001",
        "LLM_BIND_HOST": "127.0.0.1",
        "LLM_PROXY_ENABLED": "false",
        "LLM_MODEL": "qwen3:14b-q8",
        "LLM_KEEP_ALIVE_SECONDS": "-1",
        "LLM_CONTEXT_LENGTH": "8192",
        "LLM_STATS_INTERVAL": "2.5",
        "LLM_MODEL_CACHE_TTL": "0",
        "LLM_LIMITS_FILE": str(tmp_path / "limits.toml"),
        "LLM_LIMITS_RELOAD_SECONDS": "0.5",
        "LLM_TASKS_FILE": str(tmp_path / "tasks.toml"),
        "LLM_LOG_DIR": "var/log",
        "LLM_WORKER_THREADS": "64",
        "LLM_HEADER_TIMEOUT_SECONDS": "3",
        "LLM_SEND_TIMEOUT_SECONDS": "45",
        "LLM_UPSTREAM_CONNECT_TIMEOUT": "1.5",
        "LLM_UPSTREAM_READ_TIMEOUT": "10",
        "LLM_UPSTREAM_GRACE_SECONDS": "0",
        "LLM_OLLAMA_LOG_FILE": str(tmp_path / "ollama.log"),
        "LLM_HEALTH_LOG_WINDOW": "120",
        "LLM_PULL_RETRIES": "0",
        "LLM_PULL_STALL_SECONDS": "15",
        "LLM_MODELS_DIR": str(tmp_path),
        "LLM_PULL_MIN_FREE_GB": "0",
        "LLM_MANAGEMENT_URL": "http://llm-service:12001",
        "LLM_AUTH_MODE": "Management",
        "LLM_API_KEYS": "ops:k1:admin, n8n:k2:user",
        "LLM_API_KEYS_FILE": str(tmp_path / "keys"),
        "LLM_CORS_ORIGINS": "http://localhost:3001,http://dashboard:3001",
        "OLLAMA_ORIGINS": "chrome-extension://*, https://*.corp.example",
        "LLM_ALLOWED_HOSTS": "llm.example.com,.corp.example",
        "LLM_MAX_BODY_MB": "8",
        "LLM_INFER_MAX_INPUT_MB": "2.5",
        "LLM_IMPORT_DIR": str(tmp_path / "gguf"),
        "LLM_CACHE_MAX_MB": "128.5",
        "LLM_CACHE_TTL_SECONDS": "60",
        "LLM_CACHE_SHARED_ACROSS_KEYS": "true",
        "LLM_SUPERVISOR_SOCKET": str(tmp_path / "supervisor.sock"),
        "LLM_STATE_DIR": str(tmp_path / "state"),
        "LLM_USAGE_RETENTION_DAYS": "30",
        "LLM_USAGE_FLUSH_SECONDS": "0.5",
        "LLM_JOBS_WORKERS": "8",
        "LLM_JOBS_MAX_CONCURRENT": "3",
        "LLM_JOBS_MAX_QUEUED": "50",
        "LLM_JOBS_MAX_ATTEMPTS": "5",
        "LLM_JOBS_TTL_SECONDS": "3600",
        "LLM_JOBS_MAX_STORED": "100",
        "LLM_JOBS_MAX_STORED_MB": "1.5",
        "LLM_JOBS_MAX_RESULT_MB": "0.5",
        "LLM_JOBS_CALLBACK_HOSTS": "n8n, hooks.example.com:8443",
        "LLM_JOBS_CALLBACK_ATTEMPTS": "2",
        "LLM_JOBS_CALLBACK_TIMEOUT_SECONDS": "4",
    }
    assert set(env) == {s.variable for s in SETTINGS}, "test must cover every declared setting"
    s = Settings.load(env)
    assert s.ollama_url == "http://10.0.0.5:11500"
    assert (s.proxy_port, s.management_port, s.bind_host) == (12000, 12001, "127.0.0.1")
    assert s.proxy_enabled is False
    assert s.default_model == "qwen3:14b-q8"
    assert s.keep_alive_seconds == -1 and s.context_length == 8192
    assert s.stats_interval == 2.5 and s.model_cache_ttl == 0
    assert s.limits_file == tmp_path / "limits.toml"
    assert s.limits_reload_seconds == 0.5
    assert s.tasks_file == tmp_path / "tasks.toml"
    assert s.log_dir == PROJECT_ROOT / "var" / "log"
    assert s.worker_threads == 64
    assert (s.header_timeout_seconds, s.send_timeout_seconds) == (3, 45)
    assert (s.upstream_connect_timeout, s.upstream_read_timeout) == (1.5, 10)
    assert s.upstream_grace_seconds == 0 and s.health_log_window == 120
    assert s.ollama_log_file == tmp_path / "ollama.log"
    assert (s.pull_retries, s.pull_stall_seconds, s.pull_min_free_gb) == (0, 15, 0)
    assert s.models_dir == tmp_path
    assert s.management_url == "http://llm-service:12001"
    assert s.auth_mode == "management"
    assert s.api_keys == ("ops:k1:admin", "n8n:k2:user")
    assert s.api_keys_file == tmp_path / "keys"
    assert s.cors_origins == ("http://localhost:3001", "http://dashboard:3001")
    assert s.ollama_origins == ("chrome-extension://*", "https://*.corp.example")
    assert s.allowed_hosts == ("llm.example.com", ".corp.example")
    assert s.infer_max_input_mb == 2.5
    assert s.max_body_mb == 8 and s.import_dir == tmp_path / "gguf"
    assert s.supervisor_socket == tmp_path / "supervisor.sock"
    assert (s.cache_max_mb, s.cache_ttl_seconds) == (128.5, 60)
    assert s.cache_shared_across_keys is True
    assert s.state_dir == tmp_path / "state"
    assert (s.usage_retention_days, s.usage_flush_seconds) == (30, 0.5)
    assert (s.jobs_workers, s.jobs_max_concurrent, s.jobs_max_queued) == (8, 3, 50)
    assert (s.jobs_max_attempts, s.jobs_ttl_seconds, s.jobs_max_stored) == (5, 3600, 100)
    assert (s.jobs_max_stored_mb, s.jobs_max_result_mb) == (1.5, 0.5)
    assert s.jobs_callback_hosts == ("n8n", "hooks.example.com:8443")
    assert (s.jobs_callback_attempts, s.jobs_callback_timeout_seconds) == (2, 4)


def test_state_dir_follows_the_log_dir_and_must_be_a_directory(tmp_path):
    assert Settings.load({"LLM_LOG_DIR": str(tmp_path / "logs")}).state_dir == tmp_path / "state"
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingsError, match="LLM_STATE_DIR"):
        Settings.load({"LLM_STATE_DIR": str(tmp_path / "file")})
    for bad in ("0", "-1", "x"):
        with pytest.raises(SettingsError, match="LLM_JOBS_MAX_CONCURRENT"):
            Settings.load({"LLM_JOBS_MAX_CONCURRENT": bad})
    with pytest.raises(SettingsError, match="LLM_JOBS_MAX_STORED_MB"):
        Settings.load({"LLM_JOBS_MAX_STORED_MB": "0"})


def test_models_dir_follows_ollama_models():
    assert Settings.load({"OLLAMA_MODELS": "/data/models"}).models_dir == Path("/data/models")


def test_management_url_follows_management_port():
    assert Settings.load({"LLM_MANAGEMENT_PORT": "9000"}).management_url == (
        "http://127.0.0.1:9000"
    )


def test_empty_variable_means_unset():
    assert Settings.load({"LLM_MODEL": "", "LLM_STATS_INTERVAL": "  "}).stats_interval == 5


def test_precedence_env_over_file_over_defaults(tmp_path):
    config = tmp_path / "llm.toml"
    config.write_text('LLM_MODEL = "gemma3:4b"\nLLM_STATS_INTERVAL = 7\nLLM_PROXY_PORT = 12000\n')
    from_file = Settings.load({}, config_file=config)
    assert from_file.default_model == "gemma3:4b"
    assert from_file.stats_interval == 7 and from_file.proxy_port == 12000
    assert from_file.management_port == 11436  # default
    env_wins = Settings.load({"LLM_CONFIG_FILE": str(config), "LLM_STATS_INTERVAL": "3"})
    assert env_wins.stats_interval == 3
    assert env_wins.default_model == "gemma3:4b"
    assert env_wins.config_file == config


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLM_STATS_INTERVAL": "abc"},
         "LLM_STATS_INTERVAL='abc' is invalid: expected a number of seconds greater than 0"),
        ({"LLM_STATS_INTERVAL": "0"}, "LLM_STATS_INTERVAL='0' is invalid"),
        ({"LLM_STATS_INTERVAL": "nan"}, "LLM_STATS_INTERVAL='nan' is invalid"),
        ({"LLM_PROXY_PORT": "99999"},
         "LLM_PROXY_PORT='99999' is invalid: expected a TCP port number between 1 and 65535"),
        ({"LLM_MANAGEMENT_PORT": "http"}, "LLM_MANAGEMENT_PORT='http' is invalid"),
        ({"LLM_PROXY_PORT": "0"}, "LLM_PROXY_PORT='0' is invalid"),
        ({"OLLAMA_URL": "localhost:11433"},
         "OLLAMA_URL='localhost:11433' is invalid: expected an http:// or https:// URL"),
        ({"OLLAMA_URL": "http://host:99999"}, "OLLAMA_URL='http://host:99999' is invalid"),
        ({"OLLAMA_URL": "http://host/api"}, "OLLAMA_URL='http://host/api' is invalid"),
        ({"LLM_PROXY_ENABLED": "maybe"},
         "LLM_PROXY_ENABLED='maybe' is invalid: expected true or false"),
        ({"LLM_MODEL": "bad name!"},
         "LLM_MODEL='bad name!' is invalid: expected an Ollama model name"),
        ({"LLM_KEEP_ALIVE_SECONDS": "5m"}, "LLM_KEEP_ALIVE_SECONDS='5m' is invalid"),
        ({"LLM_CONTEXT_LENGTH": "0"},
         "LLM_CONTEXT_LENGTH='0' is invalid: expected a whole number of 1 or more"),
        ({"LLM_MODEL_CACHE_TTL": "-1"},
         "LLM_MODEL_CACHE_TTL='-1' is invalid: expected a number of seconds, 0 or more"),
        ({"LLM_WORKER_THREADS": "1.5"}, "LLM_WORKER_THREADS='1.5' is invalid"),
        ({"LLM_PULL_RETRIES": "-2"},
         "LLM_PULL_RETRIES='-2' is invalid: expected a whole number, 0 or more"),
        ({"LLM_AUTH_MODE": "strict"},
         "LLM_AUTH_MODE='strict' is invalid: expected one of off, management, all"),
        ({"LLM_MAX_BODY_MB": "0"}, "LLM_MAX_BODY_MB='0' is invalid"),
        ({"LLM_CACHE_MAX_MB": "-1"}, "LLM_CACHE_MAX_MB='-1' is invalid: expected a number, 0"),
        ({"LLM_CACHE_TTL_SECONDS": "0"}, "LLM_CACHE_TTL_SECONDS='0' is invalid"),
        ({"LLM_BIND_HOST": "0.0.0.0/0"}, "LLM_BIND_HOST='0.0.0.0/0' is invalid"),
        ({"LLM_PROXY_PORT": "9000", "LLM_MANAGEMENT_PORT": "9000"},
         "LLM_PROXY_PORT and LLM_MANAGEMENT_PORT are both 9000"),
    ],
)  # fmt: skip
def test_bad_values_name_the_variable_and_the_accepted_form(env, message):
    with pytest.raises(SettingsError) as info:
        Settings.load(env)
    text = str(info.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_same_ports_allowed_when_proxy_disabled():
    s = Settings.load(
        {"LLM_PROXY_ENABLED": "false", "LLM_PROXY_PORT": "9000", "LLM_MANAGEMENT_PORT": "9000"}
    )
    assert s.management_port == 9000


def test_bad_config_files(tmp_path):
    with pytest.raises(SettingsError, match=r"LLM_CONFIG_FILE=.*file not found"):
        Settings.load({"LLM_CONFIG_FILE": str(tmp_path / "missing.toml")})
    broken = tmp_path / "broken.toml"
    broken.write_text("LLM_MODEL = \n")
    with pytest.raises(SettingsError, match="is not a readable TOML file"):
        Settings.load({}, config_file=broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("LLM_MODDEL = 'x'\n")
    with pytest.raises(SettingsError, match="unknown keys LLM_MODDEL"):
        Settings.load({}, config_file=unknown)
    bad_value = tmp_path / "bad.toml"
    bad_value.write_text("LLM_PROXY_PORT = 70000\n")
    with pytest.raises(SettingsError, match="LLM_PROXY_PORT=70000 is invalid"):
        Settings.load({}, config_file=bad_value)


def test_settings_are_frozen():
    s = Settings.load({})
    with pytest.raises(AttributeError):
        s.proxy_port = 1  # type: ignore[misc]


def test_as_dict_hides_keys():
    d = Settings.load({"LLM_API_KEYS": "ops:secret-key:admin"}).as_dict()
    assert d["api_keys"] == 1
    assert "secret-key" not in repr(d)


def _documented_rows() -> dict[str, list[str]]:
    """docs/configuration.md's table rows by the variable in their first cell: the cells."""
    rows = {}
    for line in CONFIGURATION_DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3:
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
                rows.setdefault(name, cells)
    return rows


def test_every_setting_is_documented_with_its_default():
    rows = _documented_rows()
    missing = [s.variable for s in SETTINGS if s.variable not in rows]
    assert not missing, f"docs/configuration.md (Service settings) lacks {missing}"
    wrong = []
    for s in SETTINGS:
        if s.default is None or s.default == "":
            continue  # "(none)" or a derived default, described in words
        shown = str(s.default).lower() if isinstance(s.default, bool) else str(s.default)
        if f"`{shown}`" not in rows[s.variable][1]:
            wrong.append(f"{s.variable}: default `{shown}`, documented {rows[s.variable][1]!r}")
    assert not wrong, "docs/configuration.md shows other defaults than settings.py:\n" + (
        "\n".join(wrong)
    )
