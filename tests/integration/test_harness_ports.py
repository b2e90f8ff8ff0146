"""The test harness's ports: never the same twice in a run, and a stolen port is survived."""

from __future__ import annotations

import itertools
import os
import socket

import requests

from tests.service_harness import (
    FULL_PORT_RANGE,
    PORT_RANGE,
    ServiceProcess,
    free_port,
    worker_port_range,
)


def test_free_port_never_repeats_within_a_run() -> None:
    # Half of this process's range (all of it, or its worker's slice under pytest-xdist): the
    # ports stay handed out for the rest of the run, and the other tests here need theirs.
    ports = [free_port() for _ in range(min(3000, (PORT_RANGE[1] - PORT_RANGE[0]) // 2))]
    assert len(set(ports)) == len(ports)
    assert all(PORT_RANGE[0] <= p < PORT_RANGE[1] for p in ports)


def test_xdist_workers_draw_from_disjoint_slices() -> None:
    assert worker_port_range((20000, 32000), None, 1) == (20000, 32000)
    slices = [worker_port_range((20000, 32000), f"gw{i}", 6) for i in range(6)]
    assert slices[0] == (20000, 22000) and slices[-1] == (30000, 32000)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
    here = worker_port_range(
        FULL_PORT_RANGE,
        os.environ.get("PYTEST_XDIST_WORKER"),
        int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")),
    )
    assert here == PORT_RANGE


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
