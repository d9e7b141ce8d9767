"""New contacts: what a run does with a person Loops may not have yet (the ``new_contacts`` setting).

Loops starts the team's "Contact added" loops for every contact created through the API, and none for a contact
added by a CSV upload in its web app (https://loops.so/docs/loop-builder/loop-triggers,
https://loops.so/docs/add-users/csv-upload). A first import through the API can therefore email every person a
welcome, and takes a day of requests at 10/s. Whether a person is new is a ledger question first (known, exported to a
CSV, unknown), then, where the policy needs it, one ``GET /v1/contacts/find``
(https://loops.so/docs/api-reference/find-contact):

- ``create``: today's path; the people unknown to the ledger are counted, and the run says what creating them starts.
- ``skip``: an unknown person is looked up once (found people are cached in the ledger); a person Loops lacks is held
  back: their records and events go to the rejects file (``not_in_loops``), to replay once they exist.
- ``csv``: an unknown person becomes one row of a CSV for Loops' upload (their merged latest values, columns named by
  Loops' keys); their events, and what a CSV cannot carry (mailing lists), go to the rejects file
  (``pending_import``). The CSV is written to a temporary file and moved into place at the end of the run, and only
  then does the ledger remember the people as exported; the run holds its STATE back until then.

A later run that meets exported people checks a sample of them with ``contacts/find``: found, the upload is done and
they count as delivered (only later changes are sent); none found, it says "upload <path> in Loops first" and sends
nothing for them (their records go to the rejects file, ``pending_import``), and the run exits with status 3.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import datetime as dt
import json
import logging
import os
import tempfile
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from target_loops.client import LoopsUnavailableError
from target_loops.ledger import ContactRow, ContactState, Ledger, LedgerWriter, fingerprint, keyed_hash, value_hashes
from target_loops.operations import Action

logger = logging.getLogger("target_loops.newcontacts")

POLICIES = ("create", "skip", "csv")
NOT_IN_LOOPS = "not_in_loops"
PENDING_IMPORT = "pending_import"
#: Exported people looked up to tell whether their CSV was uploaded.
SAMPLE = 20
#: The columns Loops' CSV upload maps at once, first and in this order (https://loops.so/docs/add-users/csv-upload);
#: custom properties follow by their Loops key, sorted.
FIRST_COLUMNS = ("email", "firstName", "lastName", "userId", "userGroup", "source", "subscribed")
#: The exit status of a run that held people back because their CSV is not uploaded yet.
UPLOAD_PENDING_EXIT = 3
#: What a "Contact added" loop is, for the warnings (https://loops.so/docs/loop-builder/loop-triggers).
CONTACT_ADDED = 'starts the team\'s "Contact added" loops'
_FIND = "/v1/contacts/find"
_NOT_FOUND = (
    "Loops has no contact with this person's userId or email, and new_contacts: skip creates nobody; replay this line "
    "once the contact exists (or with new_contacts: create)"
)
_AFTER_UPLOAD = "replay this line after the upload (or leave it out with max_event_age_hours)"


class UploadPending(RuntimeError):
    """People exported to a CSV are not in Loops yet: nothing was sent for them (exit status 3)."""

    exit_code = UPLOAD_PENDING_EXIT


class Member(Protocol):
    """A held operation (``outbox.Held``): the operation, its stream and its record time."""

    op: Any
    stream: str
    at: str | None
    clamped: bool


class PersonLike(Protocol):
    """A person of a flush (``outbox.Person``)."""

    key: str
    identity: str
    members: list[Any]
    known: ContactState | None


class Finder(Protocol):
    def __call__(self, path: str) -> Any: ...


class NewContacts:
    """The run's new-contact policy; ``screen`` is called by the outbox's planning, once per flush, on one thread."""

    def __init__(
        self,
        policy: str,
        *,
        path: str | None = None,
        finder: Finder | None = None,
        dry_run: bool = False,
        run_started: dt.datetime | None = None,
        workers: int = 8,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"new_contacts must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.policy = policy
        self.path = path
        #: ``GET`` through the run's client (answers the JSON), or None in a dry run without a key.
        self.finder = finder
        self.dry_run = dry_run
        self.run_started = run_started or dt.datetime.now(dt.timezone.utc)
        self.workers = workers
        #: People unknown to the ledger met this run (identity hashes): the figure the warnings give.
        self.unknown: set[str] = set()
        self.looked_up = 0
        self.found = 0
        self.not_found: set[str] = set()
        self.held: collections.Counter[str] = collections.Counter()  # reason → records held back
        #: csv: per identity, (email hash, latest record time, the merged values as compact JSON): kept as text,
        #: since a first import holds hundreds of thousands of people until the end of the run.
        self.rows: dict[str, tuple[str | None, str | None, str]] = {}
        self.columns: set[str] = set()
        self.written_path: str | None = None
        self.written_rows = 0
        #: Exported earlier: None until a sample was checked, then whether their CSV was uploaded.
        self.uploaded: bool | None = None
        self.pending_paths: collections.Counter[str] = collections.Counter()  # path → people held back
        self.confirmed = 0
        self._lookups: dict[str, bool] = {}
        self._missing: set[str] = set()  # exported people of the sample that Loops does not have
        self._warned = False
        self._lock = threading.Lock()

    # --- planning

    def screen(self, outbox: Any, people: list[Any]) -> list[Any]:
        """The people whose requests may be planned; the others are held back (rejects file) or exported (csv).

        ``outbox`` gives the ledger, the team, the ledger writer and ``hold`` (a record to the rejects file, counted on
        its stream) and ``count`` (a planning counter).
        """
        ledger: Ledger | None = outbox.ledger
        team: str = outbox.team
        candidates = [p for p in people if _creates(p) and not _exists(p.known)]
        if not candidates:
            return people
        kept = {id(p) for p in people}
        exported = ledger.exported(team, [p.identity for p in candidates]) if ledger is not None else {}
        if exported:
            earlier = [p for p in candidates if p.identity in exported]
            candidates = self._screen_exported(outbox, earlier, exported, candidates, kept)
        new = [p for p in candidates if id(p) in kept and not _exists(p.known)]
        fresh = [p for p in new if p.identity not in self.unknown]
        self.unknown.update(p.identity for p in new)
        if fresh and self.policy == "create" and not self._warned:
            self._warned = True
            logger.warning(
                "%d people of this batch are unknown to the ledger: each one Loops does not have yet will be created "
                "through the API, which %s (new_contacts: create; set new_contacts: skip or csv to avoid it)",
                len(fresh),
                CONTACT_ADDED,
            )
        if self.policy == "skip":
            self._screen_skip(outbox, new, kept)
        elif self.policy == "csv":
            for person in new:
                self._export(outbox, person)
                kept.discard(id(person))
        return [p for p in people if id(p) in kept]

    def _screen_exported(
        self, outbox: Any, exported: list[Any], paths: dict[str, str], candidates: list[Any], kept: set[int]
    ) -> list[Any]:
        """People written to a CSV earlier: check a sample once per run, then treat them all as uploaded or not."""
        ledger: Ledger = outbox.ledger
        if self.uploaded is None:
            sample = exported[:SAMPLE]
            found = self._find_all(sample)
            if self.finder is None:
                self.uploaded = False
                logger.warning(
                    "%d people were exported to a CSV earlier and cannot be checked without an api_key; they are "
                    "counted as not uploaded yet",
                    len(exported),
                )
            elif any(found.values()):
                self.uploaded = True
                missing = [p.identity for p in sample if not found[p.identity]]
                self._missing.update(missing)
                self.confirmed = ledger.confirm_exports(outbox.team, missing)
                logger.info(
                    "%d of %d people looked up from %s are in Loops: the upload is done; %d exported people now count "
                    "as delivered (only later changes are sent)%s",
                    sum(found.values()),
                    len(sample),
                    paths[sample[0].identity],
                    self.confirmed,
                    f"; {len(missing)} not found are new again" if missing else "",
                )
            else:
                self.uploaded = False
                logger.error(
                    "upload %s in Loops first: none of %d people exported to it was found in Loops; nothing is sent "
                    "for them (rejects file: %s)",
                    paths[sample[0].identity],
                    len(sample),
                    PENDING_IMPORT,
                )
        if self.uploaded:
            states = outbox.ledger.contact_states(outbox.team, [p.identity for p in exported])
            for person in exported:
                if person.identity in self._missing:
                    continue  # looked up and not found: new again, for the policy to decide
                # A dry run's ledger is read only: there the uploaded values are not known, only that Loops has them.
                person.known = states.get(person.identity) or ContactState("{}", None, "")
            return candidates
        for person in exported:
            path = paths[person.identity]
            self.pending_paths[path] += 1
            for h in person.members:
                message = f"upload {path} in Loops first: this person was exported to it and is not in Loops yet"
                self._hold(outbox, h, PENDING_IMPORT, f"{message}; replay this line after the upload")
            kept.discard(id(person))
        return [p for p in candidates if id(p) in kept]

    def _screen_skip(self, outbox: Any, new: list[Any], kept: set[int]) -> None:
        """``skip``: look each unknown person up (once per run); hold back whom Loops does not have."""
        if self.finder is None:
            return  # a dry run without a key: planned as if Loops had them (the plan says how many were not checked)
        found = self._find_all([p for p in new if p.identity not in self._lookups])
        self._lookups.update(found)
        writer: LedgerWriter | None = outbox.writer
        rows = []
        for person in new:
            if self._lookups.get(person.identity):
                person.known = ContactState("{}", None, "")  # Loops has them; the ledger knows no value yet
                rows.append(ContactRow(person.identity, _email_hash(outbox.team, person), {}, None, ""))
                continue
            self.not_found.add(person.identity)
            kept.discard(id(person))
            for h in person.members:
                self._hold(outbox, h, NOT_IN_LOOPS, _NOT_FOUND)
        if writer is not None and rows:
            writer.contacts(rows)  # the lookup, cached: found people are known from now on

    def _find_all(self, people: list[Any]) -> dict[str, bool]:
        """Per person, whether Loops has them: by userId, then by email (a contact matching either is theirs)."""
        if not people or self.finder is None:
            return {p.identity: False for p in people}
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="loops-find") as pool:
            answers = list(pool.map(self._find, people))
        return {p.identity: found for p, found in zip(people, answers, strict=True)}

    def _find(self, person: Any) -> bool:
        assert self.finder is not None
        user_id, email = _identifiers(person)
        for name, value in (("userId", user_id), ("email", email)):
            if value is None:
                continue
            answer = self.finder(f"{_FIND}?{urllib.parse.urlencode({name: value})}")
            with self._lock:
                self.looked_up += 1
            if isinstance(answer, dict):
                answer = [answer] if answer.get("id") or answer.get("email") or answer.get("userId") else []
            if not isinstance(answer, list):
                # Loops answers an array (empty when nobody matches): anything else is not an answer to trust.
                raise LoopsUnavailableError(
                    f"GET {_FIND} answered {type(answer).__name__}, not an array of contacts; nothing was sent for "
                    "the people it was asked about"
                )
            if answer:
                with self._lock:
                    self.found += 1
                return True
        return False

    def _export(self, outbox: Any, person: Any) -> None:
        """``csv``: merge the person's values into their CSV row; hold back what a CSV upload cannot carry."""
        row = self.rows.get(person.identity)
        values: dict[str, Any] = json.loads(row[2]) if row is not None else {}
        latest = row[1] if row is not None else None
        email_hash = row[0] if row is not None else None
        where = self.path or "the CSV"
        for h in person.members:
            op = h.op
            body = op.request.body
            if op.action is Action.SEND_EVENT:
                writes = {k: v for k, v in body.items() if k not in ("eventName", "eventProperties")}
                message = f"an event of a person exported to {where} for Loops' CSV upload: {_AFTER_UPLOAD}"
                self._hold(outbox, h, PENDING_IMPORT, message)
            else:
                writes = body
                if "mailingLists" in body:
                    message = f"exported to {where}, but a CSV upload cannot set mailing lists per contact"
                    self._hold(outbox, h, PENDING_IMPORT, f"{message}: replay this line after the upload to set them")
                else:
                    outbox.count(h.stream, "exported")
            for key, value in writes.items():
                if key != "mailingLists":
                    values[key] = value
            if not h.clamped and h.at is not None and (latest is None or h.at > latest):
                latest = h.at
        email = values.get("email")
        if isinstance(email, str):
            email_hash = keyed_hash(outbox.team, email.lower()) if outbox.ledger is not None else None
        self.columns.update(values)
        # A tuple of strings: the garbage collector stops tracking it, so 200,000 of them cost no collection time.
        self.rows[person.identity] = (email_hash, latest, json.dumps(values, separators=(",", ":")))

    def _hold(self, outbox: Any, h: Any, reason: str, message: str) -> None:
        self.held[reason] += 1
        outbox.hold(h, reason, message)

    # --- the end of the run

    @property
    def unwritten(self) -> bool:
        """True while people are exported in memory only: a STATE now would cover rows no file holds yet."""
        return bool(self.rows) and self.written_path is None and not self.dry_run

    def write(self, ledger: Ledger | None, team: str | None) -> str | None:
        """Write the CSV (temporary file, then moved into place; an existing file is never replaced) and remember
        the people in the ledger as exported. Returns the path written, None when there was nobody to write."""
        if not self.rows or self.dry_run or self.path is None or self.written_path is not None:
            return None
        target = Path(self.path).expanduser()
        if target.exists():
            stamp = self.run_started.strftime("%Y%m%dT%H%M%SZ")
            target = target.with_name(f"{target.stem}.{stamp}{target.suffix or '.csv'}")
            logger.warning("%s exists and is left as it is: this run's new contacts go to %s", self.path, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        columns = [c for c in FIRST_COLUMNS if c in self.columns] + sorted(self.columns - set(FIRST_COLUMNS))
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - moved into place or removed below
            "w", encoding="utf-8", newline="", dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
        )
        path = str(target.resolve())
        remember = (
            ledger.exporting(team, path) if ledger is not None and team is not None else contextlib.nullcontext(None)
        )
        try:
            # One pass: each row goes to the file and to the ledger's transaction, committed once the file is in
            # place (no file, no rows; rows without their file cannot be, since the move comes first).
            with remember as add, handle:
                out = csv.writer(handle)
                out.writerow(columns)
                for identity, (email_hash, latest, text) in self.rows.items():
                    values = json.loads(text)
                    out.writerow([_cell(values.get(c)) for c in columns])
                    if add is not None:
                        add(ContactRow(identity, email_hash, value_hashes(values), latest, fingerprint(values)))
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
                os.replace(handle.name, target)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
        self.written_path = path
        self.written_rows = len(self.rows)
        logger.warning(
            "%d new contacts written to %s: upload it in Loops (Audience → Import → Upload CSV), then run again; "
            "their events are in the rejects file (%s)",
            self.written_rows,
            self.written_path,
            PENDING_IMPORT,
        )
        return self.written_path

    # --- what the run says

    def report(self) -> dict[str, Any]:
        """The run report's ``new_contacts`` section."""
        return {
            "policy": self.policy,
            "unknown_to_ledger": len(self.unknown),
            "looked_up": self.looked_up,
            "found_in_loops": self.found,
            "not_in_loops": len(self.not_found),
            "exported": len(self.rows),
            "csv_path": self.written_path,
            "held_back": dict(sorted(self.held.items())),
            "upload_pending": dict(self.pending_paths),
            "confirmed_uploaded": self.confirmed,
        }

    def lines(self) -> list[str]:
        """The end-of-run lines: the warning about "Contact added" loops, and what was held back or exported."""
        lines = []
        unknown = len(self.unknown)
        if unknown and self.policy == "create":
            lines.append(
                f"{unknown} people unknown to the ledger: each one Loops does not have is created through the API, "
                f"which {CONTACT_ADDED} (new_contacts: create; skip or csv avoid it)"
            )
        elif unknown and self.policy == "skip":
            checked = "not looked up (no api_key)" if self.finder is None else f"{len(self.not_found)} not in Loops"
            lines.append(f"{unknown} people unknown to the ledger (new_contacts: skip): {checked}, none created")
        elif unknown and self.policy == "csv":
            where = self.written_path or ("not written (dry run)" if self.dry_run else "not written")
            lines.append(f"{len(self.rows)} new people for Loops' CSV upload (new_contacts: csv): {where}")
        for path, count in self.pending_paths.items():
            lines.append(f"upload {path} in Loops first: {count} people exported to it were held back")
        return lines


def _creates(person: Any) -> bool:
    """True when a person's records could make Loops create them (anything but deletes)."""
    return any(h.op.action is not Action.DELETE_CONTACT for h in person.members)


def _exists(known: ContactState | None) -> bool:
    return known is not None and known.fingerprint != "deleted"


def _identifiers(person: Any) -> tuple[str | None, str | None]:
    """The person's userId and latest email, as their records carry them."""
    user_id = person.key[2:] if person.key.startswith("u:") else None
    email = None
    for h in person.members:
        if h.op.email is not None:
            email = h.op.email
    return user_id, email


def _email_hash(team: str, person: Any) -> str | None:
    email = _identifiers(person)[1]
    return keyed_hash(team, email.lower()) if email else None


def _cell(value: Any) -> str:
    """A value as a CSV cell: empty for none (Loops' upload leaves the property as it is), true/false for booleans."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
