"""The checkpoint format, owned here alone: what a checkpoint holds, writing it atomically, loading it without
running code (older versions are brought up to date on loading), and rebuilding its model.

A checkpoint is a dict:
    format, version          "imgcomp-checkpoint", CHECKPOINT_VERSION
    spec                     ModelSpec as a dict: everything that rebuilds the model and feeds it images, and how
                             its outputs read (multi_label, thresholds: since version 3; older checkpoints are
                             single-label)
    model                    the weights that predict (the moving average, when the run keeps one)
    config                   the run's TrainConfig as a dict
    epoch, history, best_val_acc, best_epoch, train_time, val_files (relative to the data folder)
    best_val_score           the best validation score by the run's metric (config "metric"); older: best_val_acc
    dataset_key              a fingerprint of the training files and labels (resuming on changed data is noticed)
    training (last.pt only)  what resuming needs: optimizer, scaler, step, partial, rng, cuda_rng, train_model,
                             schedule (LRSchedule.state; older: the schedule over config["epochs"])
"""
from __future__ import annotations

import logging
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

import data
from config import MIN_IMG_SIZE
from errors import DataError
from fileio import atomic_write
from models import MODEL_OPTIONS, MODELS, build_model
from compute import ComputeFormat

log = logging.getLogger("imgcomp")

CHECKPOINT_FORMAT = "imgcomp-checkpoint"
# 1: spec fields at the top level (img_size, channels, normalize + mean/std, mode); 2: one "spec" dict,
# "training" for the resumable state; 3: the spec's multi_label and thresholds (a version 2 spec lacks them: it is
# single-label).
CHECKPOINT_VERSION = 3


@dataclass
class ModelSpec:
    """What rebuilds a trained model and feeds it its images."""
    arch: str
    class_names: list[str]
    img_size: int
    channels: int
    mean: list[float] | None  # None: trained without normalisation
    std: list[float] | None
    compute: ComputeFormat
    hflip: bool  # trained with flips: test-time augmentation may mirror images
    multi_label: bool = False  # one sigmoid per class (the tags of an image), not one softmax over the classes
    # Multi-label: each tag's decision threshold, fitted for the run's metric on the validation images at the best
    # epoch (None: 0.5 each).
    thresholds: list[float] | None = None
    # The architecture's own options it was built with (the CNN's head_pool); {}: its builder's defaults.
    model_options: dict = field(default_factory=dict)
    dihedral: bool = False  # trained in other orientations too (--dihedral): test-time augmentation may turn images

    def build(self) -> nn.Module:
        return build_model(self.arch, len(self.class_names), self.channels, self.img_size, **self.model_options)

    def preprocess(self) -> data.Preprocess:
        """The model's input from uint8 images, as in training (without the augmentation)."""
        return data.Preprocess(self.mean, self.std, None, self.compute.memory_format)

    def to_dict(self) -> dict:
        return {**asdict(self), "compute": asdict(self.compute)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(**{**d, "compute": ComputeFormat(**d["compute"])})


def make_checkpoint(spec: ModelSpec, weights: dict, config: dict, epoch: int, history: list[dict],
                    best_val_acc: float, best_epoch: int, train_time: float, val_files: list[str],
                    dataset_key: str | None = None, training: dict | None = None,
                    best_val_score: float | None = None) -> dict:
    """A checkpoint in the current format; `training` (the resumable state) only in last.pt."""
    ckpt = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "spec": spec.to_dict(), "model": weights,
            "config": config, "epoch": epoch, "history": history, "best_val_acc": best_val_acc,
            "best_epoch": best_epoch, "train_time": train_time, "val_files": val_files}
    if dataset_key is not None:
        ckpt["dataset_key"] = dataset_key
    if best_val_score is not None:
        ckpt["best_val_score"] = best_val_score
    if training is not None:
        ckpt["training"] = training
    return ckpt


def save_checkpoint(path: Path, checkpoint: dict):
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def checkpoint_file(path: str | Path) -> Path:
    """A run folder means its best.pt (predict.py's models, --init); anything else is taken as a checkpoint
    file."""
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise DataError(f"run folder {path} has no best.pt (has the run finished an epoch?)")
        return path / "best.pt"
    return path


def load_checkpoint(path: str | Path, map_location="cpu", resumable: bool = False) -> dict:
    """Load one of our checkpoints without executing code (weights_only), in the current format, its contents
    checked (`check_checkpoint`; `resumable`: it must hold the training state of a last.pt); refuse anything
    else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle errors come in many types
        raise DataError(f"{path} is not a checkpoint of this toolkit, or would need code execution to load "
                        f"(refused): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not a checkpoint of this toolkit (no '{CHECKPOINT_FORMAT}' marker)")
    version = checkpoint.get("version", 1)
    if not _is_int(version) or version < 1:
        raise DataError(f"{path}: its format version {version!r} is not a version of this toolkit's checkpoints")
    if version > CHECKPOINT_VERSION:
        raise DataError(f"{path} was written by a newer version of this toolkit (checkpoint version {version})")
    if version == 1 and "arch" in checkpoint:
        try:
            checkpoint = _from_version_1(checkpoint)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{path}: a checkpoint of format version 1 that lacks what that version holds "
                            f"({type(e).__name__}: {e})") from None
    if version <= 2 and isinstance(checkpoint.get("spec"), dict):  # from before multi-label models: single-label
        checkpoint["spec"] = {"multi_label": False, "thresholds": None, **checkpoint["spec"]}
        checkpoint["version"] = CHECKPOINT_VERSION
    return check_checkpoint(checkpoint, path, resumable)


def _from_version_1(old: dict) -> dict:
    config = old.get("config", {})
    spec = ModelSpec(arch=old["arch"], class_names=list(old["class_names"]), img_size=old["img_size"],
                     channels=old["channels"], mean=old["mean"] if old.get("normalize", True) else None,
                     std=old["std"] if old.get("normalize", True) else None,
                     compute=ComputeFormat(**old.get("mode", {})), hflip=bool(config.get("hflip", False)),
                     model_options={k: config[k] for k, arch in MODEL_OPTIONS.items() if arch == old["arch"] and k in config},
                     dihedral=bool(config.get("dihedral", False)))
    training_keys = ("optimizer", "scaler", "step", "partial", "rng", "cuda_rng", "train_model")
    training = {k: old[k] for k in training_keys if k in old} if "optimizer" in old else None
    return make_checkpoint(spec, old["model"], config, old.get("epoch", 0), old.get("history", []),
                           old.get("best_val_acc", -1.0), old.get("best_epoch", 0), old.get("train_time", 0.0),
                           old.get("val_files", []), None, training)


def read_spec(checkpoint: dict) -> ModelSpec:
    return ModelSpec.from_dict(checkpoint["spec"])


# ----------------------------------------------------------------------------------------------
# Checking what a checkpoint holds (an edited one, or one of something else)
# ----------------------------------------------------------------------------------------------

CHANNELS = (1, 3, 4)  # what data.py decodes: gray, colour, colour with alpha
_SPEC_FIELDS = {f.name: f for f in fields(ModelSpec)}
_REQUIRED_SPEC = [name for name, f in _SPEC_FIELDS.items() if f.default is MISSING and f.default_factory is MISSING]
# What the rest of a checkpoint holds, by type (predict.py, ensembles and --resume read them).
_RECORD_TYPES = {"model": dict, "config": dict, "epoch": int, "history": list, "best_epoch": int, "val_files": list,
                 "best_val_acc": float, "train_time": float}
# Settings of the run that predict.py reads from the checkpoint's config: text (or unset), whole numbers.
_KIND_NAMES = {dict: "a dict", int: "a whole number", list: "a list", float: "a number"}
_CONFIG_TEXT = ("data", "labels", "train_dir", "test_dir", "id_col", "label_col", "metric", "name")
_CONFIG_INTS = ("fold", "folds")


def check_checkpoint(checkpoint: dict, path: str | Path, resumable: bool = False) -> dict:
    """The one check of a loaded checkpoint's contents (`load_checkpoint` runs it on every checkpoint): its spec
    (a known architecture, class names, an image size, channels, normalisation, compute format and the tags'
    thresholds that fit together), the types of what else it records, and, when `resumable`, the training
    state --resume needs. Anything that does not fit is one DataError naming the file and each fault, before
    anything uses it. The weights' names and shapes are checked against the model it builds (`load_weights`)."""
    problems = _spec_problems(checkpoint.get("spec")) + _record_problems(checkpoint) + \
        _training_problems(checkpoint.get("training"), resumable)
    if problems:
        raise DataError(f"{path} does not hold a usable checkpoint (edited, or written by something else?): "
                        + "; ".join(problems))
    return checkpoint


def _spec_problems(spec) -> list[str]:
    """What does not fit in a checkpoint's spec (a dict of ModelSpec's fields)."""
    if not isinstance(spec, dict):
        return ["no model spec ('spec': its architecture, classes, image size, ...)"]
    problems = [f"the spec has no {name!r}" for name in _REQUIRED_SPEC if name not in spec]
    unknown = [key for key in spec if key not in _SPEC_FIELDS]
    if unknown:
        problems.append(f"the spec has unknown key(s) {', '.join(map(repr, unknown))}")
    if "arch" in spec and spec["arch"] not in MODELS:
        problems.append(f"architecture {spec['arch']!r} is not one of this toolkit's ({', '.join(MODELS)})")
    names = spec.get("class_names")
    if "class_names" in spec and not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
                                      and len(set(names)) == len(names)):
        problems.append(f"class names {_shown(names)}: expected a list of distinct names (strings)")
    size = spec.get("img_size")
    if "img_size" in spec and not (_is_int(size) and size >= MIN_IMG_SIZE):
        problems.append(f"image size {size!r}: expected a whole number of pixels, at least {MIN_IMG_SIZE}")
    channels = spec.get("channels")
    if "channels" in spec and not (_is_int(channels) and channels in CHANNELS):
        problems.append(f"channels {channels!r}: expected 1, 3 or 4")
    return problems + _format_problems(spec, channels if _is_int(channels) and channels in CHANNELS else None)


def _format_problems(spec: dict, channels: int | None) -> list[str]:
    """What does not fit in the spec's normalisation, compute format, flags and thresholds."""
    problems = []
    mean, std = spec.get("mean"), spec.get("std")
    if (mean is None) != (std is None):
        problems.append("the spec has a mean without a std or the reverse (both, or neither without normalisation)")
    for key, value in (("mean", mean), ("std", std)):
        if value is None:
            continue
        if not (isinstance(value, list) and all(_is_number(v) and math.isfinite(v) for v in value)):
            problems.append(f"{key} {_shown(value)}: expected a list of numbers, one per channel")
        elif channels is not None and len(value) != channels:
            problems.append(f"{key} has {len(value)} value(s) for {channels} channel(s)")
        elif key == "std" and any(v <= 0 for v in value):
            problems.append(f"std {value}: each must be above 0")
    compute = spec.get("compute")
    if "compute" in spec:
        try:
            ComputeFormat(**compute).dtype  # noqa: B018 - an unknown precision has no dtype
            if not isinstance(compute.get("channels_last", False), bool):
                raise TypeError
        except (TypeError, KeyError, AttributeError):
            problems.append(f"compute format {_shown(compute)}: expected a precision of fp32, bf16 or fp16 and "
                            "channels_last true or false")
    for key in ("hflip", "multi_label", "dihedral"):
        if key in spec and not isinstance(spec[key], bool):
            problems.append(f"{key} {_shown(spec[key])}: expected true or false")
    options = spec.get("model_options", {})
    if not (isinstance(options, dict) and all(isinstance(k, str) for k in options)):
        problems.append(f"model options {_shown(options)}: expected a mapping of the architecture's options")
    elif others := [k for k in options if MODEL_OPTIONS.get(k) != spec.get("arch")]:
        problems.append(f"model option(s) {', '.join(map(repr, others))} are not options of {spec.get('arch')!r}")
    thresholds, names = spec.get("thresholds"), spec.get("class_names")
    if thresholds is not None and not (isinstance(thresholds, list) and all(_is_number(t) and 0 <= t <= 1
                                                                            for t in thresholds)
                                       and (not isinstance(names, list) or len(thresholds) == len(names))):
        problems.append(f"thresholds {_shown(thresholds)}: expected one number from 0 to 1 per class")
    return problems


def _record_problems(checkpoint: dict) -> list[str]:
    """What does not fit in the rest of a checkpoint: its weights, config and training record."""
    problems = []
    for key, kind in _RECORD_TYPES.items():
        value = checkpoint.get(key)
        fits = _is_number(value) if kind is float else _is_int(value) if kind is int else isinstance(value, kind)
        if not fits:
            problems.append(f"no {key!r}" if key not in checkpoint else
                            f"{key!r} is {_shown(value)}, not {_KIND_NAMES[kind]}")
    weights = checkpoint.get("model")
    if isinstance(weights, dict):
        odd = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if odd or not weights:
            problems.append(f"its weights ('model') hold {len(odd)} entries that are not named tensors "
                            f"({', '.join(map(repr, odd[:3]))})" if odd else "its weights ('model') are empty")
    if isinstance(checkpoint.get("val_files"), list) and not all(isinstance(f, str) for f in checkpoint["val_files"]):
        problems.append("'val_files' holds entries that are not file names")
    config = checkpoint.get("config")
    if isinstance(config, dict):
        problems += [f"the config's {key!r} is {_shown(config[key])}, not a text" for key in _CONFIG_TEXT
                     if config.get(key) is not None and not isinstance(config[key], str)]
        problems += [f"the config's {key!r} is {_shown(config[key])}, not a whole number" for key in _CONFIG_INTS
                     if config.get(key) is not None and not _is_int(config[key])]
    return problems


def _training_problems(training, resumable: bool) -> list[str]:
    """What does not fit in the training state (last.pt's); `resumable`: it must be there."""
    if training is None:
        return ["no training state to resume from (a best.pt, or a checkpoint written without it; --resume "
                "reads the run's last.pt)"] if resumable else []
    if not isinstance(training, dict):
        return [f"its training state is {_shown(training)}, not a dict"]
    required = [(key, kind) for key, kind in (("optimizer", dict), ("scaler", dict))
                if not isinstance(training.get(key), kind)]
    optional = [(key, kind) for key, kind in (("step", int), ("partial", dict), ("schedule", dict),
                                              ("train_model", dict))
                if training.get(key) is not None and not isinstance(training[key], kind)]
    return [f"its training state has no {key!r}" if key not in training else
            f"its training state's {key!r} is {_shown(training[key])}, not {_KIND_NAMES[kind]}"
            for key, kind in required + optional]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value, limit: int = 60) -> str:
    """A value in a message, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def describe_spec(spec: ModelSpec) -> str:
    """"a cnn of 3 classes, 1 channel(s), 16 px": the model a spec builds, for messages."""
    return (f"a {spec.arch} of {len(spec.class_names)} {'tags' if spec.multi_label else 'classes'}, "
            f"{spec.channels} channel(s), {spec.img_size} px"
            + "".join(f", {name} {value!r}" for name, value in spec.model_options.items()))


def load_weights(model: nn.Module, weights: dict, path: str | Path, model_desc: str, what: str = "its weights"):
    """Load `weights` into `model` (every tensor, strictly): tensors missing, unexpected or of another shape are
    a DataError naming the file (`path`), the model (`model_desc`) and the first of them, not load_state_dict's
    traceback."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [f"{k} {tuple(weights[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in weights
             if k in own and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(names)} tensor(s) {how} ({'; '.join(names[:3])}{'; ...' if len(names) > 3 else ''})"
                 for how, names in (("of another shape", wrong), ("missing", missing), ("unexpected", unexpected))
                 if names]
        raise DataError(f"{path}: {what} do not fit {model_desc}: " + "; ".join(parts))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # e.g. a tensor whose values cannot be copied into the model's
        raise DataError(f"{path}: {what} do not load into {model_desc} ({str(e).splitlines()[0]})") from None


def model_from_checkpoint(checkpoint: dict, path: str | Path = "checkpoint") -> nn.Module:
    """The checkpoint's model with its weights; weights holding NaN or infinity (a diverged run) are refused,
    and so are weights that do not fit the model its spec describes."""
    broken = [k for k, v in checkpoint["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise DataError(f"{path} holds NaN or infinite weights ({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}): "
                        "its run diverged, often from too high a learning rate: use a checkpoint from before, or "
                        "train again", option="lr", fix="lower it")
    spec = read_spec(checkpoint)
    try:
        model = spec.build()
    except (ValueError, RuntimeError, TypeError, AssertionError) as e:  # settings the architecture cannot take
        raise DataError(f"{path}: its spec ({describe_spec(spec)}) builds no model: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    load_weights(model, checkpoint["model"], path, f"{describe_spec(spec)} (as its spec says)")
    return model


def load_resumable(path: str | Path, arch: str, img_size: int, options: dict) -> dict:
    """The last.pt of a run to resume (`load_checkpoint` with its training state), refused when its spec is not the
    run's (its config.json: `arch` at `img_size` with the model `options`; a spec without an option was built with
    the builder's default, as a config.json without it says)."""
    checkpoint = load_checkpoint(path, resumable=True)
    spec = read_spec(checkpoint)
    differ = {k: v for k, v in spec.model_options.items() if options.get(k) != v}
    if (spec.arch, spec.img_size) != (arch, img_size) or differ:
        said = "".join(f", {k} {options.get(k)!r}" for k in differ)
        raise DataError(f"{path} holds {describe_spec(spec)}, and the run's config.json says a {arch} at {img_size} "
                        f"px{said}: the checkpoint is not this run's (edited, or copied from another run?)")
    return checkpoint


def init_from_checkpoint(model: nn.Module, path: str | Path, arch: str):
    """Copy the weights of a checkpoint (a run folder: its best.pt, as predict.py reads it) of the same
    architecture; layers whose shapes differ (the head, when the classes differ) keep their fresh
    initialisation. A checkpoint none of whose tensors fit is refused."""
    given, path = path, checkpoint_file(path)
    checkpoint = load_checkpoint(path)
    if read_spec(checkpoint).arch != arch:
        raise DataError(f"that checkpoint is a {read_spec(checkpoint).arch!r}, not a {arch!r}", option="init",
                        value=given)
    own = model.state_dict()
    kept = {k: v for k, v in checkpoint["model"].items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not kept:
        raise DataError(f"none of the tensors of {path} fit the {arch} being trained (other names or shapes: "
                        "not this architecture's weights?)", option="init", value=given)
    model.load_state_dict(kept, strict=False)
    fresh = sorted(set(own) - set(kept))
    log.info("weights from %s: loaded %d tensors%s", path, len(kept), f", re-initialised {fresh}" if fresh else "")
