"""Run the sandbox: :class:`Sandbox` (a threaded werkzeug server in a background thread) and the CLI.

Tests start one per test on an ephemeral port; a developer runs ``target-loops-sandbox`` and points the
target's ``base_url`` at the URL it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from target_loops.sandbox.app import SandboxApp, SandboxConfig
from target_loops.sandbox.store import PROPERTY_TYPES, Store

POLL_INTERVAL_S = 0.02
"""How often the serve loop checks for shutdown: small, so stopping a sandbox per test costs little."""


class SandboxRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler without the per-request access log unless the server is verbose."""

    def _verbose(self) -> bool:
        return bool(getattr(self.server, "sandbox_verbose", False))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self._verbose():
            super().log_request(code, size)

    def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
        """Called for injected hang-ups (and clients that go away): worth a line only when verbose."""
        if self._verbose():
            self.log("info", "connection closed without an answer (%s)", error)


class Sandbox:
    """A Loops-compatible server on ``host:port`` (``port=0`` picks a free one); also a context manager."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        verbose: bool = False,
    ) -> None:
        config = config or SandboxConfig()
        self.host = host
        self.verbose = verbose
        self.store = Store(config.properties, config.lists, config.events)
        self.app = SandboxApp(self.store, config)
        self._requested_port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> SandboxConfig:
        """The config in force now (it changes with :meth:`configure`)."""
        return self.app.config

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """The base URL a Loops client uses (it appends ``/v1/...``)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/api"

    def start(self) -> Sandbox:
        """Bind and serve in a daemon thread; returns self so ``sb = Sandbox(cfg).start()`` reads well."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already started")
        server = make_server(
            self.host, self._requested_port, self.app, threaded=True, request_handler=SandboxRequestHandler
        )
        server.sandbox_verbose = self.verbose  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_S},
            name="loops-sandbox",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (requests still in a handler thread finish on their own)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def wait(self) -> None:
        """Block until the server stops (the CLI waits here; Ctrl-C raises KeyboardInterrupt out of it)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def inject(self, kind: str, count: int = 1, path: str | None = None) -> None:
        """Queue ``count`` faults ("500", "429", "lost", "drop", "502") for the next requests to ``path``."""
        self.app.inject(kind, count=count, path=path)

    def configure(self, **fields: Any) -> SandboxConfig:
        """Change config fields at runtime; ``properties``/``lists``/``events`` re-seed the store's team schema."""
        config = self.app.configure(**fields)
        if "properties" in fields or "lists" in fields or "events" in fields:
            self.store.configure_team(fields.get("properties"), fields.get("lists"), fields.get("events"))
        return config

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# ----- CLI -----------------------------------------------------------------------------------------------


EPILOG = """\
examples:
  target-loops-sandbox --port 8787 --team-file sample_streams/sandbox_team.json
  target-loops-sandbox --rate-limit 5 --latency-ms 150 --fail-500 0.05 --seed 1 --verbose

Then point the target at it (base_url http://127.0.0.1:8787/api, api_key sandbox-key) and open
http://127.0.0.1:8787/ in a browser: request counts, a requests-per-second chart, the request log,
the contacts and the events. JSON views: /_sandbox/state, /_sandbox/requests, /_sandbox/rate.
The store lives in memory: each start is a new, empty team. Ctrl-C or SIGTERM stops it.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``target-loops-sandbox`` options, one per :class:`SandboxConfig` field plus host/port/team file.

    Every help text says its default in plain words (no markup: argparse prints it as it is), because a person
    reading ``--help`` wants to know what happens when they leave an option out.
    """
    parser = argparse.ArgumentParser(
        prog="target-loops-sandbox",
        description="A local Loops-compatible API, to test target-loops without touching a real Loops team.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", metavar="HOST", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8787, help="port to listen on, 0 = any free port (default: 8787)")
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("LOOPS_SANDBOX_API_KEY", "sandbox-key"),
        help="the Bearer key accepted (default: $LOOPS_SANDBOX_API_KEY, else sandbox-key)",
    )
    parser.add_argument(
        "--team-name",
        metavar="NAME",
        default=None,
        help="the team's name (page header, GET /v1/api-key); a suffix unique to this start is added "
        "(default: the team file's teamName, else 'Sandbox team')",
    )
    parser.add_argument(
        "--rate-limit",
        metavar="N",
        type=int,
        default=10,
        help="requests per second, as Loops counts them; 0 = unlimited (default: 10)",
    )
    parser.add_argument(
        "--latency-ms", metavar="MS", type=float, default=0.0, help="delay added to every API answer (default: 0)"
    )
    parser.add_argument(
        "--latency-jitter-ms",
        metavar="MS",
        type=float,
        default=0.0,
        help="up to this much more delay, at random (default: 0)",
    )
    parser.add_argument(
        "--fail-500",
        metavar="FRACTION",
        type=float,
        default=0.0,
        help="fraction of requests answered 500, work not done (default: 0)",
    )
    parser.add_argument(
        "--fail-429",
        metavar="FRACTION",
        type=float,
        default=0.0,
        help="fraction of requests answered 429, work not done (default: 0)",
    )
    parser.add_argument(
        "--fail-lost",
        metavar="FRACTION",
        type=float,
        default=0.0,
        help="fraction of requests done, then hung up on: the answer is lost (default: 0)",
    )
    parser.add_argument(
        "--fail-drop",
        metavar="FRACTION",
        type=float,
        default=0.0,
        help="fraction of requests hung up on, work not done (default: 0)",
    )
    parser.add_argument(
        "--seed",
        metavar="N",
        type=int,
        default=None,
        help="seed for the fault draws, to repeat a run (default: none, random)",
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="accept unknown properties, wrong types and unknown list ids (default: off, strict like Loops)",
    )
    parser.add_argument(
        "--team-file",
        metavar="PATH",
        type=Path,
        help='JSON {"teamName": ..., "properties": [...], "lists": [...], "events": [{"eventName": ..., '
        '"eventProperties": [{"name": ..., "type": ...}]}]} (default: none, no custom properties)',
    )
    parser.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="KEY:TYPE",
        help="a custom contact property, TYPE string, number, boolean or date; repeatable (default: none)",
    )
    parser.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="ID:NAME",
        help="a mailing list; repeatable (default: none)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request on stderr (default: off)")
    return parser


def parse_property(text: str) -> dict[str, str]:
    """``planName:string`` → ``{"key": "planName", "type": "string"}`` (the type defaults to string)."""
    key, _, type_name = text.partition(":")
    type_name = type_name or "string"
    if not key or type_name not in PROPERTY_TYPES:
        raise argparse.ArgumentTypeError(f"--property {text!r}: use KEY:TYPE with TYPE in {sorted(PROPERTY_TYPES)}")
    return {"key": key, "type": type_name}


def parse_list(text: str) -> dict[str, Any]:
    """``cm06f5v0e45nf0ml5754o9cix:Newsletter`` → a list spec (the name defaults to the id)."""
    list_id, _, name = text.partition(":")
    if not list_id:
        raise argparse.ArgumentTypeError(f"--list {text!r}: use ID:NAME")
    return {"id": list_id, "name": name or list_id}


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """Merge the team file (if any) with the command line; command-line items come after the file's."""
    team: dict[str, Any] = {}
    if args.team_file is not None:
        team = json.loads(args.team_file.read_text(encoding="utf-8"))
        if not isinstance(team, dict):
            raise ValueError(f"{args.team_file}: the team file must hold a JSON object")
    return SandboxConfig(
        api_key=args.api_key,
        # Each start is a new, empty team (the store lives in memory): a distinct name keeps the target's
        # ledger, which is keyed by team, from skipping work this fresh sandbox has never seen.
        team_name=f"{args.team_name or team.get('teamName') or 'Sandbox team'} #{secrets.token_hex(3)}",
        rate_limit=args.rate_limit,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        fail_500=args.fail_500,
        fail_429=args.fail_429,
        fail_lost=args.fail_lost,
        fail_drop=args.fail_drop,
        seed=args.seed,
        lenient=args.lenient,
        properties=list(team.get("properties", [])) + [parse_property(text) for text in args.property],
        lists=list(team.get("lists", [])) + [parse_list(text) for text in args.list],
        events=list(team.get("events", [])),
    )


def describe(sandbox: Sandbox) -> str:
    """The one start-up line: where to point the target, and how this sandbox behaves."""
    config = sandbox.config
    limit = f"{config.rate_limit} req/s" if config.rate_limit else "unlimited"
    extras = [f"key: {config.api_key}", f"team: {config.team_name}", f"rate limit: {limit}"]
    extras.append("lenient" if config.lenient else "strict")
    faults = [f"{kind} {fraction:g}" for kind, fraction in config.fault_fractions() if fraction]
    if faults:
        extras.append("faults: " + ", ".join(faults))
    if config.latency_ms or config.latency_jitter_ms:
        extras.append(f"latency: {config.latency_ms:g}+{config.latency_jitter_ms:g} ms")
    page = sandbox.url.removesuffix("/api") + "/"
    return f"Loops sandbox listening on {sandbox.url} ({'; '.join(extras)}); browse {page}"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, CI teardown) both stop the sandbox cleanly, through one path."""
    raise KeyboardInterrupt


def install_stop_handlers() -> None:
    """Handle SIGINT and SIGTERM ourselves instead of relying on Python's default SIGINT handler.

    A process started with SIGINT ignored (under ``&`` in a non-interactive shell, ``nohup``, some CI runners)
    inherits SIG_IGN, and Python then leaves it ignored: Ctrl-C, or a test's SIGINT, would never arrive and the
    sandbox would run on. Installing the handler explicitly makes both signals work however it was started.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``target-loops-sandbox`` and ``python -m target_loops.sandbox``; Ctrl-C or SIGTERM stops it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        sandbox = Sandbox(config, host=args.host, port=args.port, verbose=args.verbose)
        sandbox.start()
    except (OSError, ValueError, argparse.ArgumentTypeError) as exc:
        parser.exit(2, f"target-loops-sandbox: error: {exc}\n")
    try:
        install_stop_handlers()
        print(describe(sandbox), flush=True)
        sandbox.wait()
    except KeyboardInterrupt:
        print("Loops sandbox stopped.", file=sys.stderr, flush=True)
    finally:
        sandbox.stop()
    return 0
