"""The sync ledger: what Loops has accepted, so that unchanged contacts and delivered events are never sent again.

Loops cannot be listed or diffed, and forgets idempotency keys after 24 hours
(https://loops.so/docs/api-reference/send-event), so target-loops remembers, per Loops team: for each contact, a
short hash per property Loops accepted and the time of the latest record applied; for each event, its idempotency
key. Entries are written only after Loops answered 200 (or 409 for an event), so a crash can at worst re-send work
Loops already has (harmless for contacts, a 409 for events within 24 hours), never skip work it lacks.

The ledger holds hashes, not people: identities, emails and idempotency keys are stored as keyed hashes (the team's
namespace is the key), so a ledger file is not a copy of the customer list.

Storage is any SQLAlchemy URL: SQLite by default, PostgreSQL for runners without a persistent disk.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import platformdirs
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from target_loops.serialization import _SCALARS, _SORTED, canonical_json

logger = logging.getLogger("target_loops.ledger")

#: Stored in ``target_loops_meta``; a ledger written by another version is upgraded (or refused) at open.
SCHEMA_VERSION = 3  # 3: digests as bytes, packed states (issue 25); audiences and their members (issue 19)
CHUNK = 500  # keys per lookup: well under SQLite's bound-parameter limit
#: The write-behind's longest wait: what a kill -9 can lose of what Loops accepted (plus requests in flight).
WRITE_BEHIND_SECONDS = 0.5

metadata = sa.MetaData()

meta = sa.Table(
    "target_loops_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)

teams = sa.Table(
    "target_loops_teams",
    metadata,
    sa.Column("team", sa.String(64), primary_key=True),
    sa.Column("base_url", sa.String(500), nullable=False),
    sa.Column("team_name", sa.String(500)),
    sa.Column("key_hashes", sa.Text, nullable=False, default="[]"),  # JSON: hashes of the API keys seen
    sa.Column("list_hashes", sa.Text, nullable=False, default="[]"),  # JSON: hashes of the team's mailing list ids
    sa.Column("last_seen", sa.Float, nullable=False),
)

#: A small integer per namespace: every contact and event row carries it instead of the namespace's text.
namespaces = sa.Table(
    "target_loops_namespaces",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("team", sa.String(64), nullable=False, unique=True),
)

#: A small integer per property name (``firstName``, ``mailingLists.<id>``): a contact's state stores the number.
properties = sa.Table(
    "target_loops_properties",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(500), nullable=False, unique=True),
)

# Schema 3 stores digests as bytes, times as integers and a contact's state packed (see ``pack_state``): about a
# third of schema 2's bytes per contact. Both tables are keyed by their primary key alone (SQLite: WITHOUT ROWID,
# so the key is not stored twice).
contacts = sa.Table(
    "target_loops_contacts_v3",
    metadata,
    sa.Column("ns", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("identity", sa.LargeBinary(16), primary_key=True),  # keyed hash of u:<userId> or e:<email, lowercased>
    sa.Column("email", sa.LargeBinary(16)),  # keyed hash of the email, lowercased
    sa.Column("state", sa.LargeBinary, nullable=False),  # packed {property id: 8-byte hash of its value}
    sa.Column("fingerprint", sa.LargeBinary(16), nullable=False),  # hash of the last payload accepted, whole
    sa.Column("seen_at", sa.BigInteger),  # the latest record timestamp applied, µs since 1970 UTC, when known
    sa.Column("delivered_at", sa.Integer, nullable=False),  # seconds since 1970
    sa.Index("ix_target_loops_contacts_v3_email", "email"),
    sqlite_with_rowid=False,
)

events = sa.Table(
    "target_loops_events_v3",
    metadata,
    sa.Column("ns", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("key", sa.LargeBinary(16), primary_key=True),  # keyed hash of the idempotency key
    sa.Column("delivered_at", sa.Integer, nullable=False),
    sqlite_with_rowid=False,
)

#: Schema 2 (0.2): read once to upgrade in place, then dropped.
_v2 = sa.MetaData()
_contacts_v2 = sa.Table(
    "target_loops_contacts_v2",
    _v2,
    sa.Column("team", sa.String(64), primary_key=True),
    sa.Column("identity", sa.String(32), primary_key=True),
    sa.Column("email", sa.String(32)),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.String(32), nullable=False),
    sa.Column("seen_at", sa.String(40)),
    sa.Column("delivered_at", sa.Float, nullable=False),
)
_events_v2 = sa.Table(
    "target_loops_events_v2",
    _v2,
    sa.Column("team", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(32), primary_key=True),
    sa.Column("delivered_at", sa.Float, nullable=False),
)

#: Second names of namespaces: a ``ledger_namespace`` set after its team's ledger was in use names that ledger
#: (see ``Ledger._named_namespace``).
names = sa.Table(
    "target_loops_names",
    metadata,
    sa.Column("name", sa.String(500), primary_key=True),  # the ledger_namespace setting
    sa.Column("team", sa.String(64), nullable=False),  # the namespace it names: its rows are keyed by this
    sa.Column("named_at", sa.Float, nullable=False),
)

#: One row per audience (an upsert rule with ``on_leave``/``on_join``, on one stream) and Loops team: the version
#: it was last closed at (None: never, so its next closing is its first sync, which makes nobody leave or join).
audiences = sa.Table(
    "target_loops_audiences",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("team", sa.String(64), nullable=False),
    sa.Column("name", sa.String(32), nullable=False),  # keyed hash of the stream's name
    sa.Column("closed_version", sa.BigInteger),
    sa.UniqueConstraint("team", "name"),
)

#: Who the target itself put in each audience. ``address`` is the one identity Loops is told who leaves by
#: (``u:<userId>``, else ``e:<email>``): a hash cannot address a contact, so it is the one clear value the ledger
#: keeps, and only for audience members. ``held`` is what the rule set: list ids it set true and, per property it
#: wrote, the short hash of the value (``{"l": [...], "p": {...}}``). ``joined`` is 1 until the next closing.
members = sa.Table(
    "target_loops_members",
    metadata,
    sa.Column("audience", sa.Integer, primary_key=True),
    sa.Column("identity", sa.LargeBinary(16), primary_key=True),  # the contact's identity hash, as bytes
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),  # the version (or run stamp) that last held the person
    sa.Column("held", sa.Text, nullable=False),
    sa.Column("joined", sa.SmallInteger, nullable=False),
    sqlite_with_rowid=False,
)


class MemberRow(NamedTuple):
    """A person seen in an audience's stream: ``held`` None only moves ``version`` on for a member (the row was
    seen but Loops did not accept it, so nothing new is known of what the rule set)."""

    audience: int
    identity: bytes
    address: str
    version: int
    held: str | None


#: People written to a CSV for Loops' web upload (``new_contacts: csv``) and not yet seen in Loops: what the CSV row
#: carried (hashes, as for ``contacts``) and the file it went to. A later run that finds a sample of them in Loops
#: moves them to ``contacts`` (the upload is done: only later changes are sent).
exports = sa.Table(
    "target_loops_exports",
    metadata,
    sa.Column("team", sa.String(64), primary_key=True),
    sa.Column("identity", sa.String(32), primary_key=True),
    sa.Column("email", sa.String(32)),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.String(32), nullable=False),
    sa.Column("seen_at", sa.String(40)),
    sa.Column("path", sa.String(1000), nullable=False),  # the CSV file the person was written to
    sa.Column("exported_at", sa.Float, nullable=False),
)

_LEGACY_CONTACTS = "target_loops_contacts"
_LEGACY_EVENTS = "target_loops_events"


class LedgerError(RuntimeError):
    """The ledger cannot be opened or used (bad URL, unreadable file, a newer schema); the message says which."""


class TeamIdentityError(RuntimeError):
    """The ledger cannot tell whether this API key belongs to a team it already knows; nothing was sent."""


#: The fingerprint of a ledger row that says "deleted at ``seen_at``" (a tombstone): a record older than the delete,
#: arriving later (another window, another run, a replay), must not bring the contact back.
DELETED = "deleted"


@dataclass
class ContactState:
    """A contact's ledger entry: what Loops holds per property (short hashes), as of which record timestamp, and a
    fingerprint of the last payload it accepted (the cheap check: a re-sent table repeats payloads exactly).

    ``raw`` is JSON text (a state the outbox projects in memory) or the ledger's packed bytes, which ``unpack``
    reads; either is parsed only when the fingerprint does not settle it.
    """

    raw: str | bytes
    seen_at: str | None
    fingerprint: str
    unpack: Callable[[bytes], dict[str, str]] | None = None

    @functools.cached_property
    def hashes(self) -> dict[str, str]:
        """Per property, the hash of the value Loops holds."""
        if isinstance(self.raw, str):
            parsed: dict[str, str] = json.loads(self.raw)
            return parsed
        assert self.unpack is not None, "packed state without its reader"
        return self.unpack(self.raw)


class ContactRow(NamedTuple):
    """What ``record_contacts`` writes for one contact Loops has just accepted."""

    identity: str
    email: str | None
    state: dict[str, str]
    seen_at: str | None
    fingerprint: str


def fingerprint(body: dict[str, Any]) -> str:
    """A stable hash of a whole payload: equal payloads (whatever the key order) give equal fingerprints."""
    return hashlib.blake2b(canonical_json(body).encode("utf-8"), digest_size=16).hexdigest()


def value_hashes(body: dict[str, Any]) -> dict[str, str]:
    """Per property of a payload, a short stable hash of its value (mailing lists one entry per list)."""
    hashes: dict[str, str] = {}
    for key, value in body.items():
        if key == "mailingLists" and isinstance(value, dict):
            for list_id, member in value.items():
                hashes[f"mailingLists.{list_id}"] = _short_hash(member)
        else:
            hashes[key] = _short_hash(value)
    return hashes


def _short_hash(value: Any) -> str:
    if type(value) in _SCALARS:
        try:  # the bytes of canonical_json(value), without building the text (a first import hashes millions)
            return hashlib.blake2b(_SORTED.encode(value), digest_size=8).hexdigest()
        except UnicodeEncodeError:  # a lone surrogate: canonical_json writes it its own way
            pass
    return hashlib.blake2b(canonical_json(value).encode("utf-8"), digest_size=8).hexdigest()


def keyed_hash(team: str, text: str) -> str:
    """A 128-bit hash of ``text`` keyed by the team's namespace: what the ledger stores instead of an identity,
    an email or an idempotency key. Keyed, so the same email gives unrelated values in two teams' ledgers."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16, key=team.encode("utf-8")[:64]).hexdigest()


#: The first byte of a packed state (``pack_state``); a state stored as JSON text starts with ``{``.
_PACKED = 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def pack_state(state: dict[str, str], ids: dict[str, int]) -> bytes:
    """A contact's state in few bytes: per property its id (``target_loops_properties``, a varint) and its 8-byte
    hash. The property names are the same for most contacts; stored once, not per contact. A hash that is not the
    16 hex digits ``value_hashes`` writes keeps the state as JSON text (never expected; never lost either)."""
    out = bytearray((_PACKED,))
    for name, digest in state.items():
        if len(digest) != 16:
            return canonical_json(state).encode("utf-8")
        number = ids[name]
        while number >= 0x80:
            out.append((number & 0x7F) | 0x80)
            number >>= 7
        out.append(number)
        try:
            out += bytes.fromhex(digest)
        except ValueError:
            return canonical_json(state).encode("utf-8")
    return bytes(out)


def unpack_state(raw: bytes, names: Callable[[int], str]) -> dict[str, str]:
    """``pack_state`` read back: {property name: 16 hex digits}."""
    if raw[:1] != bytes((_PACKED,)):
        parsed: dict[str, str] = json.loads(raw)
        return parsed
    state: dict[str, str] = {}
    at, end = 1, len(raw)
    while at < end:
        number = shift = 0
        while True:
            byte = raw[at]
            at += 1
            number |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        state[names(number)] = raw[at : at + 8].hex()
        at += 8
    return state


#: How a tombstone's fingerprint is stored: one byte no digest has (they are 16 bytes; "no fingerprint" is empty).
_DELETED_BYTES = b"\x00"


def _digest(text: str) -> bytes:
    """A hex digest (an identity, an email, a fingerprint, an event key) as the bytes the ledger stores."""
    return _DELETED_BYTES if text == DELETED else bytes.fromhex(text)


def _text(digest: bytes) -> str:
    """``_digest`` read back."""
    digest = bytes(digest)
    return DELETED if digest == _DELETED_BYTES else digest.hex()


def _stored(ns: int | None, row: ContactRow, ids: dict[str, int], delivered_at: int) -> dict[str, Any]:
    """A contact as a ``contacts`` row stores it (schema 3); ``ids`` numbers every property name in ``row.state``."""
    return {
        "ns": ns,
        "identity": _digest(row.identity),
        "email": None if row.email is None else _digest(row.email),
        "state": pack_state(row.state, ids),
        "seen_at": _micros(row.seen_at),
        "fingerprint": _digest(row.fingerprint),
        "delivered_at": delivered_at,
    }


def _micros(moment: str | None) -> int | None:
    """A ``seen_at`` (``values.sort_key``'s UTC ISO text) as microseconds since 1970: 8 bytes instead of 25-32."""
    if moment is None:
        return None
    parsed = dt.datetime.fromisoformat(moment)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    delta = parsed - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _moment(micros: int | None) -> str | None:
    """``_micros`` read back: the same text ``values.sort_key`` wrote (UTC, ``+00:00``)."""
    return None if micros is None else (_EPOCH + dt.timedelta(microseconds=micros)).isoformat()


def key_fingerprint(api_key: str) -> str:
    """What the ledger keeps of an API key: a one-way hash that recognises the key again, never the key."""
    return hashlib.sha256(f"target-loops api key|{api_key}".encode()).hexdigest()[:32]


def list_fingerprints(list_ids: Iterable[str]) -> set[str]:
    """Hashes of a team's mailing list ids; a shared list id is taken to mean that two API keys belong to one team.

    This project's assumption, not a Loops document's: Loops' list ids look like generated database ids
    (``cm06f5v0e45nf0ml5754o9cix``, cuid-style: https://loops.so/docs/api-reference/list-mailing-lists shows them)
    and no page says two teams could share one. If that ever failed, two teams would share one ledger namespace;
    ``ledger_namespace`` separates them."""
    return {hashlib.sha256(f"target-loops list|{i}".encode()).hexdigest()[:32] for i in list_ids}


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 (the ``postgres`` extra), not SQLAlchemy's psycopg2."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def describe_url(url: str) -> str:
    """The ledger URL as it may be shown: any password replaced by ``***``."""
    try:
        return make_url(normalize_url(url)).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL: show its scheme only
        return url.split(":", 1)[0] + ":…"


#: Where target-loops 0.1 kept its default ledger: relative to the working directory (a cron job or another shell
#: found an empty ledger there and re-sent everything).
LEGACY_DEFAULT_PATH = Path(".target-loops") / "ledger.sqlite"


def default_ledger_path() -> tuple[Path, str]:
    """The default ledger file and why it is there, independent of the working directory.

    Run by Meltano: the project's ``.meltano/`` folder (``MELTANO_PROJECT_ROOT``), so every job of the project
    shares it. Otherwise the user's data folder (``platformdirs``: ``~/.local/share/target-loops`` on Linux,
    honouring ``XDG_DATA_HOME``). A 0.1 ledger in the working directory is still used, with a warning, so an
    upgrade never starts from an empty ledger.
    """
    if LEGACY_DEFAULT_PATH.is_file():
        return LEGACY_DEFAULT_PATH.resolve(), "found in the working directory, where target-loops 0.1 kept it"
    project = os.environ.get("MELTANO_PROJECT_ROOT")
    if project:
        return Path(project).resolve() / ".meltano" / "target-loops" / "ledger.sqlite", "the Meltano project's"
    return platformdirs.user_data_path("target-loops") / "ledger.sqlite", "the user's data folder"


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: The DB-API parameter marker of the drivers the ledger supports (sqlite3: qmark; psycopg: format/pyformat).
_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}


@functools.lru_cache(maxsize=16)
def _contact_states_sql(mark: str, count: int) -> str:
    marks = ", ".join([mark] * count)
    return (
        f"SELECT identity, state, seen_at, fingerprint FROM {contacts.name} WHERE ns = {mark} AND identity IN ({marks})"
    )


class Ledger:
    """Thread-safe access to the ledger tables; every method is one short transaction."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = normalize_url(url)
        self.read_only = read_only
        try:
            parsed = make_url(self.url)
        except Exception as exc:
            raise LedgerError(
                f"ledger_url {describe_url(url)!r} is not a database URL ({type(exc).__name__}); use "
                "sqlite:////absolute/path/ledger.sqlite or postgresql://user:pass@host/db"
            ) from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.available = True
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database)
            if path.is_dir():
                raise LedgerError(f"ledger_url points at {path}, which is a folder; name a file in it")
            if read_only and not path.exists():
                self.available = False  # a dry run must not create a ledger; nothing is known yet
            else:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise LedgerError(f"cannot create the ledger's folder {path.parent}: {exc.strerror}") from None
        self._lock = threading.Lock()
        self._namespace_ids: dict[str, int] = {}
        self._reads_v2 = False
        self._property_ids: dict[str, int] = {}
        self._property_names: dict[int, str] = {}
        try:
            self.engine = sa.create_engine(self.url, **({"connect_args": {"timeout": 30}} if self.is_sqlite else {}))
        except Exception as exc:  # a missing driver, an unknown dialect
            raise LedgerError(f"cannot use ledger_url {describe_url(url)!r}: {_first_line(exc)}") from None
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            if self.available and not read_only:
                self._prepare()
            elif self.available:
                inspector = sa.inspect(self.engine)
                self.available = inspector.has_table(contacts.name)
                # A dry run before the first real run of this version reads a 0.2 ledger as it is (upgraded later).
                self._reads_v2 = not self.available and inspector.has_table(_contacts_v2.name)
                self.available = self.available or self._reads_v2
        except LedgerError:
            raise
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(
                f"cannot open the ledger at {describe_url(url)}: {_first_line(getattr(exc, 'orig', None) or exc)}. "
                "If it is a corrupt "
                "SQLite file, move it away (the next run re-sends contacts once; events older than 24 h could be "
                "sent again)"
            ) from None

    # --- schema

    def _prepare(self) -> None:
        """Create the tables, or upgrade a ledger of schema 1 (clear identities per stream) to hashes per contact."""
        inspector = sa.inspect(self.engine)
        version = 0
        if inspector.has_table(meta.name):
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).first()
            version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger at {describe_url(self.url)} was written by a newer target-loops (schema {version}, this "
                f"one reads {SCHEMA_VERSION}); upgrade target-loops"
            )
        legacy_teams = inspector.has_table(teams.name) and "key_hashes" not in {
            c["name"] for c in inspector.get_columns(teams.name)
        }
        if legacy_teams:
            with self.engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {teams.name} ADD COLUMN key_hashes TEXT NOT NULL DEFAULT '[]'"))
                conn.execute(sa.text(f"ALTER TABLE {teams.name} ADD COLUMN list_hashes TEXT NOT NULL DEFAULT '[]'"))
        metadata.create_all(self.engine)
        if version < SCHEMA_VERSION:
            self._upgrade_from_v1(inspector)
            self._upgrade_from_v2(inspector)
            with self.engine.begin() as conn:
                self._upsert(conn, meta, [{"key": "schema_version", "value": str(SCHEMA_VERSION)}], ["key"], ["value"])

    def _upgrade_from_v1(self, inspector: Any) -> None:
        """Schema 1 kept clear identities per stream and clear idempotency keys: hash the event keys (so no event
        is ever re-sent) and drop the contact rows (each contact is sent once more; harmless)."""
        if inspector.has_table(_LEGACY_EVENTS):
            with self.engine.begin() as conn:
                rows = conn.execute(sa.text(f"SELECT team, idempotency_key, delivered_at FROM {_LEGACY_EVENTS}")).all()
                migrated = [
                    {
                        "ns": self._namespace(conn, t, create=True),
                        "key": _digest(keyed_hash(t, k)),
                        "delivered_at": int(d),
                    }
                    for t, k, d in rows
                ]
                for chunk in _chunks(migrated):
                    self._upsert(conn, events, list(chunk), ["ns", "key"], ["delivered_at"])
                conn.execute(sa.text(f"DROP TABLE {_LEGACY_EVENTS}"))
                if rows:
                    self._upsert(conn, meta, [{"key": "legacy_event_keys", "value": "1"}], ["key"], ["value"])
            logger.warning("Ledger upgraded: %d delivered event keys are now stored as hashes", len(rows))
        if inspector.has_table(_LEGACY_CONTACTS):
            with self.engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE {_LEGACY_CONTACTS}"))
            logger.warning(
                "Ledger upgraded: contacts are now kept per contact as hashes; each contact is sent once more"
            )

    def _upgrade_from_v2(self, inspector: Any) -> None:
        """Schema 2 (0.2) kept the same hashes as hex text: rewrite every row in schema 3's form, in one
        transaction (a crash leaves schema 2 whole, upgraded again at the next start), then give the space back."""
        if not (inspector.has_table(_contacts_v2.name) or inspector.has_table(_events_v2.name)):
            return
        moved = {"contacts": 0, "events": 0}
        with self.engine.begin() as conn:
            if inspector.has_table(_contacts_v2.name):
                result = conn.execution_options(stream_results=True).execute(sa.select(_contacts_v2))
                for batch in result.partitions(CHUNK):
                    converted = []
                    states = [json.loads(r.state) for r in batch]
                    ids = self._property_ids_for(conn, {name for state in states for name in state})
                    for row, state in zip(batch, states, strict=True):
                        contact = ContactRow(row.identity, row.email, state, row.seen_at, row.fingerprint)
                        ns = self._namespace(conn, row.team, create=True)
                        converted.append(_stored(ns, contact, ids, int(row.delivered_at)))
                    self._upsert(conn, contacts, converted, ["ns", "identity"], ["state"])
                    moved["contacts"] += len(converted)
                conn.execute(sa.text(f"DROP TABLE {_contacts_v2.name}"))
            if inspector.has_table(_events_v2.name):
                result = conn.execution_options(stream_results=True).execute(sa.select(_events_v2))
                for batch in result.partitions(CHUNK):
                    rows = [
                        {"ns": self._namespace(conn, t, create=True), "key": _digest(k), "delivered_at": int(d)}
                        for t, k, d in batch
                    ]
                    self._upsert(conn, events, rows, ["ns", "key"], ["delivered_at"])
                    moved["events"] += len(rows)
                conn.execute(sa.text(f"DROP TABLE {_events_v2.name}"))
        if self.is_sqlite:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM")
        logger.warning(
            "Ledger upgraded in place to schema %d: %d contacts and %d delivered events kept (nothing is sent again)",
            SCHEMA_VERSION,
            moved["contacts"],
            moved["events"],
        )

    @functools.cached_property
    def legacy_event_keys(self) -> bool:
        """True when this ledger was upgraded from 0.1 with delivered events: they are known by 0.1's keys too."""
        if not self.available:
            return False
        with self._lock, self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(meta.name):
                return False
            row = conn.execute(sa.select(meta.c.value).where(meta.c.key == "legacy_event_keys")).first()
        return bool(row and row[0] == "1")

    # --- teams

    def resolve_team(
        self,
        *,
        base_url: str,
        team_name: str | None,
        api_key: str,
        list_ids: Iterable[str],
        explicit: str | None = None,
    ) -> str:
        """The ledger namespace of the team behind ``api_key``; two teams never share one.

        ``explicit`` (the ``ledger_namespace`` setting) is read by ``_named_namespace``. Otherwise a key seen before
        with the same team name keeps its namespace (the same key under a new name starts a new one, with a warning:
        a renamed team, or a restarted sandbox); a new key joins the namespace of a team with the same name at the
        same URL only when they share a mailing list id (list ids are unique across Loops): a rotated key keeps its
        ledger, another team with the same name does not inherit it. When neither can be told,
        ``TeamIdentityError`` stops the run before anything is sent.

        A read-only ledger (a dry run) answers the same and writes nothing.
        """
        base_url = base_url.rstrip("/")
        key_hash = key_fingerprint(api_key)
        lists = list_fingerprints(list_ids)
        rows = self._team_rows(base_url)
        if explicit:
            chosen = self._named_namespace(explicit, base_url, team_name, key_hash, lists, rows)
        else:
            chosen = self._automatic_namespace(base_url, team_name, key_hash, lists, rows)
        if not self.read_only:
            existing = next((r for r in rows if r["team"] == chosen), None) or self._team_row(chosen)
            keys = sorted(set(existing["key_hashes"] if existing else []) | {key_hash})
            known_lists = sorted(set(existing["list_hashes"] if existing else []) | lists)
            with self._lock, self.engine.begin() as conn:
                row = {
                    "team": chosen,
                    "base_url": base_url,
                    "team_name": team_name,
                    "key_hashes": json.dumps(keys),
                    "list_hashes": json.dumps(known_lists),
                    "last_seen": time.time(),
                }
                update = ["base_url", "team_name", "key_hashes", "list_hashes", "last_seen"]
                self._upsert(conn, teams, [row], ["team"], update)
        return chosen

    def _automatic_namespace(
        self, base_url: str, team_name: str | None, key_hash: str, lists: set[str], rows: list[dict[str, Any]]
    ) -> str:
        """The namespace of this key's team without ``ledger_namespace`` (see ``resolve_team``)."""
        # A key belongs to one team; the same key under another team name is a renamed team or a restarted
        # sandbox (whose name changes at each start): a new namespace, said out loud.
        chosen = next((r["team"] for r in rows if key_hash in r["key_hashes"] and r["team_name"] == team_name), "")
        renamed = [r for r in rows if key_hash in r["key_hashes"] and r["team_name"] != team_name]
        if not chosen and renamed:
            logger.warning(
                "This API key was last seen with the team named %r, now %r: a new ledger namespace is started "
                "(contacts are sent once more). If the team was only renamed, set ledger_namespace to %r.",
                renamed[0]["team_name"],
                team_name,
                renamed[0]["team"],
            )
        if not chosen:
            same_name = [r for r in rows if r["team_name"] == team_name]
            verified = [r for r in same_name if lists & set(r["list_hashes"])]
            # Both sides have lists and share none: certainly another team (list ids are unique).
            unknown = [r for r in same_name if not (lists and r["list_hashes"]) and r not in verified]
            legacy = [r for r in same_name if not r["key_hashes"]]
            if len(verified) == 1:
                chosen = verified[0]["team"]
                logger.info("A new API key of team %r: same team (a shared mailing list); ledger kept", team_name)
            elif len(legacy) == 1 and len(same_name) == 1:
                chosen = legacy[0]["team"]  # a ledger from before team identity: adopted once, then verified
            elif unknown or len(verified) > 1:
                raise TeamIdentityError(
                    f"this API key is new to the ledger, and the ledger already knows a Loops team named "
                    f"{team_name!r} at {base_url} under another key; target-loops cannot tell whether this is "
                    "the same team (a mailing list id shared by both would prove it). If it is a rotated key of "
                    f"that team, set ledger_namespace to {same_name[0]['team']!r} to keep its ledger; if it is "
                    'another team with the same name, set ledger_namespace to a new name (e.g. "production"). '
                    "Nothing was sent."
                )
            else:
                who = f"{base_url}|{key_hash}|{team_name}"
                chosen = "auto-" + hashlib.sha256(who.encode()).hexdigest()[:24]
        return chosen

    def _named_namespace(
        self,
        name: str,
        base_url: str,
        team_name: str | None,
        key_hash: str,
        lists: set[str],
        rows: list[dict[str, Any]],
    ) -> str:
        """The namespace ``ledger_namespace: name`` stands for.

        A name the ledger knows keeps its own data: a namespace of that name, or a name recorded for one earlier.

        A name new to the ledger, set where this key's team already has a ledger holding data (the namespace the
        run would use without the setting: this key, or a key of the same team proven by a shared mailing list),
        becomes a second name of that ledger, recorded in ``target_loops_names`` and said once. Not a fresh start:
        the ledger stores hashes keyed by the namespace (``keyed_hash``), so its rows cannot be re-keyed to the
        new name, and an empty namespace would send every contact again and every event whose idempotency key
        Loops has forgotten (after 24 hours) again, emailing people twice. Not an error either: the name is what
        the user asked for, and nothing is lost or repeated by honouring it this way.

        A key the ledger has never seen starts fresh under the name: that is a team the ledger cannot vouch for
        (two teams with one name kept apart on purpose, the reason the setting exists). A name never joins two
        teams: a key belongs to one team, and mailing list ids are unique across Loops.
        """
        named = self._namespace_named(name)
        if named is not None:
            return named
        if any(r["team"] == name for r in rows) or (self.available and self._team_row(name) is not None):
            return name
        try:
            current = self._automatic_namespace(base_url, team_name, key_hash, lists, rows)
        except TeamIdentityError:
            return name  # a key the ledger cannot place: the name is a new ledger, as asked
        contacts_held, events_held = self._held(current) if any(r["team"] == current for r in rows) else (0, 0)
        if not (contacts_held or events_held):
            return name
        if self.read_only:
            logger.warning(
                "ledger_namespace %r is new to the ledger: the first real run makes it name the ledger this key has "
                "used so far (%d contacts, %d events), and this dry run reads that ledger",
                name,
                contacts_held,
                events_held,
            )
            return current
        row = {"name": name, "team": current, "named_at": time.time()}
        with self._lock, self.engine.begin() as conn:  # an upsert: two runs starting at once name it alike
            self._upsert(conn, names, [row], ["name"], ["named_at"])
        logger.warning(
            "ledger_namespace %r now names the ledger this key has used so far (%d contacts, %d events): what it "
            "holds stays known, nothing is sent again",
            name,
            contacts_held,
            events_held,
        )
        return current

    def _namespace_named(self, name: str) -> str | None:
        """The namespace ``name`` was recorded for as a second name, or None."""
        if not self.available:
            return None
        with self._lock, self.engine.connect() as conn:
            if self.read_only and not sa.inspect(conn).has_table(names.name):
                return None  # a ledger last written before names were kept
            row = conn.execute(sa.select(names.c.team).where(names.c.name == name)).first()
        return str(row[0]) if row else None

    def _held(self, team: str) -> tuple[int, int]:
        """How many contacts and events the ledger holds for ``team``."""
        with self._lock, self.engine.connect() as conn:
            ns = self._namespace(conn, team)
            if ns is None:
                return 0, 0
            held = [
                int(conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.ns == ns)).scalar_one())
                for t in (contacts, events)
            ]
        return held[0], held[1]

    def known_team(self, base_url: str, api_key: str | None = None, explicit: str | None = None) -> str | None:
        """For a dry run without a key: the namespace ``explicit`` (``ledger_namespace``) names, else the team this
        key was seen with, else the one team seen at ``base_url``, else None."""
        if explicit:
            return self._namespace_named(explicit) or explicit
        if not self.available:
            return None
        rows = self._team_rows(base_url.rstrip("/"))
        if api_key:
            match = [r for r in rows if key_fingerprint(api_key) in r["key_hashes"]]
            if match:
                return str(match[0]["team"])
        return str(rows[0]["team"]) if len(rows) == 1 else None

    def _team_rows(self, base_url: str) -> list[dict[str, Any]]:
        if not self.available:
            return []
        with self._lock, self.engine.connect() as conn:
            rows = conn.execute(sa.select(teams).where(teams.c.base_url == base_url)).mappings().all()
        return [_team_dict(r) for r in rows]

    def _team_row(self, team: str) -> dict[str, Any] | None:
        with self._lock, self.engine.connect() as conn:
            row = conn.execute(sa.select(teams).where(teams.c.team == team)).mappings().first()
        return _team_dict(row) if row else None

    # --- contacts

    def contact_states(self, team: str, identities: Sequence[str]) -> dict[str, ContactState]:
        """What Loops was last told, per identity hash among ``identities`` that the ledger knows."""
        if not self.available or not identities:
            return {}
        if self._reads_v2:
            return self._v2_contact_states(team, identities)
        found: dict[str, ContactState] = {}
        mark = _PLACEHOLDER.get(self.engine.dialect.paramstyle)
        columns = (contacts.c.identity, contacts.c.state, contacts.c.seen_at, contacts.c.fingerprint)
        unpack = self._unpack
        with self._lock, self.engine.connect() as conn:
            ns = self._namespace(conn, team)
            if ns is None:
                return {}
            for chunk in _chunks([_digest(i) for i in set(identities)]):
                if mark is not None:
                    # Every row of a nightly re-sync is looked up here: plain SQL (built once per chunk size) on the
                    # driver's cursor costs half of what building the query and its result rows per chunk does.
                    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                    try:
                        cursor.execute(_contact_states_sql(mark, len(chunk)), (ns, *chunk))
                        rows: Iterable[Any] = cursor.fetchall()
                    finally:
                        cursor.close()
                else:
                    query = sa.select(*columns).where(contacts.c.ns == ns, contacts.c.identity.in_(chunk))
                    rows = conn.execute(query)
                for identity, state, seen_at, print_ in rows:
                    found[bytes(identity).hex()] = ContactState(bytes(state), _moment(seen_at), _text(print_), unpack)
        return found

    def identities_by_email(self, team: str, emails: Sequence[str]) -> dict[str, set[str]]:
        """Per email hash, the identity hashes of the contacts Loops accepted with that email."""
        if not self.available or not emails:
            return {}
        if self._reads_v2:
            return self._v2_identities_by_email(team, emails)
        found: dict[str, set[str]] = {}
        with self._lock, self.engine.connect() as conn:
            ns = self._namespace(conn, team)
            if ns is None:
                return {}
            for chunk in _chunks([_digest(e) for e in set(emails)]):
                query = sa.select(contacts.c.email, contacts.c.identity).where(
                    contacts.c.ns == ns, contacts.c.email.in_(chunk)
                )
                for email, identity in conn.execute(query):
                    found.setdefault(bytes(email).hex(), set()).add(bytes(identity).hex())
        return found

    def record_contacts(self, team: str, items: Iterable[ContactRow]) -> None:
        """Remember contacts Loops has just accepted."""
        items = list(items)
        if self.read_only or not items:
            return
        now = int(time.time())
        with self._lock, self.engine.begin() as conn:
            ns = self._namespace(conn, team, create=True)
            ids = self._property_ids_for(conn, {name for row in items for name in row.state})
            rows = [_stored(ns, row, ids, now) for row in items]
            # A request without an email (by userId alone) leaves the email the ledger linked to the contact.
            for with_email in (True, False):
                part = [row for row in rows if (row["email"] is not None) is with_email]
                update = ["state", "seen_at", "fingerprint", "delivered_at"]
                for chunk in _chunks(part):
                    self._upsert(conn, contacts, list(chunk), ["ns", "identity"], ["email", *update][not with_email :])

    def forget_contacts(self, team: str, identities: Sequence[str], emails: Sequence[str]) -> None:
        """A deleted contact is unknown again: its next upsert must be sent."""
        if self.read_only or not (identities or emails):
            return
        with self._lock, self.engine.begin() as conn:
            ns = self._namespace(conn, team)
            if ns is None:
                return
            for chunk in _chunks([_digest(i) for i in identities]):
                conn.execute(contacts.delete().where(contacts.c.ns == ns, contacts.c.identity.in_(chunk)))
            for chunk in _chunks([_digest(e) for e in emails]):
                conn.execute(contacts.delete().where(contacts.c.ns == ns, contacts.c.email.in_(chunk)))

    # --- events

    def delivered_events(self, team: str, keys: Sequence[str]) -> set[str]:
        """The event key hashes among ``keys`` that Loops has already accepted (ever, not just for 24 hours)."""
        if not self.available or not keys:
            return set()
        if self._reads_v2:
            return self._v2_delivered_events(team, keys)
        found: set[str] = set()
        with self._lock, self.engine.connect() as conn:
            ns = self._namespace(conn, team)
            if ns is None:
                return set()
            for chunk in _chunks([_digest(k) for k in set(keys)]):
                query = sa.select(events.c.key).where(events.c.ns == ns, events.c.key.in_(chunk))
                found.update(bytes(row[0]).hex() for row in conn.execute(query))
        return found

    def record_events(self, team: str, keys: Iterable[str]) -> None:
        """Remember events Loops has accepted (200) or had already accepted (409), by key hash."""
        unique = set(keys)
        if self.read_only or not unique:
            return
        now = int(time.time())
        with self._lock, self.engine.begin() as conn:
            ns = self._namespace(conn, team, create=True)
            rows = [{"ns": ns, "key": _digest(key), "delivered_at": now} for key in unique]
            for chunk in _chunks(rows):
                self._upsert(conn, events, list(chunk), ["ns", "key"], ["delivered_at"])

    # --- a 0.2 ledger read by a dry run (schema 2, not upgraded: a dry run writes nothing)

    def _v2_contact_states(self, team: str, identities: Sequence[str]) -> dict[str, ContactState]:
        t = _contacts_v2
        found: dict[str, ContactState] = {}
        with self._lock, self.engine.connect() as conn:
            for chunk in _chunks(list(set(identities))):
                query = sa.select(t.c.identity, t.c.state, t.c.seen_at, t.c.fingerprint)
                for identity, state, seen_at, print_ in conn.execute(
                    query.where(t.c.team == team, t.c.identity.in_(chunk))
                ):
                    found[identity] = ContactState(state, seen_at, print_)
        return found

    def _v2_identities_by_email(self, team: str, emails: Sequence[str]) -> dict[str, set[str]]:
        t = _contacts_v2
        found: dict[str, set[str]] = {}
        with self._lock, self.engine.connect() as conn:
            for chunk in _chunks(list(set(emails))):
                query = sa.select(t.c.email, t.c.identity).where(t.c.team == team, t.c.email.in_(chunk))
                for email, identity in conn.execute(query):
                    found.setdefault(email, set()).add(identity)
        return found

    def _v2_delivered_events(self, team: str, keys: Sequence[str]) -> set[str]:
        t = _events_v2
        found: set[str] = set()
        with self._lock, self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(t.name):
                return found
            for chunk in _chunks(list(set(keys))):
                found.update(r[0] for r in conn.execute(sa.select(t.c.key).where(t.c.team == team, t.c.key.in_(chunk))))
        return found

    # --- ids

    def _namespace(self, conn: sa.Connection, team: str, *, create: bool = False) -> int | None:
        """The small number rows of namespace ``team`` carry; None when it has none yet and ``create`` is off."""
        number = self._namespace_ids.get(team)
        if number is None:
            if create:
                from sqlalchemy.dialects import postgresql, sqlite

                dialect: Any = postgresql if self.engine.dialect.name == "postgresql" else sqlite
                conn.execute(dialect.insert(namespaces).values(team=team).on_conflict_do_nothing())
            if self.read_only and not sa.inspect(conn).has_table(namespaces.name):
                return None
            number = conn.execute(sa.select(namespaces.c.id).where(namespaces.c.team == team)).scalar()
            if number is None:
                return None
            self._namespace_ids[team] = number
        return number

    def _property_ids_for(self, conn: sa.Connection, wanted: set[str]) -> dict[str, int]:
        """Ids of the property names ``wanted``, numbering the new ones (once, whichever run comes first)."""
        missing = sorted(wanted - self._property_ids.keys())
        if missing:
            from sqlalchemy.dialects import postgresql, sqlite

            dialect: Any = postgresql if self.engine.dialect.name == "postgresql" else sqlite
            for chunk in _chunks(missing):
                conn.execute(dialect.insert(properties).values([{"name": n} for n in chunk]).on_conflict_do_nothing())
                for number, name in conn.execute(
                    sa.select(properties.c.id, properties.c.name).where(properties.c.name.in_(chunk))
                ):
                    self._property_ids[name], self._property_names[number] = number, name
        return self._property_ids

    def _property_name(self, number: int) -> str:
        name = self._property_names.get(number)
        if name is None:  # numbered by another run since this one last read the names
            with self._lock, self.engine.connect() as conn:
                for found, text in conn.execute(sa.select(properties.c.id, properties.c.name)):
                    self._property_ids[text], self._property_names[found] = found, text
            name = self._property_names[number]
        return name

    def _unpack(self, raw: bytes) -> dict[str, str]:
        return unpack_state(raw, self._property_name)

    # --- audiences

    def audience(self, team: str, name: str) -> tuple[int, int | None] | None:
        """The audience's id and the version it was last closed at; created when missing (None when read only)."""
        if not self.available:
            return None
        with self._lock, self.engine.begin() as conn:
            if self.read_only and not sa.inspect(conn).has_table(audiences.name):
                return None
            query = sa.select(audiences.c.id, audiences.c.closed_version).where(
                audiences.c.team == team, audiences.c.name == name
            )
            row = conn.execute(query).first()
            if row is None and not self.read_only:
                conn.execute(audiences.insert().values(team=team, name=name, closed_version=None))
                row = conn.execute(query).first()
        return (int(row[0]), None if row[1] is None else int(row[1])) if row is not None else None

    def close_audience(self, audience: int, version: int) -> None:
        """The audience is closed at ``version``: who joined since the last closing is no longer new."""
        if self.read_only:
            return
        with self._lock, self.engine.begin() as conn:
            conn.execute(audiences.update().where(audiences.c.id == audience).values(closed_version=version))
            conn.execute(members.update().where(members.c.audience == audience, members.c.joined == 1).values(joined=0))

    def newest_member_version(self, audience: int) -> int | None:
        """The newest version any member of the audience was seen at (None: no members)."""
        if not self.available:
            return None
        with self._lock, self.engine.connect() as conn:
            newest = conn.execute(sa.select(sa.func.max(members.c.version)).where(members.c.audience == audience))
            value = newest.scalar()
        return None if value is None else int(value)

    def member_counts(self, audience: int, version: int) -> tuple[int, int]:
        """(members, members last seen before ``version``): the guard's figures, counted in the database."""
        if not self.available:
            return 0, 0
        with self._lock, self.engine.connect() as conn:
            total = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((members.c.version < version, 1),
                                                                                 else_=0)), 0))
                .where(members.c.audience == audience)
            ).one()  # fmt: skip
        return int(total[0]), int(total[1])

    def leavers(self, audience: int, version: int) -> list[tuple[bytes, str, str]]:
        """The members last seen before ``version`` (identity, address, held): the set difference, done by the
        database so that a million members never come into memory, only those who leave."""
        if not self.available:
            return []
        query = sa.select(members.c.identity, members.c.address, members.c.held).where(
            members.c.audience == audience, members.c.version < version
        )
        with self._lock, self.engine.connect() as conn:
            return [(bytes(i), a, h) for i, a, h in conn.execute(query)]

    def joiners(self, audience: int) -> list[tuple[bytes, str]]:
        """Members who entered the audience since its last closing."""
        if not self.available:
            return []
        query = sa.select(members.c.identity, members.c.address).where(
            members.c.audience == audience, members.c.joined == 1
        )
        with self._lock, self.engine.connect() as conn:
            return [(bytes(i), a) for i, a in conn.execute(query)]

    def audience_members(self, audience: int) -> Iterator[tuple[bytes, str, str]]:
        """Every member (identity, address, held), streamed: a dry run compares them with what it read."""
        if not self.available:
            return
        query = sa.select(members.c.identity, members.c.address, members.c.held).where(members.c.audience == audience)
        with self._lock, self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=5000).execute(query):
                yield bytes(row[0]), row[1], row[2]

    def member_holdings(
        self, audiences_: Sequence[int], identities: Sequence[bytes]
    ) -> dict[bytes, list[tuple[int, str]]]:
        """Per identity among ``identities``, the (audience, held) of its memberships in ``audiences_``."""
        found: dict[bytes, list[tuple[int, str]]] = {}
        if not self.available or not audiences_ or not identities:
            return found
        with self._lock, self.engine.connect() as conn:
            for chunk in _chunks(list(set(identities))):
                query = sa.select(members.c.identity, members.c.audience, members.c.held).where(
                    members.c.audience.in_(list(audiences_)), members.c.identity.in_(list(chunk))
                )
                for identity, audience, held in conn.execute(query):
                    found.setdefault(bytes(identity), []).append((int(audience), held))
        return found

    def record_members(self, rows: Sequence[MemberRow]) -> None:
        """Members seen (their version moves on) and accepted (inserted, or what the rule set replaced)."""
        if self.read_only or not rows:
            return
        latest: dict[tuple[int, bytes], MemberRow] = {}
        for row in rows:
            key = (row.audience, row.identity)
            before = latest.get(key)
            if before is None:
                latest[key] = row
                continue
            newer = row if row.held is not None else before  # what the rule set: the last accepted row's
            latest[key] = newer._replace(version=max(before.version, row.version))
        seen = [(r.version, r.audience, r.identity) for r in latest.values() if r.held is None]
        accepted = [
            (r.audience, r.identity, r.address, r.version, r.held) for r in latest.values() if r.held is not None
        ]
        mark = _PLACEHOLDER.get(self.engine.dialect.paramstyle, "?")
        # Plain SQL, many rows per call: SQLAlchemy's multi-row upsert built per chunk wrote 2,500 rows/s here.
        with self._lock, self.engine.begin() as conn:
            if seen:
                conn.exec_driver_sql(
                    f"UPDATE {members.name} SET version = {mark} WHERE audience = {mark} AND identity = {mark}", seen
                )
            if accepted:
                conn.exec_driver_sql(
                    f"INSERT INTO {members.name} (audience, identity, address, version, held, joined) "
                    f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark}, 1) ON CONFLICT (audience, identity) DO UPDATE "
                    "SET address = excluded.address, version = excluded.version, held = excluded.held",
                    accepted,
                )

    def forget_members(self, rows: Sequence[tuple[int, bytes]]) -> None:
        """People who left: they are no longer members (a later row makes them join again)."""
        if self.read_only or not rows:
            return
        with self._lock, self.engine.begin() as conn:
            conn.execute(
                members.delete().where(
                    members.c.audience == sa.bindparam("a"), members.c.identity == sa.bindparam("i")
                ),
                [{"a": a, "i": i} for a, i in rows],
            )

    # --- people exported to a CSV (new_contacts: csv)

    @functools.cached_property
    def _has_exports(self) -> bool:
        """False for a ledger opened read only that no run with ``new_contacts: csv`` has written yet."""
        if not self.available:
            return False
        with self._lock, self.engine.connect() as conn:
            return sa.inspect(conn).has_table(exports.name)

    def exported(self, team: str, identities: Sequence[str]) -> dict[str, str]:
        """Per identity hash among ``identities`` exported to a CSV and not yet seen in Loops, the file's path."""
        if not identities or not self._has_exports:
            return {}
        found: dict[str, str] = {}
        with self._lock, self.engine.connect() as conn:
            for chunk in _chunks(list(set(identities))):
                query = sa.select(exports.c.identity, exports.c.path).where(
                    exports.c.team == team, exports.c.identity.in_(chunk)
                )
                found.update((identity, path) for identity, path in conn.execute(query))
        return found

    def pending_exports(self, team: str) -> dict[str, int]:
        """Per CSV file, how many of the people written to it are not yet confirmed in Loops."""
        if not self._has_exports:
            return {}
        with self._lock, self.engine.connect() as conn:
            query = sa.select(exports.c.path, sa.func.count()).where(exports.c.team == team).group_by(exports.c.path)
            return {path: count for path, count in conn.execute(query)}

    def record_exports(self, team: str, path: str, rows: Iterable[ContactRow]) -> int:
        """Remember people just written to the CSV at ``path`` (after the file is in place); their count."""
        with self.exporting(team, path) as add:
            for row in rows:
                add(row)
        return int(add.count)  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def exporting(self, team: str, path: str) -> Iterator[Callable[[ContactRow], None]]:
        """A transaction that remembers people as exported to ``path``: ``add(row)`` for each, committed when the
        block ends without an error (the CSV is moved into place inside it: no file, no rows; no rows, the file is
        exported again by the next run)."""
        now = time.time()
        batch: list[tuple[Any, ...]] = []
        # Plain SQL on the driver (as ``contact_states`` does): SQLAlchemy's per-row parameter handling cost as
        # much as the insert itself for a first import's hundreds of thousands of rows.
        mark = _PLACEHOLDER.get(self.engine.dialect.paramstyle, "?")
        names = ["team", "identity", *_EXPORT_COLUMNS]
        statement = (
            f"INSERT INTO {exports.name} ({', '.join(names)}) VALUES ({', '.join([mark] * len(names))}) "
            f"ON CONFLICT (team, identity) DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in _EXPORT_COLUMNS)}"
        )

        def add(row: ContactRow) -> None:
            state = json.dumps(row.state, separators=(",", ":"), sort_keys=True)
            batch.append((team, row.identity, row.email, state, row.fingerprint, row.seen_at, path, now))
            add.count += 1  # type: ignore[attr-defined]
            if len(batch) >= 10_000:
                conn.exec_driver_sql(statement, batch)
                batch.clear()

        add.count = 0  # type: ignore[attr-defined]
        if self.read_only:
            yield lambda row: None
            return
        with self._lock, self.engine.begin() as conn:
            yield add
            if batch:
                conn.exec_driver_sql(statement, batch)

    def _upsert_many(self, table: sa.Table, keys: list[str], update: list[str]) -> Any:
        """One INSERT … ON CONFLICT DO UPDATE statement with bound parameters, to execute with many rows at once
        (compiled once: a statement per chunk of literal rows cost more in compiling than in writing)."""
        from sqlalchemy.dialects import postgresql, sqlite

        dialect: Any = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(table)
        return statement.on_conflict_do_update(
            index_elements=keys, set_={name: statement.excluded[name] for name in update}
        )

    def confirm_exports(self, team: str, missing: Sequence[str] = ()) -> int:
        """The CSV was uploaded: every exported person of ``team`` becomes a contact Loops holds (with the values the
        CSV carried), except ``missing`` (looked up and not found: unknown again). Returns how many moved."""
        if self.read_only or not self._has_exports:
            return 0
        with self._lock, self.engine.begin() as conn:
            for chunk in _chunks(list(missing)):
                conn.execute(exports.delete().where(exports.c.team == team, exports.c.identity.in_(chunk)))
            columns = (exports.c.identity, exports.c.email, exports.c.state, exports.c.fingerprint, exports.c.seen_at)
            rows = conn.execute(sa.select(*columns).where(exports.c.team == team)).all()
            now = int(time.time())
            ns = self._namespace(conn, team, create=True)
            states = [json.loads(state) for _, _, state, _, _ in rows]
            ids = self._property_ids_for(conn, {name for state in states for name in state})
            moved = [
                _stored(ns, ContactRow(identity, email, state, seen_at, print_), ids, now)
                for (identity, email, _, print_, seen_at), state in zip(rows, states, strict=True)
            ]
            update = ["email", "state", "seen_at", "fingerprint", "delivered_at"]
            statement = self._upsert_many(contacts, ["ns", "identity"], update)
            for chunk in _chunks(moved, 10_000):
                conn.execute(statement, list(chunk))
            conn.execute(exports.delete().where(exports.c.team == team))
        return len(moved)

    def forget_exports(self, team: str, identities: Sequence[str]) -> None:
        """These people were looked up and are not in Loops: unknown again (``new_contacts`` decides anew)."""
        if self.read_only or not identities or not self._has_exports:
            return
        with self._lock, self.engine.begin() as conn:
            for chunk in _chunks(list(identities)):
                conn.execute(exports.delete().where(exports.c.team == team, exports.c.identity.in_(chunk)))

    # --- figures

    def size(self) -> dict[str, Any]:
        """Rows per table and, for a SQLite file, its size on disk and the bytes per contact (for the benches)."""
        with self._lock, self.engine.connect() as conn:
            counts = {
                t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for t in (contacts, events)
            }
        figures: dict[str, Any] = {"contacts": counts[contacts.name], "events": counts[events.name]}
        database = make_url(self.url).database
        if self.is_sqlite and database and database != ":memory:":
            with self.engine.begin() as conn:
                conn.execute(sa.text("PRAGMA wal_checkpoint(TRUNCATE)"))
            figures["bytes"] = os.path.getsize(database)
            if figures["contacts"]:
                figures["bytes_per_contact"] = round(figures["bytes"] / figures["contacts"], 1)
        return figures

    def close(self) -> None:
        self.engine.dispose()

    # --- internals

    def _upsert(
        self, conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str], update: list[str]
    ) -> None:
        """INSERT … ON CONFLICT DO UPDATE, in the dialect at hand (SQLite or PostgreSQL)."""
        from sqlalchemy.dialects import postgresql, sqlite

        dialect: Any = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(table).values(rows)
        statement = statement.on_conflict_do_update(
            index_elements=keys, set_={name: statement.excluded[name] for name in update}
        )
        conn.execute(statement)


#: The writer's kinds for audience members (``record_members``, ``forget_members``).
_AUDIENCE_KINDS = frozenset({"members", "left"})
_EXPORT_COLUMNS = ["email", "state", "fingerprint", "seen_at", "path", "exported_at"]

#: Queued by ``LedgerWriter.sync``: write what is gathered now instead of at the end of the interval.
_WRITE_NOW = ("write-now", None)


class LedgerWriter:
    """Write-behind for what Loops accepts: writes land within ``WRITE_BEHIND_SECONDS``, in few transactions.

    The sending threads only enqueue; one thread writes. So a kill -9 loses at most the last half second of
    accepted work (the next run re-sends it: a 409 for events inside Loops' 24 hours, a repeat for contacts).
    """

    def __init__(self, ledger: Ledger, team: str, interval: float = WRITE_BEHIND_SECONDS) -> None:
        self.ledger, self.team, self.interval = ledger, team, interval
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def contacts(self, rows: Sequence[ContactRow]) -> None:
        self._put("contacts", list(rows))

    def events(self, keys: Sequence[str]) -> None:
        self._put("events", list(keys))

    def forget(self, identities: Sequence[str], emails: Sequence[str]) -> None:
        self._put("forget", (list(identities), list(emails)))

    def members(self, rows: Sequence[MemberRow]) -> None:
        self._put("members", list(rows))

    def left(self, rows: Sequence[tuple[int, bytes]]) -> None:
        self._put("left", list(rows))

    def sync(self) -> None:
        """Write everything enqueued so far now (a checkpoint waits for it: it must not idle out the interval) and
        block until it is written; raise the writer's error if it failed."""
        with self._idle:
            while self._pending and self._error is None:
                self._queue.put(_WRITE_NOW)  # again each round: a write enqueued behind the last one is waited for too
                self._idle.wait(0.1)
        if self._error is not None:
            raise LedgerError(f"the ledger could not be written: {_first_line(self._error)}")

    def close(self) -> None:
        self.sync()
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _put(self, kind: str, payload: Any) -> None:
        if not payload or (kind == "forget" and not any(payload)):
            return
        with self._idle:
            self._pending += 1
        self._queue.put((kind, payload))

    def _run(self) -> None:
        writers: dict[str, Callable[[Any], None]] = {
            "contacts": lambda rows: self.ledger.record_contacts(self.team, rows),
            "events": lambda keys: self.ledger.record_events(self.team, keys),
            "forget": lambda pair: self.ledger.forget_contacts(self.team, *pair),
            "members": self.ledger.record_members,
            "left": self.ledger.forget_members,
        }
        while True:
            item = self._queue.get()
            if item is None:
                return
            if item is _WRITE_NOW:
                continue  # what it asked for is already written
            batch = [item]
            deadline = time.monotonic() + self.interval
            while True:  # gather what arrives within the interval into one write per kind
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                if more is _WRITE_NOW:
                    break
                batch.append(more)
            try:
                self._write(batch, writers)
            except BaseException as exc:  # surfaced by sync(): the run must not checkpoint over a lost write
                self._error = exc
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()

    @staticmethod
    def _write(batch: list[tuple[str, Any]], writers: dict[str, Callable[[Any], None]]) -> None:
        # Audience members are other tables than contacts and events: their writes keep their own order apart, so
        # that a contact and its membership, accepted together, do not cost a transaction each.
        audience = [item for item in batch if item[0] in _AUDIENCE_KINDS]
        if audience:
            batch = [item for item in batch if item[0] not in _AUDIENCE_KINDS]
            LedgerWriter._write_runs(audience, writers)
        LedgerWriter._write_runs(batch, writers)

    @staticmethod
    def _write_runs(batch: list[tuple[str, Any]], writers: dict[str, Callable[[Any], None]]) -> None:
        # Order matters between kinds (a delete after an upsert of the same contact): consecutive writes of one
        # kind are merged into one transaction, never reordered.
        run_kind: str | None = None
        run_items: list[Any] = []
        for kind, payload in batch:
            if kind != run_kind and run_items and run_kind is not None:
                _flush(writers[run_kind], run_kind, run_items)
                run_items = []
            run_kind = kind
            if kind == "forget":
                writers["forget"](payload)
            else:
                run_items.extend(payload)
        if run_items and run_kind is not None:
            _flush(writers[run_kind], run_kind, run_items)


def _flush(writer: Callable[[Any], None], kind: str, items: list[Any]) -> None:
    if kind == "contacts":
        latest: dict[str, ContactRow] = {}
        for row in items:  # the last write of a contact wins within one transaction
            latest[row.identity] = row
        writer(list(latest.values()))
    else:
        writer(items)


def _team_dict(row: Any) -> dict[str, Any]:
    return {
        "team": row["team"],
        "base_url": row["base_url"],
        "team_name": row["team_name"],
        "key_hashes": json.loads(row["key_hashes"] or "[]"),
        "list_hashes": json.loads(row["list_hashes"] or "[]"),
    }


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers and the writer work at once; NORMAL sync is durable across process crashes in WAL mode."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
