"""Issue 10 items 4 and 5: the API key is never echoed; base_url is parsed as strictly as requests connects."""

from __future__ import annotations

from typing import Any

import pytest

from target_loops.client import BaseUrlError, ClientSettings, LoopsClient, check_base_url
from target_loops.operations import LoopsRequest
from target_loops.sandbox import Sandbox

KEY = "sandbox-key"


def client_for(sandbox: Sandbox, api_key: str, **overrides: Any) -> LoopsClient:
    fields: dict[str, Any] = {
        "base_url": sandbox.url,
        "api_key": api_key,
        "requests_per_second": 200,
        "max_concurrency": 2,
        "timeout_seconds": 5,
        "max_retries": 1,
        "backoff_seconds": 0.01,
    }
    fields.update(overrides)
    return LoopsClient(ClientSettings(**fields))


@pytest.mark.parametrize("raw", [f"{KEY}\n", f"{KEY}\r\n", f"  {KEY}\t", f"\n{KEY}"])
def test_surrounding_whitespace_of_the_key_is_stripped(sandbox: Sandbox, raw: str) -> None:
    client = client_for(sandbox, raw)
    try:
        assert client.check_api_key() == "Sandbox team"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("…your key…", "non-ASCII"),
        ("sandbox key", "whitespace"),
        ("sandbox-key\nX-Other: 1", "whitespace"),
        ("sandbox\x00key", "control"),
        ("clé-secrète", "non-ASCII"),
        ("   ", "empty"),
    ],
)
def test_a_malformed_key_is_refused_by_name_and_never_echoed(sandbox: Sandbox, raw: str, why: str) -> None:
    with pytest.raises(ValueError, match="api_key") as info:
        client = client_for(sandbox, raw)
        try:
            client.check_api_key()
        finally:
            client.close()
    text = str(info.value)
    assert why in text
    for part in raw.split():
        assert len(part) < 4 or part not in text  # no word of the key (short ones occur in any sentence)
    assert sandbox.store.requests() == []  # refused before anything was sent


def test_clean_api_key() -> None:
    from target_loops.client import ApiKeyError, clean_api_key

    assert clean_api_key("  abc-123_XYZ.=\r\n") == "abc-123_XYZ.="
    with pytest.raises(ApiKeyError, match="api_key"):
        clean_api_key("abc def")
    assert issubclass(ApiKeyError, ValueError)


def test_no_answer_can_put_the_key_in_a_message(sandbox: Sandbox) -> None:
    """Loops' message is passed on, but never with the key in it (a proxy or a server may echo headers)."""
    client = client_for(sandbox, KEY)
    try:
        outcome = client.send(LoopsRequest("PUT", "/v1/contacts/update", {"email": f"{KEY}-not-an-email"}))
    finally:
        client.close()
    assert outcome.status == 400
    assert KEY not in (outcome.message or "")


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example\\@127.0.0.1/api",  # urlsplit says 127.0.0.1; requests connects to evil.example
        "https://app.loops.so\\@127.0.0.1/api",
        "http://127.0.0.1:8787\\api",
        "http://user:secret-pass@127.0.0.1:8787/api",  # requests would swap the Bearer key for Basic auth
        "https://user@app.loops.so/api",
        "https://:secret-pass@app.loops.so/api",
        "https://app.loops.so/api?x=1",
        "https://app.loops.so/api#frag",
        "https://app.loops.so /api",
    ],
)
def test_base_url_is_parsed_as_strictly_as_requests_connects(url: str) -> None:
    with pytest.raises(BaseUrlError, match="base_url") as info:
        check_base_url(url)
    assert "secret-pass" not in str(info.value)
