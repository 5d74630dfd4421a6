"""The command lines' shared behaviour (cli.py): one-line argparse errors, help and defaults for every option,
a clean exit into a closed pipe."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

import cli
import config
import data
import predict
import runs
from conftest import ROOT, write_csv


class Built(Exception):
    """Raised in place of parsing, carrying the parser a main() built."""


def built_parser(main, argv, monkeypatch) -> argparse.ArgumentParser:
    def capture(self, args=None, namespace=None):
        raise Built(self)
    monkeypatch.setattr(cli.Parser, "parse_args", capture)
    with pytest.raises(Built) as e:
        main(argv)
    return e.value.args[0]


def all_parsers(monkeypatch) -> dict[str, argparse.ArgumentParser]:
    """Every command line's parser, subcommands' parsers included."""
    import train_cnn
    parsers = {"train_cnn.py": config.build_parser("cnn", train_cnn.DEFAULTS), "predict.py": predict.build_parser(),
               "data.py": data.build_parser(), "runs.py": built_parser(runs.main, [], monkeypatch)}
    for name, parser in list(parsers.items()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.update({f"{name} {sub}": p for sub, p in action.choices.items()})
    return parsers


def test_every_option_has_help_and_shows_its_default(monkeypatch):
    import train_cnn
    train_defaults = {**config.built_in_defaults(), **train_cnn.DEFAULTS}
    missing = []
    for name, parser in all_parsers(monkeypatch).items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            text = formatter._expand_help(action) if action.help else ""
            # The train parser leaves unset options out (SUPPRESS): its defaults are the config's.
            default = train_defaults.get(action.dest) if name.startswith("train_") else action.default
            if not text:
                missing.append(f"{name} {action.dest}: no help")
            elif default not in (None, False, "", argparse.SUPPRESS) and "default" not in text:
                missing.append(f"{name} {action.dest}: default {default!r} not shown")
    assert not missing, "\n".join(missing)


def test_defaults_are_shown_once():
    text = " ".join(predict.build_parser().format_help().split())  # as one line: --help wraps its lines
    assert "(default: 256)" in text  # --batch-size, shown by cli.HelpFormatter
    assert text.count("(default: True)") == 1  # --progress: BooleanOptionalAction shows its own


@pytest.mark.parametrize("main, argv, prog", [
    (lambda argv: config.parse_config("cnn", {}, argv), ["--data", "d", "--epochs", "many"], "train_cnn.py"),
    (predict.main, ["runs/x", "--data", "d", "--weights", "fit", "--bogus"], "predict.py"),
    (predict.main, ["runs/x"], "predict.py"),
    (runs.main, ["table", "--nope"], "runs.py"),
    (runs.main, [], "runs.py"),
    (data.main, ["info"], "data.py info"),
    (data.main, ["show", "d", "--per-class", "x"], "data.py show"),
])
def test_argparse_errors_are_one_line_and_a_pointer_to_help(main, argv, prog, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: "), lines
    assert lines[1] == f"(see: python {prog} --help)"
    assert "usage:" not in "\n".join(lines)


def many_classes(root, n=3000):
    """A labels CSV of `n` one-image classes with long names: `data.py info` prints far more than a pipe holds."""
    (root / "train").mkdir(parents=True)
    for i in range(n):
        (root / "train" / f"{i}.png").write_bytes(b"")  # info lists files, it decodes none
    write_csv(root / "train.csv", ["id", "label"], [(i, f"class number {i} " + "x" * 60) for i in range(n)])
    return root


def test_info_into_a_closed_pipe_exits_cleanly(tmp_path):
    root = many_classes(tmp_path / "comp")
    out = subprocess.run(f"set -o pipefail; {sys.executable} data.py info {root} | head -1", shell=True,
                         executable="/bin/bash", capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.startswith(f"{root}: csv layout")
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert out.returncode == 141  # 128 + SIGPIPE, as a shell reports a command cut off by its pipe


def test_runs_table_into_a_closed_pipe_exits_cleanly(tmp_path):
    # A pipe whose reader has already gone: the first write fails, whatever the table's size.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run([sys.executable, "runs.py", "table", "--runs-dir", str(tmp_path)], stdout=write_end,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
    finally:
        os.close(write_end)
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert out.returncode == 141


def test_run_returns_what_main_returns():
    assert cli.run(lambda x: x * 2, 21) == 42


def test_readme_lists_the_runs_table_columns_in_order():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("`runs/runs.md` is the runs table (")
    sentence = readme[start:readme.index("kept up", start)]
    at = 0
    for _, title in runs.TABLE_COLUMNS:
        at = sentence.find(title, at)
        assert at >= 0, f"README's runs table omits or misplaces {title!r}"
        at += len(title)


def test_readme_names_every_training_flag():
    readme = (ROOT / "README.md").read_text()
    missing = [config.flag(f) for f in config.built_in_defaults() if f != "arch" and config.flag(f) not in readme]
    assert not missing
