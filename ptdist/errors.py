"""The one exception type for mistakes a user can fix (bad config, unknown name, bad file)."""


class PtdistError(Exception):
    """A user-facing error: the message names the problem and the fix.

    The CLI prints it without a traceback and exits with status 2; anything else that escapes
    is a bug in ptdist and keeps its traceback.
    """
