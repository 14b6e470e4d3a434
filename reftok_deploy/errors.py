"""One exception type for every user-facing failure: the CLI prints its message on one line and exits non-zero."""


class ReftokError(Exception):
    """A problem with the user's input (path, file, shape, device) described in one line."""

    exit_code = 2
