"""The sync ledger: what Loops has accepted, so that unchanged contacts and delivered events are never sent again.

Loops cannot be listed or diffed, and forgets idempotency keys after 24 hours, so target-loops remembers, per Loops
team: for each contact (per stream), a fingerprint of every property Loops accepted (a short hash per key, so that a
payload that repeats part of what Loops has is recognised too) and the timestamp of the latest record applied; for
each event, its idempotency key. Entries are written only after Loops answered 200 (or 409 for an event), one
transaction per chunk of requests, so a crash can at worst re-send work Loops already has (harmless for contacts,
a 409 for events within 24 hours), never skip work it lacks.

Storage is any SQLAlchemy URL: SQLite by default, PostgreSQL for runners without a persistent disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from target_loops.serialization import canonical_json

logger = logging.getLogger("target_loops.ledger")

CHUNK = 500  # keys per lookup: well under SQLite's bound-parameter limit

metadata = sa.MetaData()

teams = sa.Table(
    "target_loops_teams",
    metadata,
    sa.Column("team", sa.String(64), primary_key=True),
    sa.Column("base_url", sa.String(500), nullable=False),
    sa.Column("team_name", sa.String(500)),
    sa.Column("last_seen", sa.Float, nullable=False),
)

contacts = sa.Table(
    "target_loops_contacts",
    metadata,
    sa.Column("team", sa.String(64), primary_key=True),
    sa.Column("stream", sa.String(255), primary_key=True),
    sa.Column("identity", sa.String(600), primary_key=True),  # u:<userId> or e:<email, lowercased>
    sa.Column("email", sa.String(500), index=True),
    sa.Column("state", sa.Text, nullable=False),  # JSON {property: short hash of its value}
    sa.Column("fingerprint", sa.String(32), nullable=False),  # hash of the last payload accepted, whole
    sa.Column("seen_at", sa.String(40)),  # the latest record timestamp applied (UTC ISO), when records had one
    sa.Column("delivered_at", sa.Float, nullable=False),
)

events = sa.Table(
    "target_loops_events",
    metadata,
    sa.Column("team", sa.String(64), primary_key=True),
    sa.Column("idempotency_key", sa.String(100), primary_key=True),
    sa.Column("delivered_at", sa.Float, nullable=False),
)


@dataclass
class ContactState:
    """A contact's ledger entry: what Loops holds per property (short hashes), as of which record timestamp, and a
    fingerprint of the last payload it accepted (the cheap check: a re-sent table repeats payloads exactly)."""

    raw: str
    seen_at: str | None
    fingerprint: str

    @functools.cached_property
    def hashes(self) -> dict[str, str]:
        """Per property, the hash of the value Loops holds (parsed only when the fingerprint does not settle it)."""
        return json.loads(self.raw)


def fingerprint(body: dict[str, Any]) -> str:
    """A stable hash of a whole payload: equal payloads (whatever the key order) give equal fingerprints."""
    return hashlib.blake2b(canonical_json(body).encode("utf-8"), digest_size=16).hexdigest()


#: A row for ``record_contacts``: identity, email, per-property hashes (or their JSON), seen_at, fingerprint.
ContactRow = tuple[str, "str | None", "dict[str, str] | str", "str | None", str]


def value_hashes(body: dict[str, Any]) -> dict[str, str]:
    """Per property of a payload, a short stable hash of its value (mailing lists one entry per list).

    Hashes, not values: the ledger must not become a copy of the team's personal data.
    """
    hashes: dict[str, str] = {}
    for key, value in body.items():
        if key == "mailingLists" and isinstance(value, dict):
            for list_id, member in value.items():
                hashes[f"mailingLists.{list_id}"] = _short_hash(member)
        else:
            hashes[key] = _short_hash(value)
    return hashes


def _short_hash(value: Any) -> str:
    return hashlib.blake2b(canonical_json(value).encode("utf-8"), digest_size=8).hexdigest()


def team_namespace(base_url: str, team_name: str | None, api_key: str | None) -> str:
    """The ledger's key for a Loops team: the API root plus the team's name, else a hash of the key.

    The team name survives a key rotation (a new key must not make every event look new); the key itself is
    never stored, only folded into a one-way hash when Loops gives no team name.
    """
    who = f"team:{team_name}" if team_name else "key:" + hashlib.sha256((api_key or "").encode()).hexdigest()
    return hashlib.sha256(f"{base_url.rstrip('/')}|{who}".encode()).hexdigest()[:32]


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 (the ``postgres`` extra), not SQLAlchemy's psycopg2."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Ledger:
    """Thread-safe access to the ledger tables; every method is one short transaction."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        url = normalize_url(url)
        self.read_only = read_only
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.available = True
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database)
            if read_only and not path.exists():
                self.available = False  # a dry run must not create a ledger; nothing is known yet
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.engine = sa.create_engine(url, **({"connect_args": {"timeout": 30}} if self.is_sqlite else {}))
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        if self.available and not read_only:
            self._upgrade()
            metadata.create_all(self.engine)
        elif self.available:
            self.available = sa.inspect(self.engine).has_table(contacts.name)

    def _upgrade(self) -> None:
        """A contacts table from before per-property state is dropped: contacts are re-sent once, events stay."""
        inspector = sa.inspect(self.engine)
        if inspector.has_table(contacts.name):
            columns = {c["name"] for c in inspector.get_columns(contacts.name)}
            if not {"state", "fingerprint"} <= columns:
                logger.warning(
                    "The ledger's contact table is from an older target-loops; it is rebuilt (each contact is sent "
                    "once more, delivered events are still never re-sent)"
                )
                with self.engine.begin() as conn:
                    conn.execute(sa.text(f"DROP TABLE {contacts.name}"))

    # --- teams

    def remember_team(self, team: str, base_url: str, team_name: str | None) -> None:
        """Note the team (so a dry run without a key can find its namespace)."""
        if self.read_only:
            return
        with self._lock, self.engine.begin() as conn:
            self._upsert(
                conn,
                teams,
                [{"team": team, "base_url": base_url, "team_name": team_name, "last_seen": time.time()}],
                ["team"],
                ["base_url", "team_name", "last_seen"],
            )

    def known_team(self, base_url: str) -> str | None:
        """The one team seen at ``base_url``, or None when there are none or several."""
        if not self.available:
            return None
        with self._lock, self.engine.connect() as conn:
            rows = conn.execute(sa.select(teams.c.team).where(teams.c.base_url == base_url.rstrip("/"))).all()
        return rows[0][0] if len(rows) == 1 else None

    # --- contacts

    def contact_states(self, team: str, stream: str, identities: Sequence[str]) -> dict[str, ContactState]:
        """What Loops was last told, per identity among ``identities`` that the ledger knows."""
        if not self.available or not identities:
            return {}
        found: dict[str, ContactState] = {}
        with self._lock, self.engine.connect() as conn:
            for chunk in _chunks(list(set(identities))):
                columns = (contacts.c.identity, contacts.c.state, contacts.c.seen_at, contacts.c.fingerprint)
                query = sa.select(*columns).where(
                    contacts.c.team == team, contacts.c.stream == stream, contacts.c.identity.in_(chunk)
                )
                for identity, state, seen_at, print_ in conn.execute(query):
                    found[identity] = ContactState(state, seen_at, print_)
        return found

    def record_contacts(self, team: str, stream: str, items: Iterable[ContactRow]) -> None:
        """Remember contacts Loops has just accepted (rows: identity, email, hashes or their JSON, seen_at, print)."""
        now = time.time()
        rows = [
            {
                "team": team,
                "stream": stream,
                "identity": identity,
                "email": email,
                "state": state if isinstance(state, str) else json.dumps(state, separators=(",", ":"), sort_keys=True),
                "seen_at": seen_at,
                "fingerprint": print_,
                "delivered_at": now,
            }
            for identity, email, state, seen_at, print_ in items
        ]
        if self.read_only or not rows:
            return
        with self._lock, self.engine.begin() as conn:
            for chunk in _chunks(rows):
                update = ["email", "state", "seen_at", "fingerprint", "delivered_at"]
                self._upsert(conn, contacts, list(chunk), ["team", "stream", "identity"], update)

    def forget_contacts(self, team: str, identities: Sequence[str], emails: Sequence[str]) -> None:
        """A deleted contact is unknown again: its next upsert must be sent."""
        if self.read_only or not (identities or emails):
            return
        with self._lock, self.engine.begin() as conn:
            for chunk in _chunks(list(identities)):
                conn.execute(contacts.delete().where(contacts.c.team == team, contacts.c.identity.in_(chunk)))
            for chunk in _chunks([e.lower() for e in emails]):
                conn.execute(
                    contacts.delete().where(contacts.c.team == team, sa.func.lower(contacts.c.email).in_(chunk))
                )

    # --- events

    def delivered_events(self, team: str, keys: Sequence[str]) -> set[str]:
        """The idempotency keys among ``keys`` that Loops has already accepted (ever, not just for 24 hours)."""
        if not self.available or not keys:
            return set()
        found: set[str] = set()
        with self._lock, self.engine.connect() as conn:
            for chunk in _chunks(list(set(keys))):
                query = sa.select(events.c.idempotency_key).where(
                    events.c.team == team, events.c.idempotency_key.in_(chunk)
                )
                found.update(row[0] for row in conn.execute(query))
        return found

    def record_events(self, team: str, keys: Iterable[str]) -> None:
        """Remember events Loops has accepted (200) or had already accepted (409)."""
        now = time.time()
        rows = [{"team": team, "idempotency_key": key, "delivered_at": now} for key in set(keys)]
        if self.read_only or not rows:
            return
        with self._lock, self.engine.begin() as conn:
            for chunk in _chunks(rows):
                self._upsert(conn, events, list(chunk), ["team", "idempotency_key"], ["delivered_at"])

    def close(self) -> None:
        self.engine.dispose()

    # --- internals

    def _upsert(
        self, conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str], update: list[str]
    ) -> None:
        """INSERT … ON CONFLICT DO UPDATE, in the dialect at hand (SQLite or PostgreSQL)."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        statement = insert(table).values(rows)
        statement = statement.on_conflict_do_update(
            index_elements=keys, set_={name: statement.excluded[name] for name in update}
        )
        conn.execute(statement)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers and the writer work at once; NORMAL sync is durable across process crashes in WAL mode."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
