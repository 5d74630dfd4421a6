"""The commands of the runs table (runs.py table --commands) train their runs again: a fold of a k-fold run into
its own folder, a resumed run as one command or, when a resume changed what it trains, as the sequence."""
from __future__ import annotations

import dataclasses
import importlib
import json
import shlex
from pathlib import Path

import pytest

import config as options
import runs
import trainer
from conftest import write_dataset

FAST = ["--precision", "fp32", "--channels-last", "off", "--no-progress", "--batch-size", "16", "--img-size", "16"]
DEFAULTS = importlib.import_module("train_cnn").DEFAULTS


def train(*args) -> Path:
    return trainer.main("cnn", [str(a) for a in args], **DEFAULTS)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "comp", layout="csv", per_class=12, size=16)


def printed_commands(runs_dir: Path) -> dict[str, list[list[str]]]:
    """Each run's commands as `runs.py table --commands` prints them: {run: [argv of each command]}."""
    table = runs.runs_table(runs_dir, commands=True)
    block = table.split("```")[1].strip().splitlines()
    found = {}
    for line in block:
        name, command = line.split(": ", 1)
        found[name] = [shlex.split(part) for part in command.split(" && ")]
    return found


def run_again(argv: list[str], old: Path, new: Path) -> Path:
    """Run a printed command (python train_cnn.py ...) with its runs folder `old` replaced by `new`."""
    assert argv[:2] == ["python", "train_cnn.py"]
    return train(*[a.replace(str(old), str(new)) for a in argv[2:]])


def test_a_folds_command_trains_it_again_in_its_own_folder(dataset, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    run = train("--data", dataset, "--runs-dir", first, "--name", "kf", "--folds", 3, "--fold", 2, "--epochs", 1, *FAST)
    assert run == first / "kf-f2"
    [argv] = printed_commands(first)["kf-f2"]
    assert argv[argv.index("--name") + 1] == "kf" and argv[argv.index("--fold") + 1] == "2"
    again = run_again(argv, first, second)
    assert again == second / "kf-f2" and (again / "best.pt").is_file()
    assert sorted(p.name for p in second.iterdir() if p.is_dir()) == ["kf-f2"]  # not kf-f2-f2


def test_a_resumed_run_is_one_command_unless_the_resume_changed_it(dataset, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    common = ["--data", dataset, "--runs-dir", first, "--epochs", 2, *FAST, "--device", "cpu"]
    same = train(*common, "--name", "same", "--stop-at-epoch", 1)
    train("--resume", same, "--no-progress")
    longer = train(*common, "--name", "longer", "--stop-at-epoch", 1)
    train("--resume", longer, "--epochs", 3, "--no-progress")
    commands = printed_commands(first)

    # paused and resumed with the same options: one command, the run in one go (no --stop-at-epoch)
    [argv] = commands["same"]
    assert "--stop-at-epoch" not in argv and "--resume" not in argv and argv[argv.index("--epochs") + 1] == "2"

    # the resume raised --epochs: the first 1 epoch trained on the schedule of 2, which one command cannot say
    start, resume = commands["longer"]
    assert start[start.index("--epochs") + 1] == "2" and start[start.index("--stop-at-epoch") + 1] == "1"
    assert resume[2:] == ["--resume", f"{first}/longer", "--epochs", "3"]
    for argv in (start, resume):
        again = run_again(argv, first, second)
    assert again == second / "longer"
    lrs = [[row["lr"] for row in runs.read_metrics(folder / "metrics.csv")] for folder in (longer, again)]
    assert len(lrs[0]) == 3 and lrs[0] == lrs[1]  # the same schedule, epoch by epoch


def test_a_start_from_an_earlier_epoch_replaces_the_starts_after_it(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    config = dataclasses.asdict(options.make_config("cnn", DEFAULTS, data="d", name="r", runs_dir=str(tmp_path)))
    for epochs, done in ((5, 0), (9, 3), (5, 0)):  # trained again from the start with the first options
        (run_dir / "config.json").write_text(json.dumps({**config, "epochs": epochs}))
        runs.update_run_info(run_dir, name="r", arch="cnn", status="running", epochs_done=done)
    info = runs.read_run_info(run_dir)
    assert [s["from_epoch"] for s in info["starts"]] == [1]
    assert runs.run_commands({**config, "epochs": 5}, DEFAULTS, info["starts"]) == \
        [runs.run_command({**config, "epochs": 5}, DEFAULTS)]
    # a run from before the starts were recorded: its config.json's command
    assert runs.run_commands(config, DEFAULTS, None) == [runs.run_command(config, DEFAULTS)]
