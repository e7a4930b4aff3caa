"""Errors the command line reports as one clear line."""


class UserError(Exception):
    """A problem the user can fix (missing tool, bad input); printed without a traceback."""
