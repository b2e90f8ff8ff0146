"""The test harness's ports: never the same twice in a run, and a stolen port is survived."""

from __future__ import annotations

import socket

import requests

from tests.service_harness import PORT_RANGE, ServiceProcess, free_port


def test_free_port_never_repeats_within_a_run() -> None:
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)
    assert all(PORT_RANGE[0] <= p < PORT_RANGE[1] for p in ports)


def test_free_port_skips_a_port_that_is_taken() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        assert taken not in {free_port() for _ in range(200)}


def test_service_starts_on_fresh_ports_when_one_was_taken_meanwhile() -> None:
    service = ServiceProcess()
    stolen = service.management_port
    with socket.socket() as squatter:
        # What another process does between free_port() and gunicorn's bind.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", stolen))
        squatter.listen()
        with service:
            assert service.management_port != stolen
            assert service.proxy_port != stolen
            assert requests.get(service.management_url + "/health/live", timeout=5).ok
