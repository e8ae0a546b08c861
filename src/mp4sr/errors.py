"""The project's own error types: everything a user can cause ends up as one of these."""

from __future__ import annotations

from pathlib import Path


class MP4SRError(Exception):
    """Base class of every error mp4sr raises on purpose (bad input, bad config, missing data)."""


class ConfigError(MP4SRError):
    """A configuration value is unknown, malformed or inconsistent."""


class DataError(MP4SRError):
    """Input data is missing or malformed; the message names the file (and line) and what to do."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
