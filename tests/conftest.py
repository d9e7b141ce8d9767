"""Shared pytest fixtures for target-loops.

Importing this module wipes every ``TARGET_LOOPS_*`` and ``LOOPS_*`` environment variable first, so a
developer's real Loops key (or any setting) can never leak into a test run: tests talk to the sandbox only.
"""

from __future__ import annotations

import os

for _name in [name for name in os.environ if name.startswith(("TARGET_LOOPS_", "LOOPS_"))]:
    del os.environ[_name]

from collections.abc import Callable, Iterator  # noqa: E402  (after the environment is cleaned on purpose)
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from target_loops.sandbox import Sandbox, SandboxConfig  # noqa: E402

SandboxFactory = Callable[..., Sandbox]


@pytest.fixture
def make_sandbox() -> Iterator[SandboxFactory]:
    """A factory: ``make_sandbox(**SandboxConfig fields)`` → a started Sandbox on an ephemeral port.

    Defaults are SandboxConfig's except ``rate_limit=0`` (unlimited) so tests run fast; pass ``rate_limit=10``
    to get Loops' real limit. Every sandbox made is stopped at teardown.
    """
    started: list[Sandbox] = []

    def factory(**fields: Any) -> Sandbox:
        fields.setdefault("rate_limit", 0)
        sandbox = Sandbox(SandboxConfig(**fields)).start()
        started.append(sandbox)
        return sandbox

    yield factory
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def sandbox(make_sandbox: SandboxFactory) -> Sandbox:
    """A started sandbox, default config (key ``sandbox-key``) but unlimited rate; stopped after the test."""
    return make_sandbox()
