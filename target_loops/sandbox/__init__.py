"""A local, Loops-compatible API server for testing target-loops without a real Loops team.

``Sandbox`` runs it in a background thread (tests, notebooks); ``target-loops-sandbox`` runs it from a shell.
Its behaviour follows Loops' API reference (https://loops.so/docs/api-reference), stricter where the documents are
silent (listed in the README); faults, latency and the rate limit are configurable.
"""

from target_loops.sandbox.app import SandboxApp, SandboxConfig
from target_loops.sandbox.server import Sandbox, main
from target_loops.sandbox.store import CONTACT_OWN_KEYS, LoopsError, Store

__all__ = ["CONTACT_OWN_KEYS", "LoopsError", "Sandbox", "SandboxApp", "SandboxConfig", "Store", "main"]
