"""The target's settings: one frozen object, built once from the config, and the settings schema derived from it.

Every setting is declared once, as a field of :class:`Settings`: its default, its JSON type with the range it accepts,
and its description. ``SETTINGS`` (what the SDK validates and ``--about`` shows) is generated from those fields, so the
schema's defaults and the object's defaults cannot disagree, and a range check lives in the schema (``minimum``,
``maximum``, ``enum``) where ``--about`` and Meltano see it.

:func:`load_settings` turns a config into a ``Settings`` and lists every problem the schema cannot express (an
unknown key with the nearest valid name, ``api_key`` missing or not a key, an unsafe ``base_url``, an output file that
cannot be written): all at once, so a user fixes a config in one go. Nothing here reads input or sends a request.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from singer_sdk import typing as th
from sqlalchemy.engine import make_url

from target_loops.client import ApiKeyError, BaseUrlError, ClientSettings, check_base_url, clean_api_key
from target_loops.ledger import default_ledger_path, describe_url, normalize_url

DEFAULT_BASE_URL = "https://app.loops.so/api"

#: Events older than this many hours cannot be asked for: "now - age" must stay a representable date (year 1 is
#: Python's floor; 100000000 hours crashed with OverflowError), and no Loops workflow predates Loops by a century.
MAX_EVENT_AGE_HOURS = 876_000  # 100 years

#: The settings Meltano's extras use: keys with this prefix (``_dialect``, ``_vars``...) are Meltano's own and never
#: reach a plugin's config file (Meltano writes ``extras=False``); in a config they are a mistake like any other.
MELTANO_EXTRA_PREFIX = "_"


def _setting(default: Any, kind: th.JSONTypeHelper[Any], description: str, *, secret: bool = False) -> Any:
    """A ``Settings`` field that carries its schema: JSON type (with range or allowed values), description, secrecy."""
    return field(
        default=default, repr=not secret, metadata={"kind": kind, "description": description, "secret": secret}
    )


def _sdk_setting(default: Any) -> Any:
    """A ``Settings`` field for an SDK setting the target reads too: its schema is the SDK's own, not ours."""
    return field(default=default, metadata={"sdk": True})


@dataclass(frozen=True)
class Settings:
    """What the config says, checked and with every default applied; never changed after the run starts."""

    api_key: str | None = _setting(
        None,
        th.StringType(),
        "Loops API key (Loops → Settings → API), sent as a Bearer token and never logged. Surrounding whitespace "
        "(a .env file's newline) is stripped; a key with inner whitespace or non-ASCII characters is refused. "
        "Required unless dry_run is true.",
        secret=True,
    )
    base_url: str = _setting(
        DEFAULT_BASE_URL,
        th.StringType(),
        "API root. Point it at the sandbox (http://127.0.0.1:8787/api) to rehearse a sync. Plain http:// is refused "
        "for any host that is not loopback, as are user-info (user:password@) and backslashes.",
    )
    requests_per_second: int = _setting(
        10,
        th.IntegerType(minimum=1, maximum=100_000),
        "Ceiling for all requests of the run, shared by every stream (Loops allows 10/s per team).",
    )
    max_concurrency: int = _setting(
        32,
        th.IntegerType(minimum=1, maximum=256),
        "The most requests in flight at once. The level in use follows Loops' answer time (requests/s times answer "
        "time, plus headroom), so the rate limit stays full at any latency; this is its ceiling.",
    )
    timeout_seconds: int = _setting(
        30,
        th.IntegerType(minimum=1, maximum=3600),
        "Deadline of each request attempt, in seconds: connecting, sending and the whole answer (headers and body). "
        "An attempt without a complete answer by then (a server that stalls or trickles) is cut and retried as a "
        "transient failure; a stopping run waits at most this long for requests in flight.",
    )
    max_retries: int = _setting(
        8,
        th.IntegerType(minimum=0, maximum=100),
        "Retries of a transient failure (5xx, timeout, connection error) before the run fails; waits after a 429 do "
        "not use this budget.",
    )
    retry_backoff_seconds: float = _setting(
        1.0,
        th.NumberType(minimum=0, maximum=60),
        "First backoff step of a retry; it doubles each retry (with jitter), up to 60 s.",
    )
    mappings: tuple[dict[str, Any], ...] | None = _setting(
        None,
        th.ArrayType(th.ObjectType(additional_properties=True)),
        "Stream-to-action rules, first match wins: {stream (name or glob), action (upsert_contact, send_event, "
        "delete_contact, segment: raw Segment calls routed by their type, skip: read and count only), field "
        "specs...}. See the README's rule reference.",
    )
    default_mappings: bool = _setting(
        True,
        th.BooleanType(),
        "Append the built-in Segment rules (identifies, identify, users, tracks, track) after the rules in mappings.",
    )
    unmapped_streams: str = _setting(
        "error",
        th.StringType(allowed_values=["error", "skip"]),
        "What a stream that no rule matches gets: error (stop before any write, naming the stream and a rule to "
        "add) or skip (read and count its records, send nothing).",
    )
    rejects_path: str = _setting(
        "loops_rejects.jsonl",
        th.StringType(),
        "JSONL file (appended to) with one line per rejected record: run id, time, stream, record, the request "
        "attempted, HTTP status, Loops' message and the reason. A dry run never writes it.",
    )
    ledger_url: str = _setting(
        None,
        th.StringType(),
        "SQLAlchemy URL of the sync ledger (what Loops has accepted). Default: a SQLite file that does not depend on "
        "the working directory: the Meltano project's .meltano/target-loops/ledger.sqlite when run by Meltano, else "
        "the user's data folder (~/.local/share/target-loops/ledger.sqlite on Linux). A PostgreSQL URL "
        "(postgresql+psycopg://…, extra 'postgres') for runners without a persistent disk.",
        secret=True,  # a PostgreSQL URL may hold a password
    )
    ledger_namespace: str | None = _setting(
        None,
        th.StringType(),
        "The ledger's name for the Loops team of api_key. Leave it out: target-loops tells teams apart by key and, "
        "for a new key, by the team's mailing list ids (unique across Loops). Set it when the run asks (a new key of "
        "a team it cannot verify), or to keep two ledgers apart on purpose. A name new to the ledger, set where this "
        "key's ledger is already in use, becomes a second name of that ledger (nothing is sent again).",
    )
    fold_updates: bool = _setting(
        True,
        th.BooleanType(),
        "Send a contact's pending update inside its next event's request (Loops' events/send takes contact "
        "properties): one request instead of two. Never folds subscribed; falls back to a separate update when the "
        "event is refused or was already delivered.",
    )
    skip_unchanged: bool = _setting(
        True, th.BooleanType(), "Skip contact upserts whose payload fingerprint matches the last one Loops accepted."
    )
    full_resync: bool = _setting(
        False,
        th.BooleanType(),
        "Ignore contact fingerprints for this run (new ones are still recorded); delivered events are never re-sent.",
    )
    checkpoint_seconds: int = _setting(
        60,
        th.IntegerType(minimum=0, maximum=86_400),
        "At most this long between emitted STATE messages while input flows (the SDK alone waits 5 minutes). Each "
        "checkpoint sends everything buffered first; 0 checkpoints at every STATE.",
    )
    max_event_age_hours: int | None = _setting(
        None,
        th.IntegerType(minimum=1, maximum=MAX_EVENT_AGE_HOURS),
        "Events whose timestamp is older are rejected with reason 'stale' instead of firing Loops workflows late "
        "(first backfills, catch-up after an outage).",
    )
    coalesce_rows: int = _setting(
        20_000,
        th.IntegerType(minimum=1, maximum=10_000_000),
        "Upserts and events are held across batches until a checkpoint or this many held records per stream, then "
        "sent contacts first: a contact spread over many batches gets one request.",
    )
    unknown_properties: str = _setting(
        "create",
        th.StringType(allowed_values=["create", "drop", "error"]),
        "A contact property the rules produce that the Loops team lacks: create it (type from the SCHEMA), drop it "
        "from every request (counted in the report), or error (stop before any write, listing them).",
    )
    max_new_properties: int = _setting(
        25,
        th.IntegerType(minimum=0, maximum=1_000),
        "With unknown_properties: create, the most contact properties a run creates (Loops has no API to delete "
        "one). Properties a SCHEMA declares past it stop the run before any write, listing them; a record whose "
        "data would pass it is rejected (unknown_property) and the run goes on.",
    )
    unknown_event_properties: str = _setting(
        "warn",
        th.StringType(allowed_values=["warn", "drop", "error"]),
        "An event property the data sends that its event's definition in Loops lacks (GET "
        "/v1/event-patterns/by-name, read once per event name): warn (send it, name it in the log, plan and report), "
        "drop (leave it out of the event, counted in the report) or error (reject the record: "
        "unknown_event_property). Applies only when Loops answered with a definition.",
    )
    report_path: str | None = _setting(
        None,
        th.StringType(),
        "Write the run report (per stream and action: read, sent, unchanged, duplicates, rejected with reasons, "
        "created properties, elapsed, requests/s; the rejects file) as JSON to this file. A report left by an earlier "
        "run is removed at start; a run that stops early writes one with completed: false.",
    )
    report_html_path: str | None = _setting(
        None,
        th.StringType(),
        "Write the run report as one self-contained HTML page to this file (every run, dry or real, completed or "
        "stopped): the outcome, the per-stream table, requests per second with 429s and retries, answer times, "
        "rejections by reason with samples, event properties to add in Loops. No script, nothing fetched.",
    )
    progress_seconds: int = _setting(
        10,
        th.IntegerType(minimum=1, maximum=86_400),
        "At most this long between progress lines while sending (requests done/planned, rate, 429s, retries, "
        "rejects, ETA).",
    )
    max_rejects: int | None = _setting(
        None,
        th.IntegerType(minimum=0),
        "Exit non-zero when more records than this were rejected in the run (after everything else was delivered "
        "and checkpointed).",
    )
    max_leave_fraction: float = _setting(
        0.25,
        th.NumberType(minimum=0, maximum=1),
        "Audiences (rules with on_leave): when more than this fraction of an audience's members would leave in one "
        "closing, no leave is sent for that audience, the run says so in one line and exits non-zero after "
        "delivering everything else (a table truncated by a failed dbt run must never empty a list). 1 turns the "
        "guard off.",
    )
    leave_guard_min_members: int = _setting(
        5,
        th.IntegerType(minimum=0, maximum=1_000_000),
        "Audiences with fewer members than this are never stopped by max_leave_fraction (one person leaving a "
        "3-person audience is a third of it).",
    )
    dry_run: bool = _setting(
        False,
        th.BooleanType(),
        "Run the whole pipeline and print a plan (requests per stream, unchanged, rejects, properties to create, "
        "estimated duration); send nothing. No API key needed; with one, the preflight runs read-only.",
    )
    dry_run_path: str | None = _setting(
        None,
        th.StringType(),
        "With dry_run: a JSONL file that gets one line per planned request (method, path, body, idempotency key). "
        "The records a real run would reject go beside it, to <name>.would_reject.jsonl (each line marked "
        '"would_reject": true); the rejects file is left alone.',
    )
    new_contacts: str = _setting(
        "create",
        th.StringType(allowed_values=["create", "skip", "csv"]),
        'A person the ledger does not know, whom Loops may not have yet. Loops starts the team\'s "Contact added" '
        "loops for every contact created through the API (a CSV upload starts none). create: send as usual (Loops "
        "creates whom it lacks). skip: look the person up once (contacts/find) and update only people Loops has; "
        "the others' records and events go to the rejects file (not_in_loops). csv: write them to new_contacts_path "
        "for Loops' CSV upload instead of the API, their events to the rejects file (pending_import).",
    )
    new_contacts_path: str | None = _setting(
        None,
        th.StringType(),
        "With new_contacts: csv, the CSV file for Loops' upload (Audience → Import): one row per new person, columns "
        "named by Loops' keys. Written to a temporary file and moved into place at the end of the run; an existing "
        "file is never overwritten (the run writes <name>.<UTC time>.csv beside it and says so).",
    )
    # --- SDK settings the target reads as well (validated by the SDK's own schema)
    add_record_metadata: bool = _sdk_setting(False)

    def client_settings(self) -> ClientSettings:
        """What the HTTP client needs (only when there is a key: a dry run without one has no client)."""
        assert self.api_key is not None, "a client needs the API key"
        return ClientSettings(
            base_url=self.base_url,
            api_key=self.api_key,
            requests_per_second=float(self.requests_per_second),
            max_concurrency=self.max_concurrency,
            timeout_seconds=float(self.timeout_seconds),
            max_retries=self.max_retries,
            backoff_seconds=self.retry_backoff_seconds,
        )

    @property
    def would_reject_path(self) -> str | None:
        """A dry run's would-be rejects: a file named after the plan (``plan.jsonl`` → ``plan.would_reject.jsonl``),
        so the plan stays one request per line and the real rejects file is left alone."""
        if self.dry_run_path is None:
            return None
        path = Path(self.dry_run_path)
        return str(path.with_name(f"{path.stem}.would_reject{path.suffix or '.jsonl'}"))

    def output_paths(self) -> dict[str, str]:
        """The files the run may write, by setting (the SQLite ledger apart), for the start-of-run check."""
        paths = {"rejects_path": self.rejects_path}
        if self.report_path is not None:
            paths["report_path"] = self.report_path
        if self.report_html_path is not None:
            paths["report_html_path"] = self.report_html_path
        if self.dry_run_path is not None:
            paths["dry_run_path"] = self.dry_run_path
            paths["dry_run_path (its would_reject file)"] = str(self.would_reject_path)
        if self.new_contacts == "csv" and self.new_contacts_path is not None:
            paths["new_contacts_path"] = self.new_contacts_path
        return paths


#: The target's own settings, in declaration order (the SDK's own are merged in by the SDK).
OWN_FIELDS = tuple(f for f in dataclasses.fields(Settings) if not f.metadata.get("sdk"))
_BY_NAME = {f.name: f for f in dataclasses.fields(Settings)}


def _described(f: dataclasses.Field[Any]) -> str:
    """The description, with the accepted range appended, so ``--about --format=markdown`` (which shows only
    descriptions and defaults) states it too."""
    kind = f.metadata["kind"]
    text: str = f.metadata["description"]
    low, high = getattr(kind, "minimum", None), getattr(kind, "maximum", None)
    if low is not None and high is not None:
        return f"{text} From {low:,} to {high:,}."
    if low is not None:
        return f"{text} At least {low:,}."
    return text


def _default_for_schema(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


SETTINGS = th.PropertiesList(
    *(
        th.Property(
            f.name,
            f.metadata["kind"],
            default=_default_for_schema(f.default),
            description=_described(f),
            secret=f.metadata["secret"] or None,
        )
        for f in OWN_FIELDS
    )
)


# --- building one from a config


def _coerce(name: str, value: Any) -> tuple[bool, Any]:
    """``(True, value)`` in the field's Python type, or ``(False, None)`` when the value has the wrong JSON type
    (the schema validation reports that one, so it is not reported twice)."""
    kind = _BY_NAME[name].metadata.get("kind")
    if value is None:
        return True, None
    if isinstance(kind, th.BooleanType) or (kind is None and isinstance(_BY_NAME[name].default, bool)):
        return (True, value) if isinstance(value, bool) else (False, None)
    if isinstance(kind, th.IntegerType):
        if isinstance(value, bool) or not isinstance(value, (int, Decimal, float)) or value != int(value):
            return False, None
        return True, int(value)
    if isinstance(kind, th.NumberType):
        if isinstance(value, bool) or not isinstance(value, (int, Decimal, float)):
            return False, None
        return True, float(value)
    if isinstance(kind, th.StringType):
        return (True, value) if isinstance(value, str) else (False, None)
    if isinstance(kind, th.ArrayType):
        return (True, tuple(value)) if isinstance(value, list) else (False, None)
    return True, value


def numbers_from_text(config: dict[str, Any]) -> None:
    """A number setting given as the text of a number (``"2"``, ``"0.5"``) becomes that number, in place.

    Meltano passes an environment variable (``TARGET_LOOPS_RETRY_BACKOFF_SECONDS=2``) of a setting declared without
    a ``kind`` as its text, and its ``decimal`` kind cannot be used at all (its ``Decimal`` is not JSON
    serializable), so ``meltano.yml`` declares number settings without one.
    """
    for name, f in _BY_NAME.items():
        value = config.get(name)
        if isinstance(f.metadata.get("kind"), th.NumberType) and isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                continue  # the schema validation names the setting and the type
            if math.isfinite(number):
                config[name] = number


def unknown_settings(
    config: Mapping[str, Any], accepted: Collection[str], *, program: str = "target-loops"
) -> list[str]:
    """One problem per key the target (or ``program``, the tap) does not know, with the nearest valid name:
    ``"dryrun"`` would otherwise be ignored and the run would write for real."""
    by_lower = {name.lower(): name for name in accepted}
    problems = []
    for key in config:
        if key in accepted:
            continue
        guess = difflib.get_close_matches(str(key).lower(), list(by_lower), n=1, cutoff=0.6)
        if str(key).lower() in by_lower:
            guess = [str(key).lower()]
        if guess:
            problems.append(f'unknown setting "{key}": did you mean "{by_lower[guess[0]]}"?')
        elif str(key).startswith(MELTANO_EXTRA_PREFIX):
            problems.append(
                f'unknown setting "{key}": {program} takes no "_" settings (Meltano keeps its "_" extras to '
                "itself); remove it"
            )
        else:
            problems.append(
                f'unknown setting "{key}": not a {program} or Singer SDK setting (`{program} --about` lists '
                "them all); remove it"
            )
    return problems


def load_settings(config: Mapping[str, Any], accepted: Collection[str]) -> tuple[Settings, list[str]]:
    """The config as a ``Settings`` (defaults applied), and every problem found: unknown keys, ``api_key``,
    ``base_url``, and the files the run would write. A value of the wrong type keeps its default here (the schema
    validation reports it)."""
    problems = unknown_settings(config, accepted)
    values: dict[str, Any] = {}
    for name in _BY_NAME:
        if name not in config:
            continue
        ok, value = _coerce(name, config[name])
        if ok and value is not None:
            values[name] = value
    dry_run = bool(values.get("dry_run", False))
    raw_key = values.pop("api_key", None)
    if raw_key is not None and raw_key.strip():
        try:
            values["api_key"] = clean_api_key(raw_key)
        except ApiKeyError as exc:
            problems.append(str(exc))
    elif not dry_run and isinstance(config.get("api_key"), (str, type(None))):  # another type: the schema says so
        problems.append(_KEY_REQUIRED)
    try:
        values["base_url"] = check_base_url(values.get("base_url", DEFAULT_BASE_URL))
    except BaseUrlError as exc:
        problems.append(str(exc))
    if "ledger_url" not in values:
        path, _why = default_ledger_path()
        values["ledger_url"] = f"sqlite:///{path}"
    settings = Settings(**values)
    if settings.new_contacts == "csv" and settings.new_contacts_path is None:
        problems.append(
            "new_contacts: csv needs new_contacts_path, the CSV file to write for Loops' upload "
            '(e.g. "new_contacts.csv")'
        )
    problems += check_paths(settings)
    return settings, problems


#: Settings whose values are never shown: the key, and the ledger URL (a PostgreSQL URL may hold a password).
SECRET_SETTINGS = frozenset(f.name for f in OWN_FIELDS if f.metadata.get("secret"))
#: Where the SDK's schema messages name the setting they are about: ``... in config['api_key'][0]``.
_ABOUT_SETTING = re.compile(r"in config\['([^']*)'\]")


def without_secrets(problems: Iterable[str], config: Mapping[str, Any]) -> list[str]:
    """The problems as they may be shown: none holds a secret setting's value, whatever its type.

    The SDK's schema messages echo the value they refuse (``['sk_live_…'] is not of type 'string', 'null' in
    config['api_key']``), so a key pasted into a list would be printed. A message about a secret setting is
    replaced by one naming the setting and the JSON type it was given; in any other message, every piece of a
    secret (a string or number inside it) is masked.
    """
    pieces = sorted(
        {piece for name in SECRET_SETTINGS if config.get(name) is not None for piece in _pieces(config[name])},
        key=len,
        reverse=True,
    )
    shown = []
    for problem in problems:
        about = _ABOUT_SETTING.search(problem)
        if about is not None and about.group(1) in SECRET_SETTINGS:
            name = about.group(1)
            problem = f"{name} must be a string, not {_json_kind(config.get(name))} (its value is not shown)"
        for piece in pieces:
            problem = problem.replace(piece, "***")
        shown.append(problem)
    return shown


def _pieces(value: Any) -> set[str]:
    """The texts inside a secret's value (strings, keys, numbers as written), of four characters or more."""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif item is not None and not isinstance(item, bool):
            found.add(str(item))
    return {text for text in found if len(text) >= 4}


def _json_kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    return "a string"


_KEY_REQUIRED = (
    "api_key is required: put it in the config file, or run with --config=ENV and TARGET_LOOPS_API_KEY set in "
    "the environment (Meltano: meltano config set target-loops api_key ...); or set dry_run: true to plan "
    "without sending"
)


# --- the files a run writes


def check_output_file(setting: str, value: str) -> str | None:
    """Why the run could not write ``value`` (named by ``setting``), or None. Nothing is created: the run itself
    creates the file and its folder later, and a failed check leaves no trace."""
    if not value.strip():
        return f"{setting} is empty; name a file"
    path = Path(value).expanduser()
    if path.is_dir():
        return f"{setting} {value!r} is a folder; name a file in it"
    if path.exists():
        try:
            with path.open("a", encoding="utf-8"):
                pass  # opening for append changes nothing (not even the modification time)
        except OSError as exc:
            return f"{setting} {value!r} cannot be written: {exc.strerror}"
        return None
    folder = path.absolute().parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{setting} {value!r} cannot be created: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{setting} {value!r} cannot be created: {existing} is not writable"
    return None


def sqlite_ledger_path(url: str) -> str | None:
    """The file of a SQLite ledger URL, or None (another database, in memory, or not a URL: the ledger says)."""
    try:
        parsed = make_url(normalize_url(url))
    except Exception:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return str(parsed.database)


def check_paths(settings: Settings) -> list[str]:
    """Every file the run writes, checked before anything is read or sent: a file (not a folder), writable or
    creatable, and no two settings naming the same file. A dry run checks the same files (it writes none but the
    plan): the rehearsal should catch what would stop the real run."""
    problems = []
    paths = settings.output_paths()
    ledger_file = sqlite_ledger_path(settings.ledger_url)
    if ledger_file is None:
        try:
            make_url(normalize_url(settings.ledger_url))
        except Exception as exc:
            problems.append(
                f"ledger_url {describe_url(settings.ledger_url)!r} is not a database URL ({type(exc).__name__}); "
                "use sqlite:////absolute/path/ledger.sqlite or postgresql://user:pass@host/db"
            )
    else:
        paths["ledger_url"] = ledger_file
    seen: dict[Path, str] = {}
    for setting, value in paths.items():
        problem = check_output_file(setting, value)
        if problem is not None:
            problems.append(problem)
            continue
        resolved = Path(value).expanduser().resolve()
        if resolved in seen:
            problems.append(f"{setting} and {seen[resolved]} name the same file {value!r}; give each its own")
        seen[resolved] = setting
    return problems


# --- the config file itself


def config_file_problem(path: str) -> str | None:
    """Why ``--config path`` cannot be read as settings (missing, a folder, not UTF-8, not JSON with the line and
    column, not an object), or None. Checked before the SDK reads it, whose errors are tracebacks."""
    file = Path(path)
    if not file.exists():
        return f"config file {path!r} was not found"
    if file.is_dir():
        return f"config file {path!r} is a folder, not a JSON file"
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return f"config file {path!r} is not UTF-8 text (byte {exc.start + 1})"
    except OSError as exc:
        return f"config file {path!r} cannot be read: {exc.strerror}"
    try:
        value = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        return f"config file {path!r} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    except RecursionError:
        return f"config file {path!r} nests too deep to read"
    if not isinstance(value, dict):
        return f"config file {path!r} must hold a JSON object of settings, not {type(value).__name__}"
    return None
