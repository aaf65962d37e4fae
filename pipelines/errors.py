"""User-facing error type: raised for bad input, printed by the CLI without a traceback."""


class UserError(ValueError):
    """Bad input from a user; the message says what was wrong and how to fix it."""
