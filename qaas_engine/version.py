"""The engine's version, recorded in every report and encodings file."""

__version__ = "0.1.0"
