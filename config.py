"""Training options: one dataclass (`TrainConfig`), turned into flags by one parser; each train_<arch>.py
overrides its defaults. Saved beside each run as config.json, and read back from there to resume.

    config = parse_config("cnn", DEFAULTS, ["--data", "data/fashion-mnist", "--epochs", "5"])
    config = make_config("cnn", DEFAULTS, data="data/fashion-mnist")   # the same, from Python (bench, tests)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import time

import cli
from errors import DataError, OptionError, flag
from fileio import atomic_write_text
from metrics import METRICS, check_metric
from models import MODEL_OPTIONS, MODELS, WEIGHTS
from models.weights import find_weight_file
from runtime import check_device


def _opt(default, help, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    data: str = _opt("", "dataset folder: a labels CSV and an image folder (train.csv + train/, labels.csv + "
                         "train_images/, ...), or train/<class>/...")
    arch: str = _opt("", "architecture (set by each train_<arch>.py)", choices=list(MODELS))
    epochs: int = _opt(10, "number of epochs (may be raised with --resume); when not given, raised on small data so the "
                           "run has at least 1000 optimiser steps, or planned by --time-budget")
    batch_size: int = _opt(128, "global batch size (split across torchrun processes); when not given, halved on small "
                                "data until an epoch has at least 25 steps (down to 16)")
    img_size: int = _opt(0, "images are resized to this square size (default 0: from the training images, their median "
                            "shorter side, at most --max-img-size, and at most 32 on a CPU)")
    max_img_size: int = _opt(64, "the largest image size chosen from the images when --img-size is not given")
    time_budget: float = _opt(0.0, "plan the epochs so that training and evaluation end within this many minutes "
                                   "(measured step time; the learning-rate schedule completes); 0: off",
                              metavar="MINUTES")
    lr: float = _opt(1e-3, "peak learning rate; when not given, the script's rate (for batch 128) scaled with the batch "
                           "size: by its square root for AdamW, linearly for SGD")
    optimizer: str = _opt("adamw", "optimiser", choices=["adamw", "sgd"])
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(0.05, "weight decay (decoupled for AdamW)")
    warmup_epochs: float = _opt(1.0, "linear warm-up in epochs (at least 100 steps, at most a quarter of the run; 0: "
                                                  "none), then cosine decay to zero")
    # On: every architecture's recipe here (train_<arch>.py) trains with it.
    label_smoothing: float = _opt(0.1, "label smoothing of the training loss")
    grad_clip: float = _opt(0.0, "clip the gradient norm to this value (0: off)")
    val_split: float = _opt(0.1, "stratified hold-out fraction; 0 trains on everything")
    hflip: bool = _opt(True, "random horizontal flips")
    dihedral: bool = _opt(False, "random vertical flips and right-angle turns (with --hflip: all 8 orientations); when "
                               "not given, on where the images have no up (recipe.py)")
    head_pool: str = _opt("global", "the CNN's dense layers see each feature's average and maximum over the image and "
                                    "its quadrants ('global': objects anywhere) or the last feature map itself ('map': "
                                    "things in place); when not given, 'map' where the training images' average is not "
                                    "flat (recipe.py)", choices=["global", "map"])
    # Off: the demo's garments are upright; flips helped, rotations did not.
    rotate: float = _opt(0.0, "random rotation up to this many degrees either way (0: off)")
    translate: int = _opt(0, "random shift up to this many pixels either way (0: off)")
    erase: float = _opt(0.0, "random erasing: probability of replacing a random rectangle of an image with noise")
    mixup: float = _opt(0.0, "MixUp: blend each batch with itself reversed, by a weight ~ Beta(A, A) (e.g. 0.2; 0: off)")
    cutmix: float = _opt(0.0, "CutMix: paste a box of each batch's reversed images, its area ~ Beta(A, A) (e.g. 1.0; "
                              "0: off); with --mixup too, each batch takes one of the two")
    balance: str = _opt("off", "class imbalance: 'sampler' draws each class equally often, 'loss' weighs each class's "
                               "loss by its inverse frequency", choices=["off", "sampler", "loss"])
    metric: str = _opt("accuracy", f"the competition's metric: {', '.join(METRICS)} or map@K (K >= 1), computed on "
                                    "the validation split every epoch: it decides best.pt and --patience")
    folds: int = _opt(0, "k-fold: train K runs NAME-f1..NAME-fK, each holding out one stratified fold (instead of "
                         "--val-split), and collect their out-of-fold predictions in RUNS/NAME-oof.csv (0: off)")
    fold: int = _opt(0, "with --folds: train only fold I (1..K)")
    patience: int = _opt(0, "early stopping: end the run when the validation score has not improved for this many "
                            "epochs (0: off)")
    ema: float = _opt(0.0, "keep an exponential moving average of the weights with this decay per step (e.g. 0.999; "
                           "0: off); it is what is evaluated and saved for prediction")
    normalize: bool = _opt(True, "normalise the images' channels to zero mean and unit std")
    norm_stats: str = _opt("auto", "the mean/std to normalise with: the training images' (data), the pretrained "
                                   "weights' own (weights), or auto: the weights' with --pretrained, else the data's",
                           choices=["auto", "data", "weights"])
    precision: str = _opt("auto", "fp32, bf16, fp16, or auto: measure which is fastest here",
                          choices=["auto", "fp32", "bf16", "fp16"])
    channels_last: str = _opt("auto", "memory format: on, off, or auto (measured with --precision)",
                              choices=["auto", "on", "off"])
    compile: bool = _opt(False, "compile the model with torch.compile (needs a C++ compiler on the CPU; on one GPU its "
                                "steps replay as CUDA graphs): compiling makes the first step much slower; whether later "
                                "steps are faster depends on the model and machine: bench/compile_step.py measures it")
    seed: int = _opt(0, "random seed (split, initialisation, shuffling, augmentation)")
    name: str = _opt("", "run name (default: <arch>-<date>-<time>)")
    runs_dir: str = _opt("runs", "folder that holds the run folders")
    resume: str = _opt("", "continue the run in this folder from its last.pt")
    resume_schedule: str = _opt("continue", "with --resume and another --epochs: 'continue' goes on from the learning "
                                            "rate reached, a cosine from it down to zero at the new last epoch (the "
                                            "rate never jumps; after a finished schedule it is near zero); "
                                            "'restart' trains the added epochs as a new cycle: warm-up to --lr, then "
                                            "cosine to zero", choices=["continue", "restart"])
    init: str = _opt("", "start from the weights of this checkpoint (the head is replaced if classes differ)")
    pretrained: str = _opt("", "start from ImageNet weights: a local weight file (.safetensors/.pth/.bin) or folder "
                               "(a Hugging Face hub cache, or config.json + weights), nothing fetched; or 'imagenet' "
                               "(the flag alone) to download timm's/torchvision's", nargs="?", const="imagenet",
                           metavar="FILE_OR_FOLDER")
    head_lr_mult: float = _opt(1.0, "the classifier layer learns at this multiple of --lr (e.g. 10 when fine-tuning: "
                                    "the backbone at --lr, the new head faster)")
    freeze_epochs: int = _opt(0, "train only the classifier layer for this many first epochs, the backbone frozen "
                                 "(with --pretrained)")
    skip_bad: bool = _opt(False, "leave out unreadable images (listed in the run folder) instead of stopping")
    labels: str = _opt("", "the labels CSV (default: the first of train.csv, labels.csv, train_labels.csv, "
                           "train_v2.csv in --data)", metavar="FILE")
    train_dir: str = _opt("", "the training images' folder (default: the first of train/, train_images/, images/ in "
                              "--data)", metavar="DIR")
    test_dir: str = _opt("", "the test images' folder (default: test/ or test_images/ in --data)", metavar="DIR")
    id_col: str = _opt("", "id column of the labels CSV (default: detected)")
    label_col: str = _opt("", "label column of the labels CSV (default: detected among label, class, target, tags, "
                              "breed, diagnosis, ...; else one-hot 0/1 columns, one per class)")
    multi_label: bool | None = _opt(None, "multi-label: each image has a space-separated list of tags (sigmoid "
                                          "outputs, binary cross-entropy, per-class thresholds); --no-multi-label: "
                                          "one class per image even if the labels hold spaces (default: detected "
                                          "from the labels)")
    cache_dir: str = _opt("", "where decoded images are cached (default: DATA/.cache)")
    device: str = _opt("auto", "auto (CUDA when available), cpu, cuda, cuda:N")
    cudnn_benchmark: bool = _opt(False, "on a GPU, let cuDNN time every algorithm of each convolution shape on its first "
                                        "use and keep the fastest: can speed up long runs of models with few distinct "
                                        "convolutions, delays the start of ones with many (ReXNet)")
    deterministic: bool = _opt(False, "the same results run after run on a GPU as well (deterministic kernels, no "
                                      "autotuning, no TF32): slower")
    stop_at_epoch: int = _opt(0, "stop (resumably) after this epoch, keeping the schedule of --epochs; "
                                 "continue later with --resume (0: off)")
    progress: bool = _opt(True, "show a progress bar per epoch")
    allow_data_change: bool = _opt(False, "with --resume: continue although the dataset's files changed since the run "
                                          "began (its training and validation images then change)")
    find_lr: bool = _opt(False, "find a learning rate instead of training: a range test (the rate rising from 1e-7 to "
                                "10 over up to 300 steps of this run's model, optimiser and data) writes "
                                "RUNS/NAME-lr-find/ (lr_find.csv, .png, .json) and ends with the command to train "
                                "with the suggested --lr; nothing trained is kept (not with --resume or --folds, nor "
                                "under torchrun)")

    def __post_init__(self):
        if isinstance(self.pretrained, bool):  # config.json of runs from before local weights: a bool
            self.pretrained = "imagenet" if self.pretrained else ""


# Smaller images hold too little to classify and leave nothing after most architectures' downsampling (a
# model may need more: the trainer tries it on a batch of that size before training).
MIN_IMG_SIZE = 8


def check_img_size(value):
    if value != 0 and value < MIN_IMG_SIZE:
        raise OptionError(f"--img-size must be at least {MIN_IMG_SIZE} (or 0: from the images), got {value}")
# BatchNorm normalises a training batch by its own statistics: one image has none (its variance is zero).
MIN_BATCH = 2
# The longest name of a file or folder (bytes) on the usual file systems (ext4, XFS, APFS, NTFS).
NAME_MAX = 255


# The values each option allows, checked by `check_config` for every run (given as flags, saved in config.json, or
# from Python): `minimum` / `maximum` inclusive, `above` / `below` exclusive, `why` said with a value outside them;
# `check`: a function of the value that raises an OptionError (a format). Every int and float option has its range
# here (a test holds it); `choices` are the fields' own (their flags' too).
LIMITS = {
    "epochs": dict(minimum=1), "img_size": dict(minimum=0, check=check_img_size), "max_img_size": dict(minimum=MIN_IMG_SIZE),
    "time_budget": dict(minimum=0),
    "batch_size": dict(minimum=MIN_BATCH, why=f"BatchNorm needs at least {MIN_BATCH} images in a training batch"),
    "lr": dict(above=0), "head_lr_mult": dict(above=0), "momentum": dict(minimum=0, below=1),
    "label_smoothing": dict(minimum=0, below=1), "val_split": dict(minimum=0, below=1), "erase": dict(minimum=0, below=1),
    "ema": dict(minimum=0, below=1), "rotate": dict(minimum=0, maximum=180),
    **{name: dict(minimum=0) for name in ("weight_decay", "warmup_epochs", "grad_clip", "translate", "mixup", "cutmix",
                                          "folds", "fold", "patience", "freeze_epochs", "stop_at_epoch")},
    "seed": dict(minimum=0, maximum=cli.MAX_SEED, why="numpy's and scikit-learn's seeds are 32-bit"),
    "device": dict(check=check_device),
}


# Flags that may differ from the saved run when resuming; any other flag must match it.
# --data: the dataset folder may have moved (the fingerprint of its files and the validation files, which
# `session.check_same_data` compares, refuse other data).
RESUMABLE_CHANGES = {"epochs", "stop_at_epoch", "progress", "resume", "device", "runs_dir", "cache_dir", "compile",
                     "allow_data_change", "patience", "deterministic", "cudnn_benchmark", "resume_schedule", "data"}


# The options that follow the data when not given on the command line (recipe.py); a resumed run keeps its own.
FOLLOW_DATA = ("batch_size", "lr", "epochs", "dihedral", "translate", "head_pool")



def build_parser(arch: str, defaults: dict) -> argparse.ArgumentParser:
    parser = cli.Parser(prog=script_name(arch), description=f"Train the {arch} architecture on an image dataset.",
                        argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "arch":
            continue
        flag_name = flag(f.name)
        default = defaults.get(f.name, f.default)
        help_text = f.metadata["help"] + (f" (default: {default})" if default not in ("", None) else "")
        if f.type in ("bool", bool, "bool | None"):  # bool | None: unset (None) unless given
            parser.add_argument(flag_name, action=argparse.BooleanOptionalAction, help=help_text)
        elif "nargs" in f.metadata:
            parser.add_argument(flag_name, type=str, nargs=f.metadata["nargs"], const=f.metadata["const"], help=help_text,
                                metavar=f.metadata["metavar"])
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            parser.add_argument(flag_name, type=kind, help=help_text, choices=f.metadata.get("choices"),
                                metavar=None if "choices" in f.metadata else f.metadata.get("metavar", f.name.upper()))
    return parser


def built_in_defaults() -> dict:
    """Every option at its built-in default (before a script's own defaults)."""
    return dataclasses.asdict(TrainConfig())


def _check_defaults(arch: str, defaults: dict):
    unknown = set(defaults) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"{script_name(arch)} sets unknown defaults {sorted(unknown)}")


def make_config(arch: str, defaults: dict, **values) -> TrainConfig:
    """The options of train_<arch>.py with its `defaults`, overridden by `values`, checked as flags are."""
    _check_defaults(arch, defaults)
    config = TrainConfig(**{**built_in_defaults(), **defaults, **values, "arch": arch})
    check_config(config)
    return config


def parse_config(arch: str, defaults: dict, argv=None) -> TrainConfig:
    """Script defaults, overridden by the saved run when resuming, overridden by the flags given."""
    _check_defaults(arch, defaults)
    given = vars(build_parser(arch, defaults).parse_args(argv))
    if given.get("find_lr") and given.get("resume"):  # before the resumed run is read: it is not about that run
        raise OptionError(FIND_LR_WITH_RESUME)
    values = {**built_in_defaults(), **defaults, "arch": arch}
    if given.get("resume"):
        saved = read_saved_config(Path(given["resume"]))
        if saved.get("arch") != arch:
            raise OptionError(f"--resume {given['resume']}: that run trained {saved.get('arch')!r}, "
                            f"not {arch!r}; use {script_name(saved.get('arch'))}")
        changed = [k for k, v in given.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v]
        if changed:
            raise OptionError(f"--resume: {', '.join(flag(k) for k in changed)} cannot change when resuming (only "
                              f"{', '.join(flag(k) for k in sorted(RESUMABLE_CHANGES))} can)")
        # An option the saved run does not know did not exist then: it keeps its built-in (off) default.
        values.update({k: saved.get(k, default) for k, default in built_in_defaults().items() if k != "arch"})
        if "data" not in given:
            values["data"] = saved_data_folder(saved, given["resume"])
    values.update(given)
    config = TrainConfig(**values)
    check_config(config)
    return config


def saved_data_folder(saved: dict, run: str) -> str:
    """The dataset folder of the saved run (a config.json) `run`: --data as it was given, when it is the folder the
    run began on (its absolute path, "data_path", is recorded beside it); else that absolute path (resumed from
    another working folder); else --data as given, when there is a folder there (the dataset moved: its
    fingerprint decides whether it is the same data). Neither there: an error asking for its new place."""
    given, absolute = str(saved.get("data", "")), saved.get("data_path")
    here = Path(given).is_dir() if given else False
    if here and (not absolute or os.path.abspath(given) == absolute):
        return given
    if absolute and Path(absolute).is_dir():
        return absolute
    if here:
        return given
    also = f" (nor {absolute})" if absolute and absolute != given else ""
    raise DataError(f"--resume {run}: the run's dataset folder {given} does not exist{also}; if it has moved",
                    option="data", fix="give its new place with {flag} NEWPATH")


def script_name(arch: str) -> str:
    """The training script of an architecture (the one place its name is spelled)."""
    return f"train_{arch}.py"


def fold_name(base: str, fold: int) -> str:
    """The run of fold `fold` of the k-fold runs named `base` (the one place the suffix is spelled)."""
    return f"{base}-f{fold}"


def fold_base(config: dict) -> str | None:
    """The k-fold runs' name (--name) of a fold's run config (a config.json), or None when it is no fold."""
    name, fold = str(config.get("name", "")), config.get("fold") or 0
    suffix = fold_name("", fold)
    return name[:-len(suffix)] if fold and config.get("folds", 0) >= 2 and name.endswith(suffix) else None


def default_run_name(arch: str) -> str:
    """A new run's name when --name is not given: <arch>-<date>-<time>."""
    return f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


FIND_LR_WITH_RESUME = ("--find-lr cannot be used with --resume: the finder tries rates on a freshly built model "
                       "(run it with the run's options, without --resume)")


def check_config(config: TrainConfig):
    """A clear error naming the flag for an option no run can use: each option's allowed values (LIMITS), then the
    options that do not go together."""
    if not config.data:
        raise OptionError("--data DIR is required (a folder with train.csv + train/, or train/<class>/...)")
    for f in dataclasses.fields(TrainConfig):
        check_value(f, getattr(config, f.name))
    if config.folds == 1 or (config.folds and not config.fold <= config.folds):
        raise OptionError(f"--folds must be 0 (off) or at least 2, and --fold between 1 and --folds; got --folds "
                          f"{config.folds} --fold {config.fold}")
    if config.fold and not config.folds:
        raise OptionError("--fold I needs --folds K")
    if config.find_lr and config.resume:
        raise OptionError(FIND_LR_WITH_RESUME)
    if config.find_lr and config.folds:
        raise OptionError("--find-lr cannot be used with --folds: the folds train with one rate; find it once without "
                          "--folds (and --fold), then train the folds with the suggested --lr")
    if config.patience and not config.val_split and not config.folds:
        raise OptionError(f"--patience {config.patience} waits for a better validation score, and --val-split 0 holds "
                          "out no images to score: hold out some with --val-split (e.g. 0.1), or train without "
                          "--patience")
    check_metric(config.metric, config.multi_label)  # it names --metric and its value (errors.explain spells them)
    if config.id_col and config.id_col == config.label_col:
        raise OptionError(f"{flag('id_col')} and {flag('label_col')} both name the column {config.id_col!r}: an "
                          "image's id cannot be its label")
    if config.pretrained and config.arch not in WEIGHTS:  # before --norm-stats, which follows from --pretrained
        raise OptionError(f"{config.arch} has no pretrained weights: it trains from scratch", option="pretrained",
                          value=config.pretrained, fix="train without {flag}")
    for name, arch in MODEL_OPTIONS.items():
        if config.arch != arch and getattr(config, name) != TrainConfig.__dataclass_fields__[name].default:
            raise OptionError(f"an option of the {arch} only (models/{arch}.py), not of {config.arch}",
                              option=name, value=getattr(config, name), fix="train without {flag}")
    if config.norm_stats == "weights" and not config.pretrained:
        raise OptionError("--norm-stats weights needs --pretrained (weights whose normalisation to use)")
    if not config.resume:  # a resumed run starts from its own last.pt: these files were read when it began
        check_start_files(config)
    check_run_name(config)


def check_value(f: dataclasses.Field, value):
    """The value of the TrainConfig field `f` within what it allows (its choices, LIMITS)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(f"{flag(f.name)} must be a finite number, got {value}")
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        raise OptionError(f"{flag(f.name)} must be one of {', '.join(map(str, f.metadata['choices']))}, got {value!r}")
    limits = LIMITS.get(f.name, {})
    if "check" in limits:
        limits["check"](value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, high = limits.get("minimum", limits.get("above")), limits.get("maximum", limits.get("below"))
    if ((low is not None and (value < low or (value == low and "above" in limits)))
            or (high is not None and (value > high or (value == high and "below" in limits)))):
        why = f" ({limits['why']})" if "why" in limits else ""
        raise OptionError(f"{flag(f.name)} must be {allowed(limits)}, got {value}{why}")


def allowed(limits: dict) -> str:
    """The values of an option's LIMITS, in words: "at least 1", "in [0, 1)", "positive", ..."""
    low, high = limits.get("minimum", limits.get("above")), limits.get("maximum", limits.get("below"))
    if low is not None and high is not None:
        return f"in {'(' if 'above' in limits else '['}{low}, {high}{')' if 'below' in limits else ']'}"
    if low is not None:
        return ("positive" if low == 0 else f"above {low}") if "above" in limits else f"at least {low}"
    return f"below {high}" if "below" in limits else f"at most {high}"


def check_start_files(config: TrainConfig):
    """The files a new run starts from, there before any image is decoded: --pretrained's weights (a file or
    folder) and --init's checkpoint; and --runs-dir, a folder if it is there."""
    if config.pretrained and config.pretrained != "imagenet":
        find_weight_file(Path(config.pretrained))  # its WeightsError names --pretrained and the source
    if config.init and not Path(config.init).exists():
        raise OptionError("no such checkpoint file or run folder", option="init", value=config.init)
    if Path(config.runs_dir).exists() and not Path(config.runs_dir).is_dir():
        raise OptionError("is a file, not a folder of runs", option="runs_dir", value=config.runs_dir)


def check_run_name(config: TrainConfig):
    """--name: one folder name inside --runs-dir, short enough for the names made from it (with --folds, the
    folds' NAME-fK and RUNS/NAME-oof.json's temporary file) to be file names."""
    name = config.name
    if not name or config.resume:  # a resumed run's name is its folder's
        return
    if name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
        raise OptionError(f"--name {name!r}: a run name is one folder name inside --runs-dir "
                          "(no '/', '\\', '.' or '..', no spaces around it)")
    # The atomic writer's temporary file beside RUNS/NAME-oof.json: .NAME-oof.json.<pid>.tmp (a pid has 7 digits).
    made = [fold_name(name, config.folds), f".{name}-oof.json.{9_999_999}.tmp"] if config.folds else [name]
    longest = max(len(n.encode()) for n in made)
    if longest > NAME_MAX:
        extra = f" (with --folds {config.folds}: {longest - len(name.encode())} bytes more for the names made from it)" \
            if config.folds else ""
        raise OptionError(f"--name: {len(name.encode())} bytes is too long for a run name{extra}: a file name has at "
                          f"most {NAME_MAX} bytes; choose a shorter one")


def read_saved_config(run_dir: Path) -> dict:
    """The config.json of the run in `run_dir`, which must hold a resumable run."""
    path = run_dir / "config.json"
    if not (run_dir / "last.pt").is_file() or not path.is_file():
        raise DataError(f"--resume {run_dir}: no run there (expected {run_dir}/last.pt and config.json)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"--resume {run_dir}: {path} cannot be read ({e})") from None


def save_config(config: TrainConfig, run_dir: Path):
    """config.json: the options, and the dataset folder's absolute path ("data_path"), which finds it when the run
    is resumed from another working folder (`saved_data_folder`)."""
    values = {**dataclasses.asdict(config), "data_path": os.path.abspath(config.data)}
    atomic_write_text(run_dir / "config.json", json.dumps(values, indent=2))


# Flags that say where or how a run is carried out, not what it trains: left out of its command (with data_path,
# which config.json records beside --data: `save_config`).
NOT_IN_COMMAND = {"arch", "data", "name", "runs_dir", "resume", "progress", "stop_at_epoch", "device", "cache_dir",
                  "compile", "cudnn_benchmark", "allow_data_change", "find_lr", "data_path"}
