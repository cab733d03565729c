"""The one exception type that means "the user asked for something we cannot do"."""


class BakingError(Exception):
    """A user error: the message names the problem and how to fix it.

    The CLI prints it as a single line and exits with status 2; anything else
    that escapes is a bug and keeps its traceback.
    """
