"""sol: run many AI coding agents on one git repository and land their work safely."""

__version__ = "0.1.0"
