"""The one base class of user errors.

Anything a user can fix (a setting, a file, a data row, a hub id) raises a ``G2RLError``
subclass whose message names the bad field, file, line or value and says how to fix it.
The CLI prints it as one line, without a traceback, and exits 2 (``--debug`` shows the
traceback). Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class G2RLError(Exception):
    """A user error: the message names what is wrong and how to fix it."""


class ConfigError(G2RLError, ValueError):
    """A bad configuration value or parameter file; the message names the field."""


class DataError(G2RLError, ValueError):
    """A bad or missing data file, row or benchmark; the message names the file and line or the benchmark."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file, model directory or run directory that does not exist."""
