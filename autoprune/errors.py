"""The one exception type users see.

Every problem caused by the user's input (a space file, a CLI flag, a policy file, a
checkpoint) is raised as :class:`AutopruneError` with a message that fits on one line and
names the file, key or flag and what is allowed. The CLI prints that line on stderr and exits
with code 2; anything else escaping is a bug in autoprune.
"""

from __future__ import annotations


class AutopruneError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
