"""target-loops with its HTTP layer answered locally: every write counts as accepted (200) without being sent.

Used by ``bench/ledger.py`` to warm a ledger with a million contacts in minutes instead of the hours a million
real requests take: everything else is the real run (reader, validation, rules, preflight, coalescing,
fingerprints, ``_remember``), so the ledger holds exactly what a first run that Loops accepted in full would leave.
The start-of-run GETs (API key, properties, lists) still go to ``base_url``, so the ledger's team namespace is the
sandbox's.

    python bench/warm_target.py --config config.json --input file.singer
"""

from __future__ import annotations

from collections.abc import Sequence

from target_loops.client import LoopsClient
from target_loops.operations import LoopsRequest, Outcome, OutcomeKind
from target_loops.target import TargetLoops


def _accept_all(self: LoopsClient, batch: Sequence[LoopsRequest]) -> list[Outcome]:
    return [Outcome(OutcomeKind.DELIVERED, status=200, attempts=1) for _ in batch]


LoopsClient.send_many = _accept_all  # type: ignore[method-assign]

if __name__ == "__main__":
    TargetLoops.cli()
