"""``python -m tap_segment_archive``: the same as the ``tap-segment-archive`` console script."""

from tap_segment_archive.tap import main

if __name__ == "__main__":
    main()
