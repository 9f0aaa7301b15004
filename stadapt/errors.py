"""Errors a user can act on. The CLI prints them as one line and exits with `exit_code`."""


class StadaptError(Exception):
    """A problem with the user's input (a file, a field, a value), not a bug."""

    exit_code = 2


class RecipeError(StadaptError):
    """A recipe that cannot be read or does not validate."""


class DataError(StadaptError):
    """A data set, manifest or video that cannot be used."""


class CheckpointError(StadaptError):
    """A checkpoint or adapter file that is missing, truncated, foreign or unsafe."""
