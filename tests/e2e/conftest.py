"""Fixtures for the e2e tests: supervisord from the real config, one per test that asks."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.supervised import SupervisedService


@pytest.fixture
def make_service() -> Iterator[Callable[..., SupervisedService]]:
    started: list[SupervisedService] = []

    def make(env: dict[str, str] | None = None) -> SupervisedService:
        service = SupervisedService(env)
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()
