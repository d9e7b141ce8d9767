"""What the client says when Loops cannot be reached: the cause whole ("connection refused", never cut mid-word)
and a retry count a user can reconcile with ``max_retries``."""

from __future__ import annotations

import socket

import pytest
import requests

from target_loops.client import ClientSettings, LoopsClient, LoopsUnavailableError, classify
from target_loops.operations import LoopsRequest


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


@pytest.mark.e2e  # a real connection attempt to a closed local port
def test_a_closed_port_is_connection_refused_whole_with_the_real_retry_count() -> None:
    client = LoopsClient(
        ClientSettings(
            base_url=f"http://127.0.0.1:{closed_port()}/api", api_key="test-key-0123456789", backoff_seconds=0.01
        )
    )
    try:
        with pytest.raises(LoopsUnavailableError) as raised:
            client.check_api_key()
    finally:
        client.close()
    message = str(raised.value)
    assert "ConnectionError: connection refused" in message, message
    assert "gave up after 3 retries: the checks at start retry at most 3 times; max_retries (8) is for sending" in (
        message
    )
    assert "HTTPConnectionPool" not in message and "object at 0x" not in message, message


def test_a_long_error_is_cut_at_a_word() -> None:
    error = requests.ConnectionError("word " * 100)
    verdict = classify(LoopsRequest("GET", "/v1/api-key", {}), None, None, None, error)
    assert verdict.message is not None
    text = verdict.message.removeprefix("ConnectionError: ")
    assert text.endswith("…") and text[:-1].split(" ")[-1] == "word", text
