"""The SDK's floor: a singer-sdk target that reads, validates and batches records, then does nothing with them.

Default reader (``SingerReader``), default validator (jsonschema, ``validate_records`` on), default batch size; its
``process_batch`` is empty. Whatever target-loops does beyond this is its own cost.

    python bench/noop_target.py --config config.json --input file.singer
"""

from __future__ import annotations

from singer_sdk import typing as th
from singer_sdk.sinks import BatchSink
from singer_sdk.target_base import Target


class NoopSink(BatchSink):
    """Keeps the SDK's default ``process_record`` (append to the batch); the batch is dropped."""

    def process_batch(self, context: dict) -> None:
        pass


class NoopTarget(Target):
    name = "target-noop"
    config_jsonschema = th.PropertiesList().to_dict()
    default_sink_class = NoopSink


if __name__ == "__main__":
    NoopTarget.cli()
