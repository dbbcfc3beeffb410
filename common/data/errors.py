"""``DataError``: a malformed data file or record (the message names the file and the record).

``headlab`` prints it as one line without a traceback (:func:`common.cli.user_errors`).
"""

from __future__ import annotations


class DataError(ValueError):
    """A malformed data file or record; the message names the file, the record and the fault."""
