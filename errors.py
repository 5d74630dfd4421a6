"""The errors a user can fix. Each message names the file, row or setting at fault; the scripts print it as
`error: ...` and exit with status 1, without a traceback.

Lower layers (data, models, checkpoint, runtime, fileio) state the facts in neutral words, so that a notebook
user calling them gets no command-line advice; when an option would fix it they name that option (the
TrainConfig field, e.g. "label_col") in `option`, and `fix` says what to do with it. The command-line layer
turns that into the flag (`explain`):

    raise DataError(f"{csv}: no label column among {names}", option="label_col", fix="name it")
    # python train_cnn.py ...  ->  error: train.csv: no label column among label, class; name it with --label-col
"""


class UsageError(Exception):
    """A problem the user can fix (the base of the three kinds below). `option`: the setting that would fix it
    (a TrainConfig / predict.py option name); `fix`: what to do with it ("name it", "pass it to leave them out"),
    followed by "with <flag>" unless it places the flag itself as "{flag}" ("or train without {flag}");
    `value`: the value of `option` at fault, when the message should start with it."""

    def __init__(self, message: str, *, option: str | None = None, fix: str | None = None, value=None):
        super().__init__(message)
        self.option, self.fix, self.value = option, fix, value


class DataError(UsageError, ValueError):
    """The user's files: images, CSVs, checkpoints, run folders."""


class OptionError(UsageError, ValueError):
    """A setting's value, or settings that do not go together."""


class SetupError(UsageError, RuntimeError):
    """The machine: no CUDA where it was asked for, no C++ compiler for compiling, no network for weights."""


def flag(option: str) -> str:
    """The command-line spelling of an option: "label_col" -> "--label-col" (every flag is spelled here)."""
    return "--" + option.replace("_", "-")


def explain(error: UsageError) -> str:
    """The message for the command line: the facts, led by the flag and its value when `value` is set, and
    followed by what to do with the flag when `fix` is."""
    text = str(error)
    option = getattr(error, "option", None)
    if not option:
        return text
    if getattr(error, "value", None) is not None:
        text = f"{flag(option)} {error.value}: {text}"
    fix = getattr(error, "fix", None)
    if fix:
        text = f"{text}; {fix.replace('{flag}', flag(option)) if '{flag}' in fix else f'{fix} with {flag(option)}'}"
    return text
