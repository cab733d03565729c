"""The one exception type that means "the user asked for something we cannot do"."""


class BakingError(Exception):
    """A user error: the message names the problem and how to fix it, on one line.

    The CLI prints it as `lm-eval-baking: error: MESSAGE` and exits with
    status 2; anything else that escapes is a bug and keeps its traceback.
    Values that come from files are quoted with `utils.text.quoted` so a
    newline in a file can never split the message.
    """
