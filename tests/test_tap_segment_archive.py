"""tap-segment-archive, run as a user or Meltano runs it: the CLI in a subprocess, on real files and real servers
(so every test but the ledger's is marked ``e2e``).

- the bundled sample archive (sample_streams/segment_archive, Segment's exact layout): records per stream exact,
  each record the line Segment wrote, bad lines counted and logged with file and line;
- the same archive in S3, served by moto's S3-compatible server on 127.0.0.1 (started here, bucket created here,
  s3fs with its endpoint, dummy credentials);
- incremental runs: a new copy in an old day is read, nothing is read twice; start_date; the state stays small;
- kill -9 in the middle of a large file, then a run from the last STATE: every line exactly once, except the lines
  after that STATE (at-least-once is allowed there only); SIGTERM stops at an exact STATE;
- ``tap-segment-archive --about`` and ``--discover`` from the console script;
- ``meltano run segment-archive-sync`` (meltano.yml) into the sandbox: each identify's final traits on its
  contact, each track exactly once, a second run sends nothing.
"""

from __future__ import annotations

import collections
import fcntl
import gzip
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from runner import REPO, SAMPLES, SANDBOX_KEY

from tap_segment_archive.archive import ArchiveFile
from tap_segment_archive.ledger import Ledger

SAMPLE = SAMPLES / "segment_archive"
SOURCE = "7Xk2pQ9sRc"
DAY1, DAY2 = "1793491200000", "1793577600000"  # 2026-11-01, 2026-11-02 (UTC), epoch ms
CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")
SAMPLE_COUNTS = {"identify": 6, "track": 6, "page": 2, "screen": 2, "group": 2, "alias": 2}
MELTANO_VERSION = "4.4.1"


# --- running the tap


@dataclass
class TapRun:
    returncode: int
    stdout: bytes
    stderr: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    raw_records: list[bytes] = field(default_factory=list)  # the RECORD lines as written

    @property
    def records(self) -> list[tuple[str, dict[str, Any]]]:
        return [(m["stream"], m["record"]) for m in self.messages if m["type"] == "RECORD"]

    def by_stream(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for stream, record in self.records:
            found[stream].append(record)
        return dict(found)

    @property
    def states(self) -> list[dict[str, Any]]:
        return [m["value"] for m in self.messages if m["type"] == "STATE"]

    @property
    def bookmark(self) -> dict[str, Any]:
        return self.states[-1]["bookmarks"]["segment_archive"]


def parse(stdout: bytes) -> tuple[list[dict[str, Any]], list[bytes]]:
    messages, raw = [], []
    for line in stdout.splitlines():
        messages.append(json.loads(line))
        if line.startswith(b'{"type":"RECORD"'):
            raw.append(line)
    return messages, raw


def tap_command(config_path: Path, state_path: Path | None = None) -> list[str]:
    command = [sys.executable, "-m", "tap_segment_archive", "--config", str(config_path)]
    if state_path is not None:
        command += ["--state", str(state_path)]
    return command


def write_inputs(tmp_path: Path, config: dict[str, Any], state: dict[str, Any] | None, tag: str) -> list[str]:
    config_path = tmp_path / f"tap-config-{tag}.json"
    config_path.write_text(json.dumps(config))
    state_path = None
    if state is not None:
        state_path = tmp_path / f"tap-state-{tag}.json"
        state_path.write_text(json.dumps(state))
    return tap_command(config_path, state_path)


def run_tap(
    tmp_path: Path,
    config: dict[str, Any],
    state: dict[str, Any] | None = None,
    *,
    env: dict[str, str] | None = None,
    tag: str = "run",
) -> TapRun:
    command = write_inputs(tmp_path, config, state, tag)
    proc = subprocess.run(command, capture_output=True, timeout=120, env=env, cwd=tmp_path, check=False)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr[-4000:]
    messages, raw = parse(proc.stdout)
    return TapRun(proc.returncode, proc.stdout, stderr, messages, raw)


def sample_lines() -> list[tuple[str, int, bytes]]:
    """(file name, line number, line) of every line of the sample archive, in reading order."""
    found = []
    for path in sorted(SAMPLE.rglob("*.gz"), key=lambda p: (p.parent.name, p.name)):
        for number, line in enumerate(gzip.decompress(path.read_bytes()).splitlines(), 1):
            found.append((path.name, number, line))
    return found


def expected_sample_records() -> list[tuple[str, bytes]]:
    """(stream, the exact line) of each call of the sample: the lines that are JSON objects with a type."""
    expected = []
    for _, _, line in sample_lines():
        try:
            call = json.loads(line)
        except ValueError:
            continue
        if isinstance(call, dict) and call.get("type"):
            expected.append((call["type"], line))
    return expected


# --- the local sample


@pytest.mark.e2e  # the tap's CLI in a subprocess
def test_sample_archive_every_call_exactly_as_written(tmp_path: Path) -> None:
    run = run_tap(tmp_path, {"paths": [str(SAMPLE)]})

    counts = {stream: len(records) for stream, records in run.by_stream().items()}
    assert counts == SAMPLE_COUNTS
    # In reading order (received-day, then file name, then line), each record is the very line Segment wrote.
    expected = expected_sample_records()
    assert [(stream, json.loads(line)) for stream, line in expected] == run.records
    for (stream, line), raw in zip(expected, run.raw_records, strict=True):
        assert raw == b'{"type":"RECORD","stream":"' + stream.encode() + b'","record":' + line + b"}"

    # The duplicate copy of one call (two files, same messageId) is emitted twice: deduplicating is the target's job.
    track_ids = [r["messageId"] for r in run.by_stream()["track"]]
    assert track_ids.count("ios-1a07") == 2

    # Every stream's SCHEMA comes before its first record; traits/properties/context/integrations are open objects.
    seen_schema: set[str] = set()
    for message in run.messages:
        if message["type"] == "SCHEMA":
            seen_schema.add(message["stream"])
            assert message["key_properties"] == ["messageId"]
            props = message["schema"]["properties"]
            for key in ("traits", "properties", "context", "integrations"):
                if key in props:
                    assert "properties" not in props[key]
                    assert props[key].get("additionalProperties", True) is True
        elif message["type"] == "RECORD":
            assert message["stream"] in seen_schema
    assert seen_schema == set(CALL_TYPES)

    # The bad line and the line without a type: counted and logged with their file and line number.
    first = f"{SAMPLE / 'segment-logs' / SOURCE / DAY1 / '1793538000000.3f9a1c0e.gz'}"
    assert f"{first} line 5: not JSON" in run.stderr
    assert f"{first} line 8: no type" in run.stderr
    assert "bad lines: not JSON 1, no type 1" in run.stderr

    # The final STATE: every file finished, nothing being read.
    assert run.bookmark["reading"] is None
    folders = run.bookmark["folders"]
    assert folders[str(SAMPLE / "segment-logs" / SOURCE / DAY1)]["done"] == [
        "1793538000000.3f9a1c0e.gz",
        "1793541600000.8b2e47d1.gz",
    ]
    assert folders[str(SAMPLE / "segment-logs" / SOURCE / DAY2)]["done"] == ["1793624400000.c41d09a7.gz"]


@pytest.mark.e2e  # the tap's CLI in a subprocess
def test_types_start_date_and_unknown_types(tmp_path: Path) -> None:
    """``types`` limits the streams, ``start_date`` skips earlier received-days, unknown types are counted."""
    run = run_tap(tmp_path, {"paths": [str(SAMPLE)], "types": ["identify", "track"], "start_date": "2026-11-02"})
    assert {stream: len(r) for stream, r in run.by_stream().items()} == {"identify": 3, "track": 2}
    assert {m["stream"] for m in run.messages if m["type"] == "SCHEMA"} == {"identify", "track"}
    assert "received before start_date 2" in run.stderr
    assert "skipped (type not selected): page 1, screen 1, group 1, alias 1" in run.stderr

    # Folders outside Segment's layout, plain .json/.jsonl next to .gz, globs; an unknown type and a non-object.
    other = tmp_path / "other"
    (other / "nested").mkdir(parents=True)
    (other / "a.jsonl").write_text(
        '{"type":"track","messageId":"x1","event":"A"}\n'
        '{"type":"batch","messageId":"x2"}\n'
        "[1, 2]\n"
        "\n"
        '{"type":"identify","messageId":"x3","traits":{"é":"ü"}}\n'
    )
    (other / "nested" / "b.json").write_text('{"type":"page","messageId":"x4","name":"P"}')
    (other / "nested" / "c.json.gz").write_bytes(gzip.compress(b'{"type":"alias","messageId":"x5"}\n'))
    (other / "ignored.txt").write_text('{"type":"track","messageId":"nope"}\n')
    run = run_tap(tmp_path, {"paths": [str(other)]}, tag="other")
    assert [(s, r["messageId"]) for s, r in run.records] == [
        ("track", "x1"),
        ("identify", "x3"),
        ("page", "x4"),
        ("alias", "x5"),
    ]
    assert run.records[1][1]["traits"] == {"é": "ü"}
    assert "unknown call type 'batch'" in run.stderr
    assert f"{other / 'a.jsonl'} line 3: not a JSON object" in run.stderr
    run = run_tap(tmp_path, {"paths": [str(other / "**" / "*.json"), str(other / "*.txt")]}, tag="glob")
    assert [r["messageId"] for _, r in run.records] == ["x4", "nope"]  # a glob names files: any extension; by name


@pytest.mark.e2e  # the tap's CLI in a subprocess
def test_stream_maps_go_through_the_sdk_mappers(tmp_path: Path) -> None:
    """Stream maps (the SDK's, configured on the tap) apply: the only case where records are decoded."""
    maps = {"page": None, "track": {"event_upper": "event.upper()"}}
    run = run_tap(tmp_path, {"paths": [str(SAMPLE)], "stream_maps": maps})
    streams = run.by_stream()
    assert "page" not in streams
    assert "page" not in {m["stream"] for m in run.messages if m["type"] == "SCHEMA"}
    assert [r["event_upper"] for r in streams["track"]] == [r["event"].upper() for r in streams["track"]]
    assert len(streams["identify"]) == SAMPLE_COUNTS["identify"]


@pytest.mark.e2e  # the tap's CLI in a subprocess
def test_missing_local_path_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"paths": [str(tmp_path / "nowhere")]}))
    proc = subprocess.run(tap_command(config), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr


# --- incremental


def copy_sample(to: Path) -> Path:
    shutil.copytree(SAMPLE, to)
    return to


def gz_lines(path: Path, calls: list[dict[str, Any]]) -> None:
    path.write_bytes(gzip.compress(("\n".join(json.dumps(c) for c in calls) + "\n").encode()))


@pytest.mark.e2e  # the tap's CLI in a subprocess
def test_incremental_new_copy_in_an_old_day(tmp_path: Path) -> None:
    archive = copy_sample(tmp_path / "archive")
    config = {"paths": [str(archive)]}
    first = run_tap(tmp_path, config, tag="1")
    assert len(first.records) == sum(SAMPLE_COUNTS.values())

    # Segment copies hourly: a new file lands in the older day. Its name sorts *between* the day's two files, so
    # a high-water mark would miss it; the ledger of finished files does not.
    day1 = archive / "segment-logs" / SOURCE / DAY1
    gz_lines(
        day1 / "1793540000000.0aa0bb11.gz",
        [{"type": "track", "messageId": "late-1", "userId": "u_2001", "event": "Logged In"}],
    )
    gz_lines(
        archive / "segment-logs" / SOURCE / DAY2 / "1793630000000.77ee0d0d.gz",
        [{"type": "identify", "messageId": "late-2", "userId": "u_2002", "traits": {"plan": "team"}}],
    )
    second = run_tap(tmp_path, config, first.states[-1], tag="2")
    assert [(s, r["messageId"]) for s, r in second.records] == [("track", "late-1"), ("identify", "late-2")]
    assert "already read before 3" in second.stderr

    third = run_tap(tmp_path, config, second.states[-1], tag="3")
    assert third.records == []
    assert third.bookmark == second.bookmark


@pytest.mark.e2e  # the tap's CLI in a subprocess
def test_settled_days_are_compacted_and_still_take_later_copies(tmp_path: Path) -> None:
    """With ``settle_days: 0`` an older day keeps only ``through``; a later copy (a later name) is still read."""
    archive = copy_sample(tmp_path / "archive")
    config = {"paths": [str(archive)], "settle_days": 0}
    first = run_tap(tmp_path, config, tag="1")
    day1 = str(archive / "segment-logs" / SOURCE / DAY1)
    assert first.bookmark["folders"][day1] == {"through": "1793541600000.8b2e47d1.gz", "done": []}
    gz_lines(
        Path(day1) / "1793590000000.99aa88bb.gz",
        [{"type": "track", "messageId": "late-copy", "userId": "u_2003", "event": "Logged In"}],
    )
    second = run_tap(tmp_path, config, first.states[-1], tag="2")
    assert [r["messageId"] for _, r in second.records] == ["late-copy"]


def test_ledger_compaction_never_skips_a_listed_unread_file() -> None:
    folder = f"/a/segment-logs/s/{DAY1}"

    def file(name: str, day: str = DAY1) -> ArchiveFile:
        return ArchiveFile(int(day), name, f"/a/segment-logs/s/{day}/{name}", f"/a/segment-logs/s/{day}", True)

    ledger = Ledger(None, settle_days=0)
    listing = [file("1.gz"), file("2.gz"), file("3.gz"), file("9.gz", DAY2)]
    ledger.finish(listing[0])
    ledger.finish(listing[2])  # 2.gz not read (yet)
    ledger.compact(listing, int(DAY2))
    assert ledger.value()["folders"][folder] == {"through": "1.gz", "done": ["3.gz"]}
    assert [ledger.is_done(f) for f in listing] == [True, False, True, False]
    # Meltano merges states with a deep dict merge: values that must shrink are lists, strings or null.
    value = ledger.value()
    assert all(not isinstance(v, dict) for entry in value["folders"].values() for v in entry.values())


# --- kill -9 and resume


def big_archive(root: Path, lines: int) -> tuple[Path, list[str]]:
    """A small first file and a large second one: every call has its own messageId, in file order."""
    day = root / "segment-logs" / "src" / DAY1
    day.mkdir(parents=True)
    ids: list[str] = []
    for name, count in (("1793500000000.aaaa.gz", 500), ("1793510000000.bbbb.gz", lines)):
        calls = []
        for i in range(count):
            mid = f"{name[14:18]}-{i}"
            ids.append(mid)
            kind = "identify" if i % 2 else "track"
            calls.append({"type": kind, "messageId": mid, "userId": f"u_{i % 500}", "traits": {"n": i}})
        gz_lines(day / name, calls)
    return day, ids


def read_until_states(proc: subprocess.Popen[bytes], states: int) -> bytes:
    """Read the tap's stdout until ``states`` STATE lines that are mid-file; the tap then blocks on the pipe."""
    assert proc.stdout is not None
    seen, chunks = 0, []
    for line in proc.stdout:
        chunks.append(line)
        if line.startswith(b'{"type":"STATE"') and b'"reading":["' in line:
            seen += 1
            if seen >= states:
                break
    return b"".join(chunks)


@pytest.mark.e2e  # the tap's CLI in a subprocess
def test_kill_9_mid_file_then_resume_from_state(tmp_path: Path) -> None:
    archive, ids = big_archive(tmp_path / "archive", 60_000)
    config = {"paths": [str(archive.parent.parent.parent)], "state_interval_lines": 1000}
    command = write_inputs(tmp_path, config, None, "kill")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        head = read_until_states(proc, 5)
        # A little more output after the last STATE we keep: records past it (the at-least-once window).
        assert proc.stdout is not None
        head += proc.stdout.read1(50_000)  # type: ignore[attr-defined]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    lines = head.split(b"\n")
    complete = lines[:-1]  # a partial last line is what a kill leaves: a reader drops it
    messages = [json.loads(line) for line in complete]
    states = [m["value"] for m in messages if m["type"] == "STATE"]
    last_state = states[-1]
    reading = last_state["bookmarks"]["segment_archive"]["reading"]
    assert reading is not None and reading[0].endswith("1793510000000.bbbb.gz")
    first_ids = [m["record"]["messageId"] for m in messages if m["type"] == "RECORD"]
    covered = 500 + reading[1]  # the first file whole, then the lines of the second the STATE covers
    assert first_ids[:covered] == ids[:covered]
    assert len(first_ids) < len(ids)

    second = run_tap(tmp_path, config, last_state, tag="resume")
    second_ids = [r["messageId"] for _, r in second.records]
    assert second_ids == ids[covered:]  # resumed at the line after the STATE, the small file not read again
    assert f"resuming after line {reading[1]}" in second.stderr
    # Across both runs: every line at least once; twice only after the last STATE of the killed run.
    counts = collections.Counter(first_ids + second_ids)
    assert set(counts) == set(ids)
    twice = {mid for mid, n in counts.items() if n > 1}
    assert twice <= set(ids[covered:])
    assert all(n <= 2 for n in counts.values())


@pytest.mark.e2e  # the tap's CLI in a subprocess
def test_sigterm_stops_at_an_exact_state(tmp_path: Path) -> None:
    archive, ids = big_archive(tmp_path / "archive", 60_000)
    config = {"paths": [str(archive.parent.parent.parent)], "state_interval_lines": 1000}
    command = write_inputs(tmp_path, config, None, "term")
    with (tmp_path / "term.stderr").open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, cwd=tmp_path)
        head = read_until_states(proc, 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None
        out = proc.stdout.read()  # through the buffered reader: it may hold lines already read from the pipe
        proc.wait(timeout=60)
    assert proc.returncode == 0, (tmp_path / "term.stderr").read_text()[-2000:]
    assert "Stopping on request" in (tmp_path / "term.stderr").read_text()
    messages = [json.loads(line) for line in (head + out).splitlines()]
    first_ids = [m["record"]["messageId"] for m in messages if m["type"] == "RECORD"]
    assert messages[-1]["type"] == "STATE"
    last_state = messages[-1]["value"]
    second = run_tap(tmp_path, config, last_state, tag="after-term")
    second_ids = [r["messageId"] for _, r in second.records]
    assert first_ids + second_ids == ids  # exactly once: the STATE on SIGTERM covers exactly what was written


# --- S3 (moto's server)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3_server() -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1 (a real HTTP server, in a thread); its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TARGET_LOOPS_", "LOOPS_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


@pytest.mark.e2e  # the tap's CLI in a subprocess
def test_s3_archive_through_an_s3_compatible_server(tmp_path: Path, s3_server: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="acme-segment")
    for path in SAMPLE.rglob("*.gz"):
        s3.upload_file(str(path), "acme-segment", path.relative_to(SAMPLE).as_posix())
    s3.put_object(Bucket="acme-segment", Key="elsewhere/x.gz", Body=b"not read")

    config = {"paths": ["s3://acme-segment/segment-logs"], "s3_endpoint_url": s3_server}
    local = run_tap(tmp_path, {"paths": [str(SAMPLE)]}, tag="local")
    remote = run_tap(tmp_path, config, env=aws_env(), tag="s3")
    assert remote.records == local.records
    assert [r.split(b',"record":', 1)[1] for r in remote.raw_records] == [
        r.split(b',"record":', 1)[1] for r in local.raw_records
    ]
    assert "s3://acme-segment/segment-logs/7Xk2pQ9sRc/1793491200000/1793538000000.3f9a1c0e.gz line 5: not JSON" in (
        remote.stderr
    )
    assert set(remote.bookmark["folders"]) == {
        f"s3://acme-segment/segment-logs/{SOURCE}/{DAY1}",
        f"s3://acme-segment/segment-logs/{SOURCE}/{DAY2}",
    }

    # Incremental on S3 too: a new copy in the older day, and only it, on the next run.
    body = gzip.compress(b'{"type":"track","messageId":"s3-late","userId":"u_2001","event":"Logged In"}\n')
    s3.put_object(Bucket="acme-segment", Key=f"segment-logs/{SOURCE}/{DAY1}/1793545200000.5e5e5e5e.gz", Body=body)
    again = run_tap(tmp_path, config, remote.states[-1], env=aws_env(), tag="s3-2")
    assert [r["messageId"] for _, r in again.records] == ["s3-late"]


# --- the console script


def console_script() -> Path:
    path = Path(sys.executable).parent / "tap-segment-archive"
    if not path.exists():
        pytest.fail("the tap-segment-archive console script is not installed: pip install -e .", pytrace=False)
    return path


@pytest.mark.e2e  # the tap's CLI in a subprocess
def test_console_script_about_and_discover(tmp_path: Path) -> None:
    about = subprocess.run(
        [str(console_script()), "--about", "--format=json"], capture_output=True, text=True, timeout=60, check=True
    )
    info = json.loads(about.stdout)
    assert info["name"] == "tap-segment-archive"
    settings = set(info["settings"]["properties"])
    assert {"paths", "start_date", "types", "s3_endpoint_url", "storage_options", "state_interval_lines"} <= settings
    assert info["settings"]["required"] == ["paths"]

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"paths": [str(SAMPLE)]}))
    discover = subprocess.run(
        [str(console_script()), "--config", str(config), "--discover"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    catalog = json.loads(discover.stdout)
    assert sorted(s["tap_stream_id"] for s in catalog["streams"]) == sorted(CALL_TYPES)


# --- Meltano, end to end into the sandbox


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "target-loops"


@pytest.fixture(scope="session")
def meltano_bin() -> Path:
    """Meltano in a venv of its own, shared with tests/test_warehouse.py (same folder, same lock, same extras)."""
    given = os.environ.get("WAREHOUSE_MELTANO")
    if given:
        return Path(given)
    venv = _cache_dir() / f"meltano-{MELTANO_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}"
    exe, done = venv / "bin" / "meltano", venv / ".installed"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and exe.exists():
            return exe
        shutil.rmtree(venv, ignore_errors=True)
        for step in (
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"meltano[postgres]=={MELTANO_VERSION}"],
        ):
            proc = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
            if proc.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                pytest.fail(f"could not install meltano {MELTANO_VERSION}: {proc.stderr[-2000:]}")
        done.write_text(f"meltano[postgres]=={MELTANO_VERSION}\n")
    return exe


def meltano_env(sys_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TARGET_LOOPS_", "LOOPS_", "MELTANO_", "TAP_"))}
    env.update(
        MELTANO_SYS_DIR_ROOT=str(sys_dir),
        MELTANO_SEND_ANONYMOUS_USAGE_STATS="false",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def final_traits() -> dict[str, dict[str, Any]]:
    """What each user's contact must hold after the sample: its identifies' traits merged in timestamp order."""
    identifies = [json.loads(line) for stream, line in expected_sample_records() if stream == "identify"]
    merged: dict[str, dict[str, Any]] = {}
    for call in sorted(identifies, key=lambda c: c["timestamp"]):
        traits = merged.setdefault(call["userId"], {})
        if "email" in call and "email" not in call["traits"]:
            traits["email"] = call["email"]
        for key, value in call["traits"].items():
            if key == "mailingLists":
                traits.setdefault(key, {}).update(value)
            else:
                traits[key] = value
    return merged


@pytest.mark.e2e  # the tap's CLI in a subprocess
def test_meltano_segment_archive_sync_into_the_sandbox(tmp_path: Path, meltano_bin: Path, make_sandbox: Any) -> None:
    """``meltano run segment-archive-sync``: each identify's final traits on its contact, each track exactly once."""
    team = json.loads((SAMPLES / "sandbox_team.json").read_text())
    sandbox = make_sandbox(properties=team["properties"], lists=team["lists"])
    sys_dir = tmp_path / ".meltano"
    env = meltano_env(
        sys_dir,
        TARGET_LOOPS_BASE_URL=sandbox.url,
        TARGET_LOOPS_API_KEY=SANDBOX_KEY,
        TARGET_LOOPS_REJECTS_PATH=str(tmp_path / "rejects.jsonl"),
        TARGET_LOOPS_LEDGER_URL=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        TARGET_LOOPS_DRY_RUN="false",
    )
    install = subprocess.run(
        [str(meltano_bin), "install", "tap-segment-archive", "target-loops"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    def meltano_run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(meltano_bin), "run", "segment-archive-sync"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    first = meltano_run()
    assert first.returncode == 0, (first.stdout + first.stderr)[-6000:]

    contacts = {c["userId"]: c for c in sandbox.store.contacts()}
    for user_id, traits in final_traits().items():
        assert user_id in contacts, f"no contact for {user_id}"
        contact = contacts[user_id]
        for key, value in traits.items():
            if key == "mailingLists":
                assert {k: v for k, v in contact["mailingLists"].items() if k in value} == value, user_id
            else:
                assert contact.get(key) == value, f"{user_id}.{key}: {contact.get(key)!r} != {value!r}"

    # Each track once (the copy of ios-1a07 in the next file included), told apart by name and user (all distinct
    # in the sample), whatever Idempotency-Key scheme the target derives from the messageId.
    tracks = {}
    for stream, line in expected_sample_records():
        if stream == "track":
            call = json.loads(line)
            tracks[call["messageId"]] = (call["event"], call["userId"])
    events = collections.Counter((e["eventName"], e["userId"]) for e in sandbox.store.events())
    assert events == collections.Counter(tracks.values())
    assert sum(events.values()) == len(tracks) == 5

    # Meltano kept the tap's state: a second run reads no file again and sends nothing.
    writes_before = len([r for r in sandbox.store.requests() if r.get("method") != "GET"])
    second = meltano_run()
    assert second.returncode == 0, (second.stdout + second.stderr)[-6000:]
    assert "files read 0 (already read before 3" in second.stdout + second.stderr
    assert len([r for r in sandbox.store.requests() if r.get("method") != "GET"]) == writes_before
    assert collections.Counter((e["eventName"], e["userId"]) for e in sandbox.store.events()) == events


# --- lines and files that cannot be read whole (issue 21, items 7 and 8)


def _nested(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


#: (the bad line, the reason the tap counts it under)
POISON_LINES = [
    ('{"type": "track", "messageId": "p1", "event": "E", "properties": {"amount": 1e5000}}', "number out of range"),
    ('{"type": "identify", "messageId": "p2", "traits": {"n": 1e100000000}}', "number out of range"),
    ('{"type": "identify", "messageId": "p3", "traits": {"n": ' + ("7" * 5000) + "}}", "number out of range"),
    ('{"type": "identify", "messageId": "p4", "traits": {"n": ' + ("7" * 400) + "}}", "number out of range"),
    ('{"type": "identify", "messageId": "p5", "userId": -1.8E+308}', "number out of range"),
    ('{"type": "identify", "messageId": "p6", "traits": ' + _nested(40) + "}", "nested too deep"),
    ('{"type": "track", "messageId": "p7", "properties": ' + _nested(990) + "}", "nested too deep"),
    ('{"type": "track", "messageId": "p8", "properties": ' + ("[" * 100_000 + "]" * 100_000) + "}", "nested too deep"),
]


@pytest.mark.e2e  # the tap's CLI in a subprocess
def test_a_poison_line_is_a_bad_line_and_the_rest_is_emitted(tmp_path: Path) -> None:
    """A line the target could only reject (a number beyond a double, nesting beyond limits.MAX_DEPTH) is counted
    as a bad line with a warning naming file and line; the tap goes on, exit 0. Numbers a double holds, hex ids
    that look like exponents and ordinary nesting are emitted as written."""
    day = tmp_path / "segment-logs" / SOURCE / DAY1
    day.mkdir(parents=True)
    good = [
        '{"type": "identify", "messageId": "g1", "userId": "u1", "traits": {"n": 1.7976931348623157e308}}',
        '{"type": "track", "messageId": "g2e1000", "event": "E", "properties": {"id": "9e123", "n": '
        + ("9" * 300)
        + "}}",
        '{"type": "track", "messageId": "g3", "event": "E", "properties": ' + _nested(20) + "}",
    ]
    lines = [good[0], *(line for line, _ in POISON_LINES), good[1], good[2]]
    path = day / "1793494800.poison.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    run = run_tap(tmp_path, {"paths": [str(tmp_path / "segment-logs")]})
    assert [r["messageId"] for _, r in run.records] == ["g1", "g2e1000", "g3"]
    assert run.raw_records[0].endswith(good[0].encode() + b"}")  # as written, not re-encoded
    for number, (_, reason) in enumerate(POISON_LINES, start=2):
        assert f"{path} line {number}: {reason}" in run.stderr, (number, run.stderr[-3000:])
    assert "bad lines: number out of range 5, nested too deep 3" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.bookmark["folders"][str(day)]["done"] == [path.name]


def _archive_with(tmp_path: Path, name: str, data: bytes) -> tuple[Path, Path]:
    """A day folder holding a good file (read first) and ``name`` with ``data``."""
    day = tmp_path / "segment-logs" / SOURCE / DAY1
    day.mkdir(parents=True)
    gz_lines(day / "1793490000.good.gz", [{"type": "track", "messageId": "ok1", "event": "E"}])
    bad = day / name
    bad.write_bytes(data)
    return day, bad


def _big_gzip(lines: int) -> bytes:
    # Seeded: with these ids, the damaged data of the "corrupt" case decodes into mangled lines before gzip notices.
    rng = random.Random(21)
    ids = [f"t{i:06d}-{rng.randbytes(6).hex()}" for i in range(lines)]
    text = "".join(json.dumps({"type": "track", "messageId": i, "event": "E"}) + "\n" for i in ids)
    return gzip.compress(text.encode())


@pytest.mark.e2e  # the tap's CLI in a subprocess
@pytest.mark.parametrize("kind", ["truncated", "not gzip", "corrupt"])
def test_a_gzip_that_cannot_be_read_whole_stops_naming_the_file(tmp_path: Path, kind: str) -> None:
    """One clear line naming the file and what to do, exit 1, no traceback (nor click's bare "Aborted!"), and no
    STATE covers a line that was not emitted: the file is not marked done, ``reading`` stays within what was
    written."""
    data = _big_gzip(30_000)
    if kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "not gzip":
        data = b'{"type": "track", "messageId": "plain", "event": "E"}\n'
    else:
        middle = len(data) // 2
        data = data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 64]) + data[middle + 64 :]
    day, bad = _archive_with(tmp_path, "1793500000.bad.gz", data)
    command = write_inputs(
        tmp_path, {"paths": [str(tmp_path / "segment-logs")], "state_interval_lines": 1000}, None, kind
    )
    proc = subprocess.run(command, capture_output=True, timeout=120, cwd=tmp_path, check=False)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and str(bad) in errors[0], stderr[-3000:]
    assert "gzip" in errors[0] and "run again" in errors[0]
    messages, _ = parse(proc.stdout)
    emitted = [m["record"]["messageId"] for m in messages if m["type"] == "RECORD"]
    assert emitted[0] == "ok1"
    # Damaged deflate data can decode into lines never written (mangled messageIds) before gzip's CRC check at the
    # end notices: nothing of a gzip file is emitted before all of it was read.
    assert emitted[1:] == [], "nothing of a damaged gzip file is emitted"
    bookmark = [m["value"] for m in messages if m["type"] == "STATE"][-1]["bookmarks"]["segment_archive"]
    assert bad.name not in bookmark["folders"].get(str(day), {}).get("done", [])
    reading = bookmark["reading"]
    assert reading is None or (reading[0] == str(bad) and reading[1] == 0)
