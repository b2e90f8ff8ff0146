"""Fixtures: one emulator for the whole session, reset before every test that uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_ollama.harness import FakeOllama


@pytest.fixture(scope="session")
def fake_ollama_session() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def fake(fake_ollama_session: FakeOllama) -> FakeOllama:
    """The session emulator, back in its start state."""
    fake_ollama_session.reset()
    return fake_ollama_session
