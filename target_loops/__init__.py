"""target-loops: a Singer target that syncs people and product events into Loops (loops.so)."""

from importlib.metadata import PackageNotFoundError, version

try:
    # One version source: ``version`` in pyproject.toml, read from the installed distribution's metadata (the same
    # place singer-sdk reads for ``target-loops --version`` and ``--about``).
    __version__ = version("target-loops")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
