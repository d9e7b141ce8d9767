"""BATCH messages (issue 21, item 1): a tap in batch mode writes its rows to files and names them in a BATCH message.

Every row of those files takes the path of a RECORD line of the BATCH's stream (stream maps, validation, rules, the
outbox), so the same rows as RECORD lines or as BATCH files make the same requests, and STATE after the BATCH covers
them. A row that a RECORD line would have had rejected alone is rejected alone, named by file and row; a file that
cannot be read stops the run with one line naming it, exit 1, and no STATE after the BATCH.
"""

from __future__ import annotations

import collections
import gzip
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runner import SAMPLES, Run, record, run_target, sandbox_config, schema, singer, state
from test_tap_segment_archive import SAMPLE, aws_env, expected_sample_records, final_traits, tap_command

from target_loops.sandbox import Sandbox

CONTACT_COLUMNS = {"id": "string", "user_id": "string", "email": "string", "plan": "string"}
EVENT_COLUMNS = {"id": "string", "user_id": "string", "event_text": "string"}


@pytest.fixture
def loops(make_sandbox: Any) -> Sandbox:
    return make_sandbox(properties=[{"key": "plan", "type": "string"}])


def contact_row(n: int) -> dict[str, Any]:
    return {"id": f"i{n}", "user_id": f"u{n}", "email": f"u{n}@example.com", "plan": "pro"}


def event_row(n: int) -> dict[str, Any]:
    return {"id": f"t{n}", "user_id": f"u{n}", "event_text": "Logged In"}


def write_file(path: Path, lines: list[bytes]) -> str:
    """The lines as a batch file (gzip when the name ends in .gz, as the SDK's writer names them); its file:// URL."""
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path.as_uri()


def rows_file(path: Path, rows: list[Any]) -> str:
    return write_file(path, [json.dumps(row).encode() for row in rows])


def batch(stream: str, manifest: list[str], *, compression: str | None = "gzip", fmt: str = "jsonl") -> dict[str, Any]:
    """A BATCH message as singer-sdk taps write it (``SDKBatchMessage``)."""
    return {"type": "BATCH", "stream": stream, "encoding": {"format": fmt, "compression": compression},
            "manifest": manifest}  # fmt: skip


def schemas() -> list[dict[str, Any]]:
    return [schema("identifies", CONTACT_COLUMNS, ["id"]), schema("tracks", EVENT_COLUMNS, ["id"])]


def run(sandbox: Sandbox, tmp_path: Path, *messages: dict[str, Any], **extra: Any) -> Run:
    return run_target(sandbox_config(sandbox, tmp_path, **extra), singer(*messages), tmp_path=tmp_path)


def user_ids(sandbox: Sandbox) -> list[str]:
    return sorted(c["userId"] for c in sandbox.store.contacts())


def sent(sandbox: Sandbox) -> collections.Counter[tuple[str, str, str | None]]:
    """Every write request the sandbox got: path, body and Idempotency-Key (the order of sending aside)."""
    return collections.Counter(
        (r["path"], json.dumps(r["body"], sort_keys=True), r["idempotencyKey"])
        for r in sandbox.store.requests()
        if r["method"] != "GET"
    )


# --- every row delivered


@pytest.mark.parametrize("suffix", [".json.gz", ".jsonl"], ids=["gzip", "plain"])
def test_every_row_of_a_batch_is_delivered_then_state(loops: Sandbox, tmp_path: Path, suffix: str) -> None:
    """30 contacts in two files and 30 events in one (60 rows): all of them reach Loops, then the STATE after the
    BATCH messages is emitted."""
    compression = "gzip" if suffix.endswith(".gz") else None
    contacts = [
        rows_file(tmp_path / f"identifies-1{suffix}", [contact_row(n) for n in range(20)]),
        rows_file(tmp_path / f"identifies-2{suffix}", [contact_row(n) for n in range(20, 30)]),
    ]
    events = [rows_file(tmp_path / f"tracks-1{suffix}", [event_row(n) for n in range(30)])]
    result = run(
        loops,
        tmp_path,
        *schemas(),
        state({"at": 0}),
        batch("identifies", contacts, compression=compression),
        batch("tracks", events, compression=compression),
        state({"at": 1}),
        batch_size_rows=7,  # several drains of a full sink inside one file
    )
    assert result.returncode == 0, result.stderr
    assert user_ids(loops) == sorted(f"u{n}" for n in range(30))
    assert all(c["plan"] == "pro" for c in loops.store.contacts())
    assert sorted(e["userId"] for e in loops.store.events()) == sorted(f"u{n}" for n in range(30))
    assert result.final_state == {"at": 1}
    assert result.rejects == []
    assert result.stream("identifies")["read"] == 30 and result.stream("tracks")["read"] == 30


def test_a_gzip_file_labelled_uncompressed_is_read(loops: Sandbox, tmp_path: Path) -> None:
    """singer-sdk's JSONL batcher always gzips, whatever ``compression`` its config (and so its BATCH message) says:
    the content decides."""
    url = rows_file(tmp_path / "identifies.json.gz", [contact_row(n) for n in range(3)])
    result = run(loops, tmp_path, *schemas(), batch("identifies", [url], compression="none"), state({"at": 1}))
    assert result.returncode == 0, result.stderr
    assert user_ids(loops) == ["u0", "u1", "u2"]
    assert result.final_state == {"at": 1}


def test_the_same_rows_as_record_lines_and_as_batch_files_make_the_same_requests(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """Typed columns included (a number with a fraction, a date-time, an integer): a row read from a file has the
    types of the same row read from a RECORD line, so the requests are the same, Idempotency-Keys and all."""
    properties = [{"key": "plan", "type": "string"}, {"key": "score", "type": "number"}]
    columns = {
        **CONTACT_COLUMNS,
        "score": {"type": ["number", "null"]},
        "seats": {"type": ["integer", "null"]},
        "timestamp": {"type": ["string", "null"], "format": "date-time"},
    }
    contacts = [
        {**contact_row(n), "score": n + 0.25, "seats": n, "timestamp": f"2026-11-0{1 + n % 5}T10:00:00Z"}
        for n in range(12)
    ]
    contacts += [{**contact_row(n), "plan": "team", "timestamp": "2026-11-09T10:00:00+02:00"} for n in range(4)]
    event_columns = {**EVENT_COLUMNS, "revenue": {"type": ["number", "null"]}}
    events = [{**event_row(n), "revenue": 9.99} for n in range(12)]
    head = [schema("identifies", columns, ["id"]), schema("tracks", event_columns, ["id"])]

    as_records = make_sandbox(properties=properties)
    (tmp_path / "records").mkdir()
    lines = run(
        as_records,
        tmp_path / "records",
        *head,
        *(record("identifies", row) for row in contacts),
        *(record("tracks", row) for row in events),
        state({"at": 1}),
    )
    assert lines.returncode == 0, lines.stderr

    as_batches = make_sandbox(properties=properties)
    (tmp_path / "batches").mkdir()
    manifest = [
        rows_file(tmp_path / "batches" / "identifies-1.json.gz", contacts[:9]),
        rows_file(tmp_path / "batches" / "identifies-2.json.gz", contacts[9:]),
    ]
    files = run(
        as_batches,
        tmp_path / "batches",
        *head,
        batch("identifies", manifest),
        batch("tracks", [rows_file(tmp_path / "batches" / "tracks.jsonl", events)], compression=None),
        state({"at": 1}),
    )
    assert files.returncode == 0, files.stderr

    assert sent(as_batches) == sent(as_records)
    assert sum(sent(as_records).values()) >= 12
    assert files.final_state == lines.final_state == {"at": 1}


def test_stream_maps_apply_to_batch_rows_as_to_records(loops: Sandbox, tmp_path: Path) -> None:
    """A BATCH of ``people`` aliased to ``identifies`` by stream_maps is upserted; a BATCH of a stream the maps
    drop sends nothing."""
    people = rows_file(tmp_path / "people.json.gz", [contact_row(n) for n in range(3)])
    noise = rows_file(tmp_path / "noise.json.gz", [contact_row(n) for n in range(3, 6)])
    result = run(
        loops,
        tmp_path,
        schema("people", CONTACT_COLUMNS, ["id"]),
        schema("noise", CONTACT_COLUMNS, ["id"]),
        batch("people", [people]),
        batch("noise", [noise]),
        state({"at": 1}),
        stream_maps={"people": {"__alias__": "identifies"}, "noise": None},
    )
    assert result.returncode == 0, result.stderr
    assert user_ids(loops) == ["u0", "u1", "u2"]
    assert result.final_state == {"at": 1}


# --- tap-segment-archive's batch mode, end to end


def tap_output(tmp_path: Path, tag: str, **config: Any) -> Path:
    """Run tap-segment-archive on the sample archive; its standard output, kept in a file for the target."""
    config_path = tmp_path / f"tap-{tag}.json"
    config_path.write_text(json.dumps({"paths": [str(SAMPLE)], **config}))
    output = tmp_path / f"tap-{tag}.singer"
    with output.open("wb") as out:
        proc = subprocess.run(tap_command(config_path), stdout=out, stderr=subprocess.PIPE, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    return output


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_tap_segment_archive_in_batch_mode_into_the_target(make_sandbox: Any, tmp_path: Path, compression: str) -> None:
    """The sample archive through the tap's batch mode (batch files under tmp_path) and through RECORD lines: the
    same requests, each identify's final traits on its contact, each track exactly once, and the tap's last STATE
    emitted by the target."""
    team = json.loads((SAMPLES / "sandbox_team.json").read_text())
    batch_config = {
        "encoding": {"format": "jsonl", "compression": compression},
        "storage": {"root": (tmp_path / "batch files").as_uri(), "prefix": "sample-"},
        "batch_size": 2,
    }
    batched = tap_output(tmp_path, "batches", batch_config=batch_config)
    messages = [json.loads(line) for line in batched.read_text().splitlines()]
    kinds = collections.Counter(m["type"] for m in messages)
    assert kinds["RECORD"] == 0 and kinds["BATCH"] >= 6, kinds
    assert len(list((tmp_path / "batch files").iterdir())) == kinds["BATCH"]

    by_batches = make_sandbox(properties=team["properties"], lists=team["lists"])
    (tmp_path / "target-batches").mkdir()
    run_batches = run_target(
        sandbox_config(by_batches, tmp_path / "target-batches"),
        input_path=batched,
        tmp_path=tmp_path / "target-batches",
    )
    assert run_batches.returncode == 0, run_batches.stderr

    by_records = make_sandbox(properties=team["properties"], lists=team["lists"])
    (tmp_path / "target-records").mkdir()
    run_records = run_target(
        sandbox_config(by_records, tmp_path / "target-records"),
        input_path=tap_output(tmp_path, "records"),
        tmp_path=tmp_path / "target-records",
    )
    assert run_records.returncode == 0, run_records.stderr

    assert sent(by_batches) == sent(by_records)
    assert [(r["reason"], r["record"]) for r in run_batches.rejects] == [
        (r["reason"], r["record"]) for r in run_records.rejects
    ]
    assert run_batches.final_state == [m["value"] for m in messages if m["type"] == "STATE"][-1]
    assert run_batches.final_state == run_records.final_state

    contacts = {c["userId"]: c for c in by_batches.store.contacts()}
    for user_id, traits in final_traits().items():
        for key, value in traits.items():
            if key == "mailingLists":
                assert {k: v for k, v in contacts[user_id]["mailingLists"].items() if k in value} == value, user_id
            else:
                assert contacts[user_id].get(key) == value, f"{user_id}.{key}"
    tracks = {}
    for stream, line in expected_sample_records():
        if stream == "track":
            call = json.loads(line)
            tracks[call["messageId"]] = (call["event"], call["userId"])
    events = collections.Counter((e["eventName"], e["userId"]) for e in by_batches.store.events())
    assert events == collections.Counter(tracks.values())


@pytest.fixture
def s3_server() -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1 (as in test_tap_segment_archive); its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_batch_files_in_s3(make_sandbox: Any, tmp_path: Path, s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tap writes its batch files to an S3-compatible server (moto), the target reads them by their s3:// URLs
    (credentials and endpoint from the usual AWS variables): every track delivered; a file gone from the bucket stops
    the run naming it."""
    import boto3

    for name, value in {**aws_env(), "AWS_ENDPOINT_URL": s3_server}.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="acme-batches")
    storage = {"root": "s3://acme-batches/loops", "params": {"endpoint_url": s3_server}}
    batch_config = {"encoding": {"format": "jsonl", "compression": "gzip"}, "storage": storage}
    batched = tap_output(tmp_path, "s3", batch_config=batch_config)
    manifests = [json.loads(line)["manifest"] for line in batched.read_text().splitlines() if '"BATCH"' in line]
    assert manifests and all(url.startswith("s3://acme-batches/loops/") for urls in manifests for url in urls)

    team = json.loads((SAMPLES / "sandbox_team.json").read_text())
    sandbox = make_sandbox(properties=team["properties"], lists=team["lists"])
    (tmp_path / "target").mkdir()
    result = run_target(sandbox_config(sandbox, tmp_path / "target"), input_path=batched, tmp_path=tmp_path / "target")
    assert result.returncode == 0, result.stderr
    tracks = {json.loads(line)["messageId"] for stream, line in expected_sample_records() if stream == "track"}
    assert len(sandbox.store.events()) == len(tracks)
    assert result.final_state == [json.loads(line)["value"] for line in batched.read_text().splitlines()
                                  if '"STATE"' in line][-1]  # fmt: skip

    gone = manifests[-1][0]
    boto3.client("s3", endpoint_url=s3_server).delete_object(
        Bucket="acme-batches", Key=gone[len("s3://acme-batches/") :]
    )
    (tmp_path / "again").mkdir()
    again = run_target(sandbox_config(sandbox, tmp_path / "again"), input_path=batched, tmp_path=tmp_path / "again")
    assert again.returncode == 1
    assert f"batch file {gone} cannot be read: no such file" in again.stderr


def test_tap_segment_archive_refuses_a_batch_format_it_cannot_write(tmp_path: Path) -> None:
    """parquet is in the SDK's batch_config schema but not written by this tap: a config error, not RECORD lines."""
    config_path = tmp_path / "tap.json"
    batch_config = {"encoding": {"format": "parquet"}, "storage": {"root": tmp_path.as_uri()}}
    config_path.write_text(json.dumps({"paths": [str(SAMPLE)], "batch_config": batch_config}))
    proc = subprocess.run(tap_command(config_path), capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert "encoding format 'parquet' is not supported by tap-segment-archive" in proc.stderr
    assert proc.stdout == ""


# --- rows rejected alone


def test_a_bad_row_is_rejected_alone_naming_file_and_row(loops: Sandbox, tmp_path: Path) -> None:
    """Row 2 breaks the SCHEMA, row 4 is a list, row 5 holds NaN (JSON has none), row 6 is not UTF-8, rows 8-10 are
    poison (a number beyond a double, an integer of 5,000 digits, 3,000 levels of nesting): each is rejected alone
    (in the rejects file, named by file and row), the other rows are delivered, STATE after."""
    bad_schema = {**contact_row(2), "plan": 42}
    lines = [
        json.dumps(contact_row(1)).encode(),
        json.dumps(bad_schema).encode(),
        json.dumps(contact_row(3)).encode(),
        b"[1, 2]",
        b'{"id": "i5", "user_id": "u5", "email": "u5@example.com", "plan": NaN}',
        b'{"id": "i6", "user_id": "u6", "email": "u6@example.com", "plan": "caf\xe9"}',
        json.dumps(contact_row(7)).encode(),
        b'{"id": "i8", "user_id": "u8", "email": "u8@example.com", "plan": "x", "score": 1e5000}',
        b'{"id": "i9", "user_id": "u9", "email": "u9@example.com", "n": ' + b"9" * 5000 + b"}",
        b'{"id": "i10", "user_id": "u10", "email": "u10@example.com", "deep": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    ]
    url = write_file(tmp_path / "identifies.json.gz", lines)
    result = run(loops, tmp_path, *schemas(), batch("identifies", [url]), state({"at": 1}))
    assert result.returncode == 0, result.stderr
    assert user_ids(loops) == ["u1", "u3", "u7"]
    assert result.final_state == {"at": 1}
    by_reason: dict[str, dict[str, Any]] = {}
    for line in result.rejects:
        by_reason.setdefault(line["reason"], line)  # the first of each reason
    assert set(by_reason) == {"schema_invalid", "invalid_record", "invalid_number", "invalid_encoding", "too_deep"}
    assert by_reason["schema_invalid"]["record"] == bad_schema
    assert by_reason["invalid_record"]["record"] == [1, 2]
    for reason, row in (("schema_invalid", 2), ("invalid_record", 4), ("invalid_number", 5), ("invalid_encoding", 6),
                        ("too_deep", 10)):  # fmt: skip
        assert f"batch file {url} row {row}:" in by_reason[reason]["message"], by_reason[reason]
    assert all(r["stream"] == "identifies" for r in result.rejects)
    assert sorted(r["reason"] for r in result.rejects).count("invalid_number") == 3  # NaN, 1e5000, 5,000 digits
    assert result.stream("identifies")["rejected"] == 7


# --- a file that cannot be read stops the run


def stopping_case(tmp_path: Path, case: str) -> tuple[dict[str, Any], str]:
    """A BATCH message whose second file cannot be read, and the words the one error line must hold."""
    good = rows_file(tmp_path / "good.json.gz", [contact_row(n) for n in range(2, 4)])
    if case == "missing file":
        url = (tmp_path / "gone.json.gz").as_uri()
        return batch("identifies", [good, url]), f"batch file {url} cannot be read: no such file"
    if case == "truncated gzip":
        whole = gzip.compress(b"".join(json.dumps(contact_row(n)).encode() + b"\n" for n in range(4, 400)))
        path = tmp_path / "cut.json.gz"
        path.write_bytes(whole[: len(whole) // 2])
        return batch("identifies", [good, path.as_uri()]), f"batch file {path.as_uri()} is a truncated gzip file"
    if case == "corrupt gzip":
        path = tmp_path / "corrupt.json.gz"
        path.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
        return batch("identifies", [good, path.as_uri()]), f"batch file {path.as_uri()}"
    if case == "row not JSON":
        url = write_file(tmp_path / "bad.jsonl", [json.dumps(contact_row(4)).encode(), b'{"id": "i5", "user'])
        return batch("identifies", [good, url], compression=None), f"batch file {url} row 2 is not valid JSON"
    if case == "parquet":
        url = (tmp_path / "rows.parquet").as_uri()
        return batch("identifies", [url], fmt="parquet"), "encoding format 'parquet' is not supported"
    if case == "unknown compression":
        return batch("identifies", [good], compression="zstd"), "compression 'zstd' is not supported"
    if case == "no manifest":
        message = batch("identifies", [good])
        del message["manifest"]
        return message, '"manifest"'
    raise AssertionError(case)


STOPPING = ["missing file", "truncated gzip", "corrupt gzip", "row not JSON", "parquet", "unknown compression",
            "no manifest"]  # fmt: skip


@pytest.mark.parametrize("case", STOPPING)
def test_a_batch_file_that_cannot_be_read_stops_the_run(loops: Sandbox, tmp_path: Path, case: str) -> None:
    """The contact before the BATCH is delivered and its STATE emitted; then one line naming the file (and the row
    where there is one), exit 1, no traceback, no STATE after the BATCH, and the report says completed: false."""
    message, words = stopping_case(tmp_path, case)
    result = run(
        loops,
        tmp_path,
        *schemas(),
        record("identifies", contact_row(1)),
        state({"at": 1}),
        message,
        state({"at": 2}),
    )
    assert result.returncode == 1, result.stderr
    errors = [text for text in result.stderr.splitlines() if "target-loops:" in text]
    assert len(errors) == 1 and words in errors[0], result.stderr
    print(errors[0])
    assert "input line 5" in errors[0]  # the BATCH message
    assert "u1" in user_ids(loops)
    assert result.states == [{"at": 1}]
    assert result.report["completed"] is False


def test_credentials_in_a_batch_url_are_never_shown(loops: Sandbox, tmp_path: Path) -> None:
    """A file that cannot be fetched is named without the user, password or query string of its URL."""
    url = "ftp://batchuser:s3cr3t-pass@127.0.0.1:1/exports/rows.json.gz?token=s3cr3t-token"
    result = run(loops, tmp_path, *schemas(), batch("identifies", [url]), state({"at": 1}))
    assert result.returncode == 1, result.stderr
    assert "batch file ftp://127.0.0.1:1/exports/rows.json.gz cannot be read" in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout + result.report_path.read_text()
    assert result.states == []
