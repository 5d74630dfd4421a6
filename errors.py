"""The errors a user can fix. Each message names the file, row, flag or setting at fault; the scripts print it
as `error: ...` and exit with status 1, without a traceback."""


class UsageError(Exception):
    """A problem the user can fix (the base of the three kinds below)."""


class DataError(UsageError, ValueError):
    """The user's files: images, CSVs, checkpoints, run folders."""


class OptionError(UsageError, ValueError):
    """A flag's value, or flags that do not go together."""


class SetupError(UsageError, RuntimeError):
    """The machine: no CUDA where it was asked for, no C++ compiler for --compile, no network for weights."""
