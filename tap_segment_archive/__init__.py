"""tap-segment-archive: a Singer tap for Segment's S3 / GCS archive, shipped with target-loops.

See ``tap.py`` for how it reads, ``ledger.py`` for its state and the README's "Backfill from a Segment export".
"""

from tap_segment_archive.tap import TapSegmentArchive

__all__ = ["TapSegmentArchive"]
