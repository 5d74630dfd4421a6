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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

import data
from errors import DataError
from fileio import atomic_write
from models import build_model
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

    def build(self) -> nn.Module:
        return build_model(self.arch, len(self.class_names), self.channels, self.img_size)

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


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load one of our checkpoints without executing code (weights_only), in the current format; refuse
    anything else."""
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
    if version > CHECKPOINT_VERSION:
        raise DataError(f"{path} was written by a newer version of this toolkit (checkpoint version {version})")
    if version == 1 and "arch" in checkpoint:
        checkpoint = _from_version_1(checkpoint)
    if version <= 2 and isinstance(checkpoint.get("spec"), dict):  # from before multi-label models: single-label
        checkpoint["spec"] = {"multi_label": False, "thresholds": None, **checkpoint["spec"]}
        checkpoint["version"] = CHECKPOINT_VERSION
    return checkpoint


def _from_version_1(old: dict) -> dict:
    config = old.get("config", {})
    spec = ModelSpec(arch=old["arch"], class_names=list(old["class_names"]), img_size=old["img_size"],
                     channels=old["channels"], mean=old["mean"] if old.get("normalize", True) else None,
                     std=old["std"] if old.get("normalize", True) else None,
                     compute=ComputeFormat(**old.get("mode", {})), hflip=bool(config.get("hflip", False)))
    training_keys = ("optimizer", "scaler", "step", "partial", "rng", "cuda_rng", "train_model")
    training = {k: old[k] for k in training_keys if k in old} if "optimizer" in old else None
    return make_checkpoint(spec, old["model"], config, old.get("epoch", 0), old.get("history", []),
                           old.get("best_val_acc", -1.0), old.get("best_epoch", 0), old.get("train_time", 0.0),
                           old.get("val_files", []), None, training)


def read_spec(checkpoint: dict) -> ModelSpec:
    return ModelSpec.from_dict(checkpoint["spec"])


def model_from_checkpoint(checkpoint: dict, path: str | Path = "checkpoint") -> nn.Module:
    """The checkpoint's model with its weights; weights holding NaN or infinity (a diverged run) are refused."""
    broken = [k for k, v in checkpoint["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise DataError(f"{path} holds NaN or infinite weights ({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}): "
                        "its run diverged, often from too high a learning rate: use a checkpoint from before, or "
                        "train again", option="lr", fix="lower it")
    model = read_spec(checkpoint).build()
    model.load_state_dict(checkpoint["model"])
    return model


def init_from_checkpoint(model: nn.Module, path: str, arch: str):
    """Copy the weights of a checkpoint of the same architecture; layers whose shapes differ (the head,
    when the classes differ) keep their fresh initialisation."""
    checkpoint = load_checkpoint(path)
    if read_spec(checkpoint).arch != arch:
        raise DataError(f"that checkpoint is a {read_spec(checkpoint).arch!r}, not a {arch!r}", option="init",
                        value=path)
    own = model.state_dict()
    kept = {k: v for k, v in checkpoint["model"].items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(kept, strict=False)
    fresh = sorted(set(own) - set(kept))
    log.info("weights from %s: loaded %d tensors%s", path, len(kept), f", re-initialised {fresh}" if fresh else "")
