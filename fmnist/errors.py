"""The one exception type whose message is shown to the user as a single line, without a traceback."""


class FmnistError(Exception):
    """A user-facing error: bad input, missing data, an unusable checkpoint."""
