"""A real warehouse sync, end to end: PostgreSQL holding Segment's warehouse tables → meltanolabs-tap-postgres →
target-loops, run as ``meltano --environment=warehouse run warehouse-sync`` (meltano.yml) against the sandbox.

Real parts only: a PostgreSQL server (tests/warehouse/pg.sh), the schema and rows of tests/warehouse/seed.py, Meltano
4.4.1 in a venv of its own (installed once into a cache folder), the tap and target-loops installed by
``meltano install``. The ephemeral-runner setup: the sync ledger (``ledger_url``) and Meltano's state
(``MELTANO_DATABASE_URI``) both live in that PostgreSQL, nothing on the runner's disk.

What Loops holds and what was sent is read from the sandbox (its store and request log), never from the target.

PostgreSQL: ``WAREHOUSE_PG_URL`` (a database this test may create databases in), else a private server started with
tests/warehouse/pg.sh when its binaries are installed (Debian: ``apt-get install postgresql``), else the tests skip
— or fail, when ``WAREHOUSE_REQUIRE=1`` (CI). (Not ``TARGET_LOOPS_REQUIRE_WAREHOUSE``: conftest.py removes every
``TARGET_LOOPS_*`` variable.) Meltano: ``WAREHOUSE_MELTANO`` (a meltano executable with the ``postgres`` extra), else
installed from PyPI into ``$XDG_CACHE_HOME/target-loops/meltano-<version>``.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import fcntl
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from runner import REPO, SANDBOX_KEY

from target_loops.sandbox import Sandbox
from target_loops.serialization import stable_hash

WAREHOUSE_DIR = REPO / "tests" / "warehouse"
MELTANO_VERSION = "4.4.1"
REQUIRED = os.environ.get("WAREHOUSE_REQUIRE") == "1"
JOB = ["--environment=warehouse", "run", "warehouse-sync"]
STATE_ID = "warehouse:tap-postgres-to-target-loops"

_spec = importlib.util.spec_from_file_location("warehouse_seed", WAREHOUSE_DIR / "seed.py")
assert _spec is not None and _spec.loader is not None
seed = sys.modules["warehouse_seed"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed)

NEWS, PRODUCT = seed.NEWSLETTER, seed.PRODUCT_UPDATES
TEAM_PROPERTIES = [
    {"key": "plan", "type": "string"},
    {"key": "companyName", "type": "string"},
    {"key": "seats", "type": "number"},
    {"key": "isAdmin", "type": "boolean"},
    {"key": "trialEndsAt", "type": "date"},
    {"key": "lifetimeValue", "type": "number"},
    {"key": "favoriteColor", "type": "string"},
]
TEAM_LISTS = [{"id": NEWS, "name": "Newsletter"}, {"id": PRODUCT, "name": "Product updates"}]


def unavailable(reason: str) -> None:
    """Skip (a developer without PostgreSQL or PyPI), or fail when CI says the warehouse must be there."""
    if REQUIRED:
        pytest.fail(f"warehouse test required (WAREHOUSE_REQUIRE=1) but {reason}", pytrace=False)
    pytest.skip(f"warehouse test skipped: {reason} (see tests/warehouse/pg.sh; set WAREHOUSE_REQUIRE=1 to fail)")


# --- PostgreSQL


@dataclass
class Server:
    url: str  # an admin URL: the test creates one database per test through it

    def database_url(self, name: str) -> str:
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[test]')")
    url = os.environ.get("WAREHOUSE_PG_URL")
    started: Path | None = None
    if not url:
        # Not under pytest's tmp folder: as root the server runs as `postgres`, which cannot enter that folder.
        pg_dir = Path(tempfile.mkdtemp(prefix="target-loops-pg-"))
        env = {**os.environ, "WAREHOUSE_PG_DIR": str(pg_dir)}
        proc = subprocess.run(
            ["bash", str(WAREHOUSE_DIR / "pg.sh"), "start"], capture_output=True, text=True, env=env, check=False
        )
        if proc.returncode != 0:
            shutil.rmtree(pg_dir, ignore_errors=True)
            unavailable(
                f"WAREHOUSE_PG_URL is not set and tests/warehouse/pg.sh could not start one: {proc.stderr.strip()}"
            )
        started = pg_dir
        url = proc.stdout.strip().rpartition("WAREHOUSE_PG_URL=")[2]
    try:
        psycopg.connect(url, connect_timeout=10).close()
    except psycopg.Error as exc:
        unavailable(f"cannot connect to WAREHOUSE_PG_URL: {exc}")
    yield Server(url)
    if started is not None:
        env = {**os.environ, "WAREHOUSE_PG_DIR": str(started)}
        subprocess.run(["bash", str(WAREHOUSE_DIR / "pg.sh"), "destroy"], capture_output=True, env=env, check=False)


@pytest.fixture
def warehouse_url(pg_server: Server) -> Iterator[str]:
    """A new database for this test: the Segment source, the ledger and Meltano's state all live in it."""
    import psycopg

    name = f"wh_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = pg_server.database_url(name)
    with psycopg.connect(url) as conn:
        conn.execute("CREATE SCHEMA meltano")  # Meltano's system database (state, runs)
        seed.create_schema(conn)
    yield url
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def load(url: str, calls: Sequence[Any]) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        seed.load(conn, calls)


# --- Meltano


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "target-loops"


@pytest.fixture(scope="session")
def meltano_bin(pg_server: Server) -> Path:
    """Meltano in a venv of its own (never in the project's): $WAREHOUSE_MELTANO, else installed once and cached.

    Asks for ``pg_server`` first so that a machine without PostgreSQL skips before installing anything.
    """
    given = os.environ.get("WAREHOUSE_MELTANO")
    if given:
        return Path(given)
    venv = _cache_dir() / f"meltano-{MELTANO_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}"
    exe, done = venv / "bin" / "meltano", venv / ".installed"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions at once: one installs, the other waits
        if done.exists() and exe.exists():
            return exe
        shutil.rmtree(venv, ignore_errors=True)
        started = time.monotonic()
        for step in (
            [sys.executable, "-m", "venv", str(venv)],
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                f"meltano[postgres]=={MELTANO_VERSION}",
            ],
        ):
            proc = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
            if proc.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                unavailable(f"could not install meltano {MELTANO_VERSION} from PyPI: {proc.stderr.strip()[-2000:]}")
        done.write_text(f"meltano[postgres]=={MELTANO_VERSION}\n")
        print(f"\ninstalled meltano {MELTANO_VERSION} into {venv}: {time.monotonic() - started:.1f}s", file=sys.stderr)
    return exe


@pytest.fixture(scope="session")
def meltano_sys_dir(meltano_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``meltano install tap-postgres target-loops`` into a .meltano folder of this session (not the repo's)."""
    sys_dir = tmp_path_factory.mktemp("meltano") / ".meltano"
    started = time.monotonic()
    proc = subprocess.run(
        [str(meltano_bin), "install", "tap-postgres", "target-loops"],
        cwd=REPO,
        env=meltano_env(sys_dir),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, f"meltano install failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    print(f"\nmeltano install tap-postgres target-loops: {time.monotonic() - started:.1f}s", file=sys.stderr)
    return sys_dir


def meltano_env(sys_dir: Path, **extra: str) -> dict[str, str]:
    """The shell a runner would have: no TARGET_LOOPS_*/LOOPS_*/MELTANO_* of the developer's, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TARGET_LOOPS_", "LOOPS_", "MELTANO_", "TAP_"))}
    env.update(
        MELTANO_SYS_DIR_ROOT=str(sys_dir),
        MELTANO_SEND_ANONYMOUS_USAGE_STATS="false",
        MELTANO_CLI_LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class Job:
    """``meltano --environment=warehouse run warehouse-sync`` for one test: its database, sandbox and files."""

    meltano: Path
    sys_dir: Path
    url: str
    sandbox: Sandbox
    tmp_path: Path
    settings: dict[str, str]

    @property
    def rejects_path(self) -> Path:
        return self.tmp_path / "rejects.jsonl"

    def env(self) -> dict[str, str]:
        db = self.url.replace("postgresql://", "postgresql+psycopg://", 1) + "?options=-csearch_path%3Dmeltano"
        return meltano_env(
            self.sys_dir,
            MELTANO_DATABASE_URI=db,  # Meltano's state and run history in the warehouse's PostgreSQL
            WAREHOUSE_PG_URL=self.url,
            TARGET_LOOPS_BASE_URL=self.sandbox.url,
            TARGET_LOOPS_API_KEY=SANDBOX_KEY,
            TARGET_LOOPS_REJECTS_PATH=str(self.rejects_path),
            TARGET_LOOPS_DRY_RUN="false",
            **self.settings,
        )

    def command(self, *extra: str) -> list[str]:
        return [str(self.meltano), *JOB, *extra]

    def run(self, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        proc = subprocess.run(
            self.command(*extra), cwd=REPO, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        print(f"\nmeltano run warehouse-sync {' '.join(extra)}: {time.monotonic() - started:.1f}s", file=sys.stderr)
        return proc

    def rejects(self) -> set[tuple[str, str, str]]:
        if not self.rejects_path.exists():
            return set()
        lines = [json.loads(line) for line in self.rejects_path.read_text().splitlines()]
        return {(r["stream"], r["reason"], r["record"]["id"]) for r in lines}


@pytest.fixture
def make_job(meltano_bin: Path, meltano_sys_dir: Path, warehouse_url: str, tmp_path: Path):
    def factory(sandbox: Sandbox, **settings: str) -> Job:
        return Job(meltano_bin, meltano_sys_dir, warehouse_url, sandbox, tmp_path, settings)

    return factory


def output(proc: subprocess.CompletedProcess[str]) -> str:
    """The end of a run's log, for assertion messages."""
    return (proc.stdout + proc.stderr)[-6000:]


# --- what Loops must hold

_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$")


def normal(value: Any) -> Any:
    """Dates compared as instants (``…T00:00:00Z`` == ``…T00:00:00.000+00:00``), everything else as it is."""
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normal(v) for v in value]
    if isinstance(value, str) and _ISO.match(value):
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.timezone.utc).isoformat()
    return value


def contact(user_id: str, email: str, first: str, last: str, lists: dict[str, bool], **props: Any) -> dict[str, Any]:
    """A contact as the sandbox shows it (without its id and createdAt): Loops' defaults plus what was synced."""
    return {
        "userId": user_id,
        "email": email,
        "firstName": first,
        "lastName": last,
        "source": "API",
        "subscribed": True,
        "userGroup": None,
        "optInStatus": None,
        "mailingLists": lists,
        **props,
    }


ADA = contact(
    "u_1001", "ada@example.com", "Ada", "Lovelace", {NEWS: True}, plan="pro", seats=3, companyName="Analytical Engines"
)
GRACE = contact(
    "u_1002",
    "grace@example.com",
    "Grace",
    "Hopper",
    {},
    plan="enterprise",
    seats=12,
    companyName="US Navy",
    isAdmin=True,
)
ALAN = contact(
    "u_1003",
    "alan@example.com",
    "Alan",
    "Turing",
    {NEWS: True, PRODUCT: True},
    plan="free",
    trialEndsAt="2026-12-01T00:00:00Z",
    lifetimeValue=1234.5,
    favoriteColor="green",
)
KATHERINE = contact("u_1004", "katherine@example.com", "Katherine", "Johnson", {PRODUCT: True})
DAY1_CONTACTS = [ADA, GRACE, ALAN, KATHERINE]

# After day 2: Ada's plan and seats changed, Alan's email and lifetime value, Katherine joined the newsletter,
# Hedy is new.
FINAL_CONTACTS = [
    {**ADA, "plan": "team", "seats": 5},
    GRACE,
    {**ALAN, "email": "alan.turing@example.com", "lifetimeValue": 1500},
    {**KATHERINE, "mailingLists": {NEWS: True, PRODUCT: True}},
    contact("u_1006", "hedy@example.com", "Hedy", "Lamarr", {NEWS: True}, plan="pro", seats=2),
]


def event(row_id: str, name: str, user_id: str, properties: dict[str, Any], email: str | None = None) -> dict[str, Any]:
    """An event as Loops holds it; its Idempotency-Key is the default derivation: a hash of the name and the row id."""
    key = "tl-" + stable_hash("event", name, row_id)[:64]
    return {"idempotencyKey": key, "eventName": name, "userId": user_id, "email": email, "eventProperties": properties}


# eventProperties from the per-event tables' own columns (camelCased, NULLs and `products` left out); none from tracks.
DAY1_EVENTS = [
    event("tr-0001", "Signed Up", "u_1001", {"plan": "free", "referrer": "google", "trialDays": 14}),
    event("tr-0002", "Signed Up", "u_1002", {"plan": "team", "trialDays": 30}),
    event("tr-0003", "Order Completed", "u_1001", {"orderId": "o-1001", "revenue": 120.5, "currency": "EUR"}),
    event("tr-0005", "Logged In", "u_1003", {}, email="alan@example.com"),
    event(
        "tr-0006",
        "Order Completed",
        "u_1002",
        {"orderId": "o-1002", "revenue": 18, "currency": "USD", "coupon": "WELCOME10"},
    ),
    event("tr-0009", "Logged In", "u_1002", {}),
]
DAY2_EVENTS = [
    event("tr-0101", "Signed Up", "u_1006", {"plan": "pro", "referrer": "newsletter", "trialDays": 14}),
    event("tr-0102", "Order Completed", "u_1004", {"orderId": "o-1004", "revenue": 42, "currency": "USD"}),
    event("tr-0103", "Logged In", "u_1003", {}, email="alan.turing@example.com"),
]
#: The events whose own row carries an email (the others are addressed by userId alone).
EVENTS_WITH_EMAIL = {e["idempotencyKey"] for e in DAY1_EVENTS + DAY2_EVENTS if e["email"] is not None}

DAY1_REJECTS = {
    ("web_app-identifies", "no_identifier", "id-0004"),  # an anonymous visitor's identify
    ("web_app-identifies", "invalid_email", "id-0008"),  # "dorothy at example.com"
    ("web_app-users", "invalid_email", "u_1005"),
    ("web_app-tracks", "no_identifier", "tr-0004"),  # an anonymous track
    ("web_app-tracks", "invalid_event_name", "tr-0007"),  # "Clicked: Upgrade": refused locally, never sent.
    ("web_app-tracks", "http_400", "tr-0008"),  # Loops: unknown userId and no email to create the contact
}
DAY2_REJECTS = {("web_app-tracks", "no_identifier", "tr-0104")}

# Day 2's work and nothing else: identifies send each new identify (merged per user), users the changed rows whole.
HEDY_BODY = {
    "email": "hedy@example.com",
    "userId": "u_1006",
    "firstName": "Hedy",
    "lastName": "Lamarr",
    "plan": "pro",
    "seats": 2,
    "mailingLists": {NEWS: True},
}
#: Day 2's changed contacts, each as one update: its identifies and users rows merged (the ledger is per contact).
DAY2_UPDATES = {
    "u_1006": HEDY_BODY,
    "u_1001": {
        "email": "ada@example.com",
        "userId": "u_1001",
        "firstName": "Ada",
        "lastName": "Lovelace",
        "companyName": "Analytical Engines",
        "plan": "team",
        "seats": 5,
        "mailingLists": {NEWS: True},
    },
    "u_1003": {
        "email": "alan.turing@example.com",
        "userId": "u_1003",
        "firstName": "Alan",
        "lastName": "Turing",
        "plan": "free",
        "trialEndsAt": "2026-12-01T00:00:00Z",
        "lifetimeValue": 1500,
        "favoriteColor": "green",
        "mailingLists": {NEWS: True, PRODUCT: True},
    },
    "u_1004": {
        "email": "katherine@example.com",
        "userId": "u_1004",
        "firstName": "Katherine",
        "lastName": "Johnson",
        "mailingLists": {NEWS: True, PRODUCT: True},
    },
}


def _event_body(e: dict[str, Any]) -> dict[str, Any]:
    body = {
        "email": e["email"],
        "userId": e["userId"],
        "eventName": e["eventName"],
        "eventProperties": e["eventProperties"] or None,
    }
    return {k: v for k, v in body.items() if v is not None}


#: What the second run sends: each day-2 event, carrying its contact's update when there is one (the update rides
#: on the event), and the updates of contacts without a day-2 event alone. Nothing Loops already has.
DAY2_WRITES = [
    *(
        ("POST", "/api/v1/events/send", {**DAY2_UPDATES.get(e["userId"], {}), **_event_body(e)}, e["idempotencyKey"])
        for e in DAY2_EVENTS
    ),
    *(
        ("PUT", "/api/v1/contacts/update", body, None)
        for user, body in DAY2_UPDATES.items()
        if user not in {e["userId"] for e in DAY2_EVENTS}
    ),
]


def loops_contacts(sandbox: Sandbox) -> list[dict[str, Any]]:
    return sorted(
        (normal({k: v for k, v in c.items() if k not in ("id", "createdAt")}) for c in sandbox.store.contacts()),
        key=lambda c: c["userId"],
    )


def expected_contacts(contacts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((normal(c) for c in contacts), key=lambda c: c["userId"])


def loops_events(sandbox: Sandbox) -> list[dict[str, Any]]:
    """Every event Loops holds, and each checked to belong to the contact of its userId.

    The email is kept only when the event's own row carried one (``EVENTS_WITH_EMAIL``): an event that a contact's
    update rode on also carries that update's email, which says nothing about the event itself.
    """
    by_id = {c["id"]: c for c in sandbox.store.contacts()}
    found = []
    for e in sandbox.store.events():
        assert by_id[e["contactId"]]["userId"] == e["userId"], f"event {e['idempotencyKey']} on the wrong contact"
        item = {k: e[k] for k in ("idempotencyKey", "eventName", "userId", "email", "eventProperties")}
        if item["idempotencyKey"] not in EVENTS_WITH_EMAIL:
            item["email"] = None
        found.append(item)
    return sorted(found, key=lambda e: e["idempotencyKey"])


def writes(sandbox: Sandbox, start: int = 0) -> list[tuple[str, str, Any, str | None]]:
    """The writes Loops received since ``start`` (a 429 is not one: Loops did nothing, the client sends it again)."""
    return [
        (r["method"], r["path"], normal(r["body"]), r["idempotencyKey"])
        for r in sandbox.store.requests()[start:]
        if r["method"] != "GET" and r["status"] != 429
    ]


def canonical(items: Sequence[Any]) -> list[str]:
    return sorted(json.dumps(normal(list(item)), sort_keys=True) for item in items)


def ledger_events(url: str) -> int:
    return query(url, "SELECT count(*) FROM target_loops_events_v3")[0][0]


def meltano_state(url: str) -> dict[str, Any]:
    rows = query(url, f"SELECT completed_state, partial_state FROM meltano.state WHERE state_id = '{STATE_ID}'")
    if not rows:
        return {}
    completed, partial = (json.loads(v) if isinstance(v, str) else (v or {}) for v in rows[0])
    return {"completed": completed, "partial": partial}


def bookmarks(state: dict[str, Any]) -> dict[str, str]:
    merged = {
        **state.get("completed", {}).get("singer_state", {}).get("bookmarks", {}),
        **state.get("partial", {}).get("singer_state", {}).get("bookmarks", {}),
    }
    return normal({stream: b.get("replication_key_value") for stream, b in merged.items()})


# --- the tests


@pytest.fixture
def loops(make_sandbox: Any) -> Sandbox:
    """A strict sandbox (unknown properties are a 400) at Loops' real rate limit, with the team's properties."""
    return make_sandbox(properties=TEAM_PROPERTIES, lists=TEAM_LISTS, rate_limit=10)


def test_warehouse_sync_then_only_new_and_changed_work(loops: Sandbox, make_job: Any, warehouse_url: str) -> None:
    job = make_job(loops)
    load(warehouse_url, seed.DAY1)

    first = job.run()
    assert first.returncode == 0, output(first)
    assert loops_contacts(loops) == expected_contacts(DAY1_CONTACTS)
    assert loops_events(loops) == sorted(DAY1_EVENTS, key=lambda e: e["idempotencyKey"])
    assert job.rejects() == DAY1_REJECTS
    sent = writes(loops)
    # One update per user, whatever stream its rows came from (identifies and users are merged per contact), each
    # riding on that user's first event: the 6 events carry the updates of the users who have one, and tr-0008 (u_9999)
    # is refused by Loops. Katherine's only event is "Clicked: Upgrade", refused locally (':' is not allowed in an event
    # name), so her update goes on its own. The event refused by userId alone waits for an upsert of its person and is
    # tried once more at the end of the input.
    # Grace's email change (two timed identifies, Loops not knowing her yet) is an update of its own unless the
    # users table's row for her (no time of its own: merged in input order) falls in the same window; where the
    # windows fall depends on when Meltano's checkpoints come, so that one update is 1 or 2.
    counts = collections.Counter(path for _, path, _, _ in sent)
    assert counts["/api/v1/events/send"] == 8 and counts["/api/v1/contacts/update"] in (2, 3), counts
    assert set(counts) == {"/api/v1/events/send", "/api/v1/contacts/update"}
    # The ephemeral-runner setup: the ledger and Meltano's state are in PostgreSQL, next to the warehouse.
    assert ledger_events(warehouse_url) == len(DAY1_EVENTS)
    assert bookmarks(meltano_state(warehouse_url)) == normal(
        {
            "web_app-identifies": "2026-11-02T10:50:02+00:00",
            "web_app-order_completed": "2026-11-02T10:05:02+00:00",
            "web_app-signed_up": "2026-11-02T08:31:02+00:00",
            "web_app-tracks": "2026-11-02T10:45:02+00:00",
            "web_app-users": "2026-11-02T10:50:02+00:00",
        }
    )

    # Day 2: new users and events, changed traits, a changed email; then the same job again.
    load(warehouse_url, seed.DAY2)
    mark = len(loops.store.requests())
    second = job.run()
    assert second.returncode == 0, output(second)
    assert loops_contacts(loops) == expected_contacts(FINAL_CONTACTS)
    assert loops_events(loops) == sorted(DAY1_EVENTS + DAY2_EVENTS, key=lambda e: e["idempotencyKey"])
    assert job.rejects() == DAY1_REJECTS | DAY2_REJECTS
    assert ledger_events(warehouse_url) == len(DAY1_EVENTS) + len(DAY2_EVENTS)

    sent = writes(loops, mark)
    # The tap reads `received_at >= bookmark` again: the re-read row repeats part of what Loops has, and is not sent.
    assert canonical(sent) == canonical(DAY2_WRITES), (
        "the second run must send day 2's new and changed work, nothing else:\n"
        + "\n".join(json.dumps(w) for w in sent)
    )


@pytest.mark.parametrize("kill_at", ["contacts", "events"])
def test_killed_run_resumes_with_nothing_lost_and_no_event_twice(
    make_sandbox: Any, make_job: Any, warehouse_url: str, kill_at: str
) -> None:
    """SIGKILL the whole job (meltano, tap, target) in the middle of sending; the next run completes the work.

    ``contacts``: while the first stream's contacts are sent, before any checkpoint: Meltano has no state, the
    rerun reads everything again and the ledger alone keeps delivered work from being sent twice.
    ``events``: once events are being sent, after the checkpoint of the contacts stream: the rerun resumes from
    Meltano's state (in PostgreSQL) and the ledger covers what was delivered since.
    """
    loops = make_sandbox(properties=TEAM_PROPERTIES, lists=TEAM_LISTS, rate_limit=10, latency_ms=120)
    # Small batches and a checkpoint at every STATE, so that the kill falls between checkpoints with work in flight.
    job = make_job(loops, TARGET_LOOPS_BATCH_SIZE_ROWS="3", TARGET_LOOPS_CHECKPOINT_SECONDS="0")
    load(warehouse_url, seed.DAY1)
    load(warehouse_url, seed.DAY2)
    all_events = len(DAY1_EVENTS) + len(DAY2_EVENTS)

    def time_to_kill() -> bool:
        if kill_at == "contacts":
            return len(writes(loops)) >= 5
        return len(loops.store.events()) >= 2

    log = job.tmp_path / "killed-run.log"
    proc = subprocess.Popen(
        job.command(),
        cwd=REPO,
        env=job.env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: meltano, the tap and the target die together
    )
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline and not time_to_kill():
        time.sleep(0.005)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the job ended before the kill:\n{log.read_text()[-6000:]}"
    time.sleep(0.5)  # requests in flight at the kill finish in the sandbox (their answers are lost)
    events_before = len(loops.store.events())
    assert len(writes(loops)) > 0 and events_before < all_events, "the kill was not in the middle of the work"
    checkpoint = bookmarks(meltano_state(warehouse_url))
    if kill_at == "contacts":
        assert events_before == 0 and checkpoint == {}
    else:
        assert events_before > 0 and "web_app-identifies" in checkpoint, checkpoint

    # Meltano still counts the killed run as running (its heartbeat is fresh): the next run must be forced.
    refused = job.run()
    assert refused.returncode != 0 and "already running" in output(refused)
    rerun = job.run("--force")
    assert rerun.returncode == 0, output(rerun)
    if kill_at == "events":  # resumed from the checkpoint, not from the start
        assert "'web_app-identifies' with bookmark value: 2026-11-03T08:35:02" in rerun.stdout + rerun.stderr

    assert loops_contacts(loops) == expected_contacts(FINAL_CONTACTS)
    # An event older than an email change the killed run already delivered (tr-0005 carries alan@, id-0103 moved
    # u_1003 to alan.turing@) goes by userId alone in the rerun: with its old email beside the userId it would move
    # the email back (https://loops.so/docs/api-reference/send-event). Whether the kill came before or after that
    # change is timing, so such an event may carry its row's email or none; every other field must match.
    expected = sorted(DAY1_EVENTS + DAY2_EVENTS, key=lambda e: e["idempotencyKey"])
    held = loops_events(loops)
    assert [{**e, "email": None} for e in held] == [{**e, "email": None} for e in expected]
    assert all(h["email"] in (e["email"], None) for h, e in zip(held, expected, strict=True)), held
    accepted = collections.Counter(
        r["idempotencyKey"] for r in loops.store.requests() if r["path"] == "/api/v1/events/send" and r["status"] == 200
    )
    assert all(n == 1 for n in accepted.values()), f"an event was accepted twice: {accepted}"
    assert job.rejects() == DAY1_REJECTS | DAY2_REJECTS
    assert ledger_events(warehouse_url) == len(DAY1_EVENTS) + len(DAY2_EVENTS)


# --- an audience from a dbt model (issue 19)

BETA_NAMES = ["Ada", "Grace", "Alan", "Hedy", "Edsger", "Barbara"]
BETA_PEOPLE = [(f"u_b{n}", f"beta{n}@example.com", name) for n, name in enumerate(BETA_NAMES)]


def test_a_row_deleted_from_an_audience_table_takes_only_that_person_off_the_list(
    loops: Sandbox, make_job: Any, warehouse_url: str
) -> None:
    """``analytics.beta_users`` (a dbt model) is the Newsletter list: tap-postgres reads it whole (FULL_TABLE) with
    ``emit_activate_version_messages: true``; after a row is deleted, the next ``meltano run audience-sync`` takes
    that person off the list and touches nobody else."""
    import psycopg

    with psycopg.connect(warehouse_url) as conn:
        conn.execute("CREATE SCHEMA analytics")
        conn.execute("CREATE TABLE analytics.beta_users (user_id text PRIMARY KEY, email text, first_name text)")
        for row in BETA_PEOPLE:
            conn.execute("INSERT INTO analytics.beta_users VALUES (%s, %s, %s)", row)
    # The audience job's loader inherits target-loops; Meltano names its variables after it.
    job = make_job(
        loops,
        TARGET_LOOPS__AUDIENCE_BASE_URL=loops.url,
        TARGET_LOOPS__AUDIENCE_API_KEY=SANDBOX_KEY,
        TARGET_LOOPS__AUDIENCE_REJECTS_PATH=str(loops_rejects := Path(tempfile.mkdtemp()) / "rejects.jsonl"),
    )
    command = [str(job.meltano), "--environment=warehouse", "run", "audience-sync"]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, cwd=REPO, env=job.env(), capture_output=True, text=True, timeout=600, check=False
        )

    first = run()
    assert first.returncode == 0, output(first)
    members = {c["userId"] for c in loops.store.contacts() if c["mailingLists"].get(NEWS)}
    assert members == {user for user, _, _ in BETA_PEOPLE}
    assert "ACTIVATE_VERSION message received but not implemented" not in first.stderr
    before = {c["userId"]: c for c in loops.store.contacts()}
    mark = len(loops.store.requests())

    with psycopg.connect(warehouse_url) as conn:
        conn.execute("DELETE FROM analytics.beta_users WHERE user_id = 'u_b2'")
    second = run()
    assert second.returncode == 0, output(second)
    assert writes(loops, mark) == [
        ("PUT", "/api/v1/contacts/update", {"userId": "u_b2", "mailingLists": {NEWS: False}}, None)
    ]
    after = {c["userId"]: c for c in loops.store.contacts()}
    assert not after["u_b2"]["mailingLists"].get(NEWS)  # off the list (the sandbox shows only lists a contact is on)
    assert {**after["u_b2"], "mailingLists": None} == {**before["u_b2"], "mailingLists": None}  # the rest untouched
    assert {k: v for k, v in after.items() if k != "u_b2"} == {k: v for k, v in before.items() if k != "u_b2"}
    # The ledger (in the warehouse's PostgreSQL) no longer counts u_b2 as a member.
    assert query(warehouse_url, "SELECT count(*) FROM target_loops_members")[0][0] == len(BETA_PEOPLE) - 1
    assert not loops_rejects.exists()
