"""The error type for problems the user can fix (bad input, bad config)."""


class CroptuneError(Exception):
    """A user-facing error: the CLI prints its message without a traceback."""
