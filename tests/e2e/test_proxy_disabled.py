"""LLM_PROXY_ENABLED=false: Ollama itself serves the public proxy port; the API only 11436."""

from __future__ import annotations

import requests


def test_ollama_serves_the_proxy_port_itself(make_service):
    service = make_service({"LLM_PROXY_ENABLED": "false"})
    # entrypoint.sh points the API at the public port; OLLAMA_URL's port stays unused.
    service.start()

    direct = requests.get(service.proxy + "/api/version", timeout=5)
    assert direct.status_code == 200
    assert "X-Request-ID" not in direct.headers  # not our proxy: Ollama (the emulator) itself
    assert requests.get(service.proxy + "/health/live", timeout=5).status_code == 404

    ready = requests.get(service.management + "/health/ready", timeout=5)
    assert ready.status_code == 200, ready.text
    via_api = requests.get(service.management + "/api/version", timeout=5)
    assert via_api.status_code == 200 and "X-Request-ID" in via_api.headers
    assert f"Ollama on 127.0.0.1:{service.proxy_port} (public, proxy disabled)" in (
        service.output()
    )
