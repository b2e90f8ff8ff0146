"""The Origin and Host rules of access/cors.py and access/hosts.py, case by case (issue 28, #4).

Ollama v0.20.5's rules, read from its server/routes.go (``allowedHostsMiddleware``,
``allowedHost``) and envconfig/config.go (``AllowedOrigins``), with gin-contrib/cors v1.7.2's
matching; the service's deliberate widenings are spelled out in access/hosts.py.
"""

from __future__ import annotations

import pytest

from management_api.access.cors import CorsPolicy, is_same_origin, ollama_default_origins
from management_api.access.guard import refusal
from management_api.access.hosts import HostPolicy, host_name
from management_api.settings import SettingsError

DEFAULTS_ALLOW = [
    "http://localhost",
    "https://localhost",
    "http://localhost:3000",
    "https://localhost:8443",
    "http://127.0.0.1",
    "http://127.0.0.1:8080",
    "http://0.0.0.0:11434",
    "app://obsidian.md",
    "file://",
    "tauri://localhost",
    "vscode-webview://1234abcd",
    "vscode-file://vscode-app",
]
DEFAULTS_REFUSE = [
    "http://evil.example",
    "https://evil.example:11434",
    "null",  # sandboxed frames and (in Chrome) file:// pages: Ollama refuses these too
    "http://localhost.evil.example",
    "http://127.0.0.2",
    "http://[::1]:3000",  # not in Ollama's list either
    "chrome-extension://abcdef",  # needs OLLAMA_ORIGINS=chrome-extension://*
    "ws://localhost:3000",
]


def test_ollama_defaults_are_the_pinned_versions_list():
    assert ollama_default_origins() == (
        "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
        "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
        "http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
        "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
    )  # fmt: skip


@pytest.mark.parametrize("origin", DEFAULTS_ALLOW)
def test_ollamas_default_origins_are_allowed(origin):
    assert CorsPolicy([]).allows(origin)


@pytest.mark.parametrize("origin", DEFAULTS_REFUSE)
def test_other_origins_are_refused(origin):
    assert not CorsPolicy([]).allows(origin)


def test_configured_and_ollama_origins_add_to_the_defaults():
    policy = CorsPolicy(["http://dashboard.local:3001"], ["chrome-extension://*", "https://*.corp"])
    assert policy.allows("http://dashboard.local:3001")
    assert policy.allows("http://DASHBOARD.local:3001/")
    assert policy.allows("chrome-extension://abcdef")
    assert policy.allows("https://app.corp") and not policy.allows("https://corp")
    assert not policy.allows("http://dashboard.local:3002")
    assert policy.allows("http://localhost:5173")
    assert CorsPolicy(["*"]).allows("https://anything.example")


def test_two_stars_in_one_origin_stop_start_up():
    with pytest.raises(SettingsError, match="at most one"):
        CorsPolicy([], ["https://*.*.example"])


def test_same_origin_is_no_cross_site_request():
    assert is_same_origin("http://192.168.1.20:11436", "192.168.1.20:11436")
    assert is_same_origin("https://jetson.example:11436", "jetson.example:11436")
    assert not is_same_origin("http://192.168.1.20:11436", "192.168.1.20:11434")
    assert not is_same_origin("http://evil.example", None)


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("evil.example:11434", "evil.example"),
        ("Evil.Example", "evil.example"),
        ("[::1]:11434", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("localhost.", "localhost"),
        ("", ""),
    ],
)
def test_host_name_is_split_like_go(header, name):
    assert host_name(header) == name


HOSTS_ALLOW = [
    None,
    "",
    "localhost",
    "localhost:11434",
    "127.0.0.1:11434",
    "192.168.1.20:11436",
    "10.0.0.5",
    "[::1]:11434",
    "[fe80::1]:11434",
    "203.0.113.7:11434",  # an IP literal, even a public one, cannot be rebound
    "llm-service",  # compose container name (n8n)
    "llm-service:11434",
    "llm-service.default.svc",
    "llm-service.default.svc.cluster.local:11434",
    "jetson.local:11436",  # mDNS
    "app.localhost:3000",
    "host.docker.internal:11434",
    "the-machine",
    "the-machine.lan.example",  # the machine's own name
]
HOSTS_REFUSE = [
    "evil.example:11434",
    "evil.example",
    "evil.example.:11434",
    "localhost.evil.example",
    "127.0.0.1.nip.io:11434",
    "0x7f.1:11434",  # not an address Go or Python accepts: a dotted name
    "svc.evil.example",
]


@pytest.mark.parametrize("header", HOSTS_ALLOW)
def test_local_hosts_pass(header):
    assert HostPolicy([], machine_name="the-machine.lan.example").allows(header)


def test_the_machines_own_dotted_name_passes_only_on_that_machine():
    assert not HostPolicy([], machine_name="other").allows("the-machine.lan.example")
    assert HostPolicy([], machine_name="The-Machine.lan.example.").allows("the-machine.lan.example")


@pytest.mark.parametrize("header", HOSTS_REFUSE)
def test_public_names_are_refused(header):
    assert not HostPolicy([], machine_name="the-machine").allows(header)


def test_allowed_hosts_setting():
    policy = HostPolicy(["llm.example.com", ".corp.example", "*.lab.example"], machine_name="m")
    assert policy.allows("llm.example.com:11434") and policy.allows("LLM.example.com")
    assert not policy.allows("other.example.com")
    assert policy.allows("corp.example") and policy.allows("a.b.corp.example:11436")
    assert policy.allows("x.lab.example") and policy.allows("lab.example")
    assert not policy.allows("notcorp.example")
    assert HostPolicy(["*"], machine_name="m").allows("evil.example")


def test_refusal_checks_origin_first_then_host():
    cors, hosts = CorsPolicy(["http://dashboard.local:3001"]), HostPolicy([], machine_name="m")
    assert refusal(cors, hosts, None, "localhost:11434") == ""
    assert refusal(cors, hosts, "http://evil.example", "localhost:11434") == "origin"
    assert refusal(cors, hosts, "http://evil.example", "evil.example:11434") == "origin"
    assert refusal(cors, hosts, None, "evil.example:11434") == "host"
    assert refusal(cors, hosts, "http://dashboard.local:3001", "llm-service:11436") == ""
    # The status page's own fetches, whatever address the operator opened it on.
    assert refusal(cors, hosts, "http://192.168.1.20:11436", "192.168.1.20:11436") == ""
    assert refusal(cors, hosts, "http://jetson.local:11436", "jetson.local:11436") == ""
    # Same origin does not excuse a public Host: that is the rebinding case itself.
    assert refusal(cors, hosts, "http://evil.example:11436", "evil.example:11436") == "host"
