"""target-loops: a Singer target that syncs people and product events into Loops (loops.so)."""

__version__ = "0.1.0"
