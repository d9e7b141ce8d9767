"""target-loops with its HTTP writes answered locally: every write counts as accepted (200) without being sent.

Used by ``bench/ledger.py`` to warm a ledger with a million contacts in minutes instead of the hours a million
real requests take: everything else is the real run (reader, validation, rules, preflight, the outbox's planning,
fingerprints, ledger writes), so the ledger holds exactly what a first run that Loops accepted in full would leave.
The start-of-run GETs (API key, properties, lists) still go to ``base_url``, so the ledger's team namespace is the
sandbox's.

    python bench/warm_target.py --config config.json --input file.singer
"""

from __future__ import annotations

from target_loops.operations import LoopsRequest, Outcome, OutcomeKind
from target_loops.target import TargetLoops


def _accept(self: TargetLoops, request: LoopsRequest) -> Outcome:
    return Outcome(OutcomeKind.DELIVERED, status=200, attempts=1)


TargetLoops._send_request = _accept  # type: ignore[method-assign]

if __name__ == "__main__":
    TargetLoops.cli()
