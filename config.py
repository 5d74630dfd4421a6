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
from dataclasses import dataclass, field
from pathlib import Path

import time

import cli
from errors import DataError, OptionError, flag
from fileio import atomic_write_text
from metrics import METRICS, check_metric
from models import MODELS


def _opt(default, help, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    data: str = _opt("", "dataset folder: a labels CSV and an image folder (train.csv + train/, labels.csv + "
                         "train_images/, ...), or train/<class>/...")
    arch: str = _opt("", "architecture (set by each train_<arch>.py)", choices=list(MODELS))
    epochs: int = _opt(10, "number of epochs (may be raised with --resume)")
    batch_size: int = _opt(128, "global batch size (split across torchrun processes)")
    img_size: int = _opt(28, "images are resized to this square size")
    lr: float = _opt(1e-3, "peak learning rate")
    optimizer: str = _opt("adamw", "optimiser", choices=["adamw", "sgd"])
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(0.05, "weight decay (decoupled for AdamW)")
    warmup_epochs: float = _opt(1.0, "linear warm-up in epochs (at most a quarter of the run), then cosine decay to zero")
    # On: every architecture's recipe here (train_<arch>.py) trains with it.
    label_smoothing: float = _opt(0.1, "label smoothing of the training loss")
    grad_clip: float = _opt(0.0, "clip the gradient norm to this value (0: off)")
    val_split: float = _opt(0.1, "stratified hold-out fraction; 0 trains on everything")
    hflip: bool = _opt(True, "random horizontal flips")
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

# Flags that may differ from the saved run when resuming; any other flag must match it.
RESUMABLE_CHANGES = {"epochs", "stop_at_epoch", "progress", "resume", "device", "runs_dir", "cache_dir", "compile",
                     "allow_data_change", "patience", "deterministic", "cudnn_benchmark", "resume_schedule"}


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
    values.update(given)
    config = TrainConfig(**values)
    check_config(config)
    return config


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
    """A clear error naming the flag for an option no run can use."""
    if not config.data:
        raise OptionError("--data DIR is required (a folder with train.csv + train/, or train/<class>/...)")
    for f in dataclasses.fields(TrainConfig):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f"{flag(f.name)} must be a finite number, got {value}")
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise OptionError(f"{flag(name)} must be at least 1, got {getattr(config, name)}")
    if config.img_size < MIN_IMG_SIZE:
        raise OptionError(f"--img-size must be at least {MIN_IMG_SIZE}, got {config.img_size}")
    for name in ("erase", "ema", "label_smoothing", "momentum", "val_split"):
        if not 0 <= getattr(config, name) < 1:
            raise OptionError(f"{flag(name)} must be in [0, 1), got {getattr(config, name)}")
    for name in ("translate", "rotate", "weight_decay", "grad_clip", "warmup_epochs", "stop_at_epoch", "seed",
                 "freeze_epochs", "mixup", "cutmix", "patience", "folds", "fold"):
        if getattr(config, name) < 0:
            raise OptionError(f"{flag(name)} cannot be negative, got {getattr(config, name)}")
    if config.lr <= 0:
        raise OptionError(f"--lr must be positive, got {config.lr}")
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
    if config.head_lr_mult <= 0:
        raise OptionError(f"--head-lr-mult must be positive, got {config.head_lr_mult}")
    check_metric(config.metric, config.multi_label)  # it names --metric and its value (errors.explain spells them)
    if config.id_col and config.id_col == config.label_col:
        raise OptionError(f"{flag('id_col')} and {flag('label_col')} both name the column {config.id_col!r}: an "
                          "image's id cannot be its label")
    if config.norm_stats == "weights" and not config.pretrained:
        raise OptionError("--norm-stats weights needs --pretrained (weights whose normalisation to use)")
    if config.name and (config.name in (".", "..") or any(c in config.name for c in "/\\\0")
                        or config.name != config.name.strip()):
        raise OptionError(f"--name {config.name!r}: a run name is one folder name inside --runs-dir "
                          "(no '/', '\\', '.' or '..', no spaces around it)")


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
    atomic_write_text(run_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=2))


# Flags that say where or how a run is carried out, not what it trains: left out of its command.
NOT_IN_COMMAND = {"arch", "data", "name", "runs_dir", "resume", "progress", "stop_at_epoch", "device", "cache_dir",
                  "compile", "cudnn_benchmark", "allow_data_change", "find_lr"}
