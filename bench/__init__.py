"""The benchmark: ``python -m bench`` (``make bench``, ``make bench-quick``); see
docs/performance.md."""
