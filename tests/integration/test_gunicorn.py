"""The app under the real gunicorn config: both ports, one worker, start-up validation."""

import requests

from tests.service_harness import ServiceProcess, run_gunicorn_expecting_exit


def test_serves_both_ports_and_reports_ollama_down():
    with ServiceProcess() as service:
        for base in (service.proxy_url, service.management_url):
            live = requests.get(base + "/health/live", timeout=5)
            assert live.status_code == 200
            assert live.json()["status"] == "alive"
            ready = requests.get(base + "/health/ready", timeout=5)
            assert ready.status_code == 503
            assert ready.headers["Retry-After"] == "5"
            assert ready.json()["type"] == "ollama_unavailable"
            assert "127.0.0.1" not in ready.text  # no internal URL in errors
        missing = requests.get(service.management_url + "/nope", timeout=5)
        assert missing.status_code == 404 and missing.json()["type"] == "not_found"
        service.assert_alive()
        assert "background services started" in service.output()


def test_proxy_disabled_serves_only_the_management_port():
    with ServiceProcess(env={"LLM_PROXY_ENABLED": "false"}) as service:
        assert requests.get(service.management_url + "/health/live", timeout=5).ok
        try:
            requests.get(service.proxy_url + "/health/live", timeout=2)
        except requests.ConnectionError:
            pass
        else:
            raise AssertionError("the proxy port must not be bound when the proxy is disabled")


def test_a_second_worker_is_refused():
    for args, env in (
        (("-w", "2"), {}),
        ((), {"GUNICORN_CMD_ARGS": "--workers 3"}),
    ):
        done = run_gunicorn_expecting_exit(env, args)
        assert done.returncode == 2, done.stderr
        assert "runs exactly one gunicorn worker" in done.stderr


def test_invalid_setting_stops_start_up_with_one_line():
    done = run_gunicorn_expecting_exit({"LLM_STATS_INTERVAL": "abc"})
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if "configuration error" in line]
    assert lines == [
        "llm-service: configuration error: LLM_STATS_INTERVAL='abc' is invalid: "
        "expected a number of seconds greater than 0"
    ]
    port = run_gunicorn_expecting_exit({"LLM_MANAGEMENT_PORT": "99999"})
    assert port.returncode == 2
    assert "LLM_MANAGEMENT_PORT='99999' is invalid" in port.stderr
