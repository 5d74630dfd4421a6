"""What every command line shares: one parser class (a wrong flag is one `error:` line and a pointer to
--help, not a page of usage), a clean exit when the reader of its output goes away (`... | head`), and SIGTERM
turned into an exception that ends a command as Ctrl-C does (`sigterm_raises`)."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys


# The largest --seed: numpy's legacy generators and scikit-learn's random_state take 32-bit seeds.
MAX_SEED = 2**32 - 1


def int_in(minimum: int, maximum: int | None = None, why: str = ""):
    """An argparse `type` for whole numbers from `minimum` (to `maximum`): a value outside is argparse's one-line
    error naming the flag ("argument --top-k: 0: must be at least 1")."""
    def parse(text: str) -> int:
        value = int(text)  # not a number: argparse's own "invalid int value"
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"{text}: must be {bounds}{f' ({why})' if why else ''}")
        return value
    parse.__name__ = "int"  # argparse names the type in "invalid int value"
    return parse


def checked(check, name: str = "value"):
    """An argparse `type` from a `check(text)` that returns the value or raises a ValueError (an OptionError) with
    the reason: argparse's one-line error naming the flag with that reason."""
    def parse(text: str):
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text}: {e}") from None
    parse.__name__ = name
    return parse


def existing_folder(text: str) -> str:
    """An argparse `type` for a folder that must be there (a folder to read)."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return text


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help keeps the description's own lines and shows each option's default, unless its help already
    says it or it has none worth showing (off, unset)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default == "" or default is argparse.SUPPRESS
                or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse's parser with one-line errors: `error: <message>` and `(see: python <prog> --help)`, exit
    status 2 as argparse's own. Subcommands' parsers are of this class too (argparse makes them so)."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message}\n(see: python {self.prog} --help)\n")


def run(main, *args, **kwargs):
    """Call `main`, and end quietly when stdout is a pipe its reader has closed: the rest of the output goes to
    /dev/null and the exit status is 141 (128 + SIGPIPE, as a shell reports a command stopped by the pipe)."""
    try:
        result = main(*args, **kwargs)
        sys.stdout.flush()  # inside the try: Python's own flush at exit would report the closed pipe
        return result
    except BrokenPipeError:
        # Python flushes stdout again on exit: point it at /dev/null so that flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is (`sigterm_raises`), so that every `finally` runs (the atomic writers
    remove their temporary files) and the command ends as on Ctrl-C."""


@contextlib.contextmanager
def sigterm_raises():
    """Within it SIGTERM raises Terminated, where this is the main thread (elsewhere SIGTERM keeps its handler)."""
    def handle(signum, frame):
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handle)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def interrupted_status(error: KeyboardInterrupt) -> int:
    """The exit status of a command ended by Ctrl-C (130) or SIGTERM (143), as a shell reports the signal."""
    return 128 + (signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT)
