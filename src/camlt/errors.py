"""What camlt tells a user, apart from what is a bug.

Every error a user can cause and fix (a bad key, a missing file, a damaged checkpoint, a model
that diverged) derives from ``UserError``: the command line prints it as one line. Any other
exception is a bug in camlt, and the command line shows its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix, said in one line that names the key, file or value."""


class UsageError(UserError, ValueError):
    """A value a function or command was given that it cannot take (a count below 1, a class
    name the model does not have, a batch larger than the data)."""


def printable(text: str) -> str:
    """``text`` with control characters written as escapes, so that a file or class name with
    a terminal escape sequence in it is shown, not obeyed (a cut name could leave a terminal red)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
