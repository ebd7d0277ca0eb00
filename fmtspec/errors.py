class FmtspecError(Exception):
    """A problem with the user's input: the CLI prints its message as one line and exits non-zero."""
