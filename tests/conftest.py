"""Shared pytest fixtures for target-loops.

Importing this module wipes every ``TARGET_LOOPS_*`` and ``LOOPS_*`` environment variable first, so a
developer's real Loops key (or any setting) can never leak into a test run: tests talk to the sandbox only.

Two layers. ``pytest -m "not e2e"`` runs the fast in-process layer alone (seconds); ``pytest`` runs everything. A test
is end to end (marker ``e2e``, applied here at collection) when its module is in ``E2E_MODULES``, when it uses a
fixture that starts a server (``SERVER_FIXTURES``, directly or through another fixture), or when its body names
something that starts a server or a process (``E2E_NAMES``). Any other test is in the fast layer, and a guard keeps
it honest: a fast-layer test that binds a socket or starts a subprocess fails and says how to mark it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile

for _name in [name for name in os.environ if name.startswith(("TARGET_LOOPS_", "LOOPS_", "MELTANO_PROJECT_ROOT"))]:
    del os.environ[_name]
# The default ledger is in the user's data folder: a test run must never read or fill the developer's real one.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="target-loops-tests-data.")
# Hundreds of tests start Python in a subprocess: target-loops, the tap, Meltano's plugins (whose venvs Meltano
# installs without bytecode). With PYTHONDONTWRITEBYTECODE set (CI images often set it) each of them compiled every
# module it imports again: 0.3 s for target_loops from a fresh clone, about 5 s in a plugin venv (singer-sdk,
# SQLAlchemy: measured 7.9 s against 2.9 s for `import target_loops.target` on the busy 2-core machine).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

from collections.abc import Callable, Iterator  # noqa: E402  (after the environment is cleaned on purpose)
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from target_loops.sandbox import Sandbox, SandboxConfig  # noqa: E402

SandboxFactory = Callable[..., Sandbox]

#: Modules whose every test goes over HTTP or runs the CLI (or Meltano, PostgreSQL, pip) in a subprocess.
E2E_MODULES = frozenset(
    {
        "test_sync",
        "test_failures",
        "test_ledger",
        "test_warehouse",
        "test_sdk_suite",
        "test_preflight",
        "test_client_answers",  # every test starts a stub HTTP server or proxy
    }
)
#: Fixtures that start a server: the sandbox, test_client_answers' stub HTTP server, test_sandbox's shared sandboxes,
#: test_warehouse's PostgreSQL. Fixtures built on them (``team``, ``loops``...) count through pytest's closure.
SERVER_FIXTURES = frozenset({"sandbox", "make_sandbox", "serve", "_shared", "pg_server"})
#: Names that, used in a test's own body, mean it starts a server or a process.
E2E_NAMES = frozenset({"subprocess", "Popen", "run_target", "start_target", "Sandbox", "ThreadingHTTPServer"})


def _is_e2e(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)
    if module is not None and module.__name__.rpartition(".")[2] in E2E_MODULES:
        return True
    if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    function = getattr(item, "function", None)
    code = getattr(function, "__code__", None)
    return code is not None and bool(E2E_NAMES.intersection(code.co_names))


#: The slowest modules, slowest first (measured with ``--durations=0`` on 2 cores, 2026-12-03). They are collected
#: first so that ``--dist loadfile`` starts them first: in alphabetical order test_warehouse.py (over a minute,
#: one worker) came last and ran alone while the other worker idled.
SLOW_FIRST = (
    "test_warehouse",
    "test_tap_segment_archive",
    "test_packaging",
    "test_ledger",
    "test_faults",
    "test_delivery",
    "test_batch",
    "test_report",
    "test_meltano_project",
    "test_sync",
    "test_preflight_shapes",
    "test_failures",
    "test_audience",
    "test_settings",
    "test_sandbox_page",
    "test_input",
)


def _slowness_rank(item: pytest.Item) -> int:
    module = getattr(item, "module", None)
    name = module.__name__.rpartition(".")[2] if module is not None else ""
    return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the end-to-end tests ``e2e`` (see the module docstring); the slowest modules first (``SLOW_FIRST``)."""
    for item in items:
        if _is_e2e(item):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=_slowness_rank)  # stable: within a module, and among the rest, the order stays as collected


@pytest.fixture(autouse=True)
def _fast_layer_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test outside ``e2e`` may not bind a socket (start a server) nor start a subprocess."""
    if request.node.get_closest_marker("e2e") is not None:
        return
    where = request.node.nodeid

    def refuse(what: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(
                f"{where} {what} but is not marked e2e: use a server fixture (tests/conftest.py SERVER_FIXTURES), "
                "add its module to E2E_MODULES, or decorate it with @pytest.mark.e2e"
            )

        return refused

    monkeypatch.setattr(socket.socket, "bind", refuse("binds a socket (starts a server)"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("starts a subprocess"))


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
