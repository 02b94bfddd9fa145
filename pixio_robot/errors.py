"""The one exception type users see.

Every check on user input raises `PixioError` with a single line that names the problem and
what to do about it; the CLI prints that line instead of a traceback.
"""


class PixioError(Exception):
    """Bad input, a bad file or a bad configuration: the message says what and how to fix it."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise PixioError(message)
