"""Errors that are part of the API: they say what was wrong and what to do."""


class SafeDenoiserError(ValueError):
    """Bad input from the user. The CLI prints the message and exits with code 2."""
