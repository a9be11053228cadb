"""The one exception base every part raises for bad user input.

The CLI turns a :class:`UserError` into exit status 2 and one line on stderr
(no traceback); anything else is an internal error (exit status 1).
"""


class UserError(Exception):
    """Bad input from the user: a malformed model or file, an unsupported feature, a bad option."""
