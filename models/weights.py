"""Pretrained weights from a local source, offline: reading a weight file (or finding it in a folder) and
fitting it into one of our models, with the classifier replaced for the competition's classes and the first
convolution adapted to 1 or 3 input channels.

A source is a file (`.safetensors`, `.pth`, `.pt`, `.bin`: a bare state dict, or one wrapped in a dict under
"state_dict", "model", ...) or a folder: a Hugging Face hub cache (`models--timm--rexnet_100.nav_in1k/...`) or
a folder holding config.json and its weights. Nothing is fetched: these functions only read the files named
(`fetch_error` is the error of the builders that download the published weights when that fails).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from errors import DataError, SetupError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# In a folder, the file a Hugging Face model repository keeps its weights in comes first.
PREFERRED_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params", "weights")


class WeightsError(DataError):
    """A weight source that cannot be read or does not fit the architecture. Its option is "pretrained" and
    its value the source as given (a path, or "imagenet" for the published weights)."""

    def __init__(self, message: str, source):
        super().__init__(message, option="pretrained", value=source)


@dataclass(frozen=True)
class WeightsInfo:
    """What an architecture's published weights were trained with and where their ends are."""
    mean: tuple[float, ...]  # the input normalisation the weights expect (RGB)
    std: tuple[float, ...]
    classifier: str  # module name of the classification layer, replaced for the competition's classes
    first_conv: str  # module name of the first convolution, adapted to the number of input channels


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def timm_info(timm_name: str) -> WeightsInfo:
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(timm_name).to_dict()
    return WeightsInfo(tuple(cfg["mean"]), tuple(cfg["std"]), cfg["classifier"], cfg["first_conv"])


def find_weight_file(source: Path) -> Path:
    """The weight file of `source`: itself, or the one weight file found below the folder."""
    source = Path(source)
    if source.is_file():
        if source.suffix.lower() not in WEIGHT_SUFFIXES:
            raise WeightsError(f"not a weight file (expected {', '.join(WEIGHT_SUFFIXES)})", source)
        return source
    if not source.is_dir():
        raise WeightsError("no such file or folder (a weight file, a folder with config.json and weights, or a "
                           "Hugging Face hub cache folder was expected; 'imagenet' downloads)", source)
    found, targets = [], set()  # a hub cache's snapshots/<rev>/model.safetensors links to blobs/<hash>
    for p in sorted(source.rglob("*")):
        if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES and not p.name.startswith(".") \
                and p.resolve() not in targets:
            targets.add(p.resolve())
            found.append(p)
    if not found:
        raise WeightsError(f"no weight file ({', '.join(WEIGHT_SUFFIXES)}) in that folder", source)
    for name in PREFERRED_NAMES:
        named = [p for p in found if p.name == name]
        if len(named) == 1:
            return named[0]
    if len(found) == 1:
        return found[0]
    listing = "\n  ".join(str(p) for p in found[:10])
    raise WeightsError(f"several weight files in that folder; name one:\n  {listing}", source)


def read_state_dict(source: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of a weight source, without running code from it; and the file it came from."""
    path = find_weight_file(source)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file
            loaded = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every reader has its own errors; all mean "not a weight file"
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{_named(path, source)} cannot be read as weights ({cause})", source) from None
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"state_dict": ...}}
        if isinstance(loaded, dict) and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
            inner = next((loaded[k] for k in WRAPPER_KEYS if isinstance(loaded.get(k), dict)), None)
            if inner is None:
                break
            loaded = inner
    if not isinstance(loaded, dict) or not any(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{_named(path, source)} holds no tensors (a state dict, or one wrapped under "
                           f"{', '.join(WRAPPER_KEYS)}, was expected)", source)
    state = {}
    for key, value in loaded.items():
        if isinstance(value, torch.Tensor):
            for prefix in ("module.", "_orig_mod.", "model."):  # DDP, torch.compile and some trainers' prefixes
                if key.startswith(prefix) and not key[len(prefix):].startswith(prefix):
                    key = key[len(prefix):]
            state[key] = value
    return state, path


def _named(path: Path, source) -> str:
    """The weight file in a message about `source`: "the file" when it is the source itself."""
    return "the file" if Path(path) == Path(source) else str(path)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], info: WeightsInfo, arch: str, source,
              what: str = "the file") -> list[str]:
    """Load the pretrained tensors `state` into `model`: the classifier keeps its fresh initialisation when its
    shape differs (other classes), the first convolution is summed or repeated over input channels
    (adapt_input_conv), or keeps its fresh initialisation when its kernel differs (a small-image stem).
    Anything else that does not fit is a WeightsError about `source` saying that `what` (its file) does not
    fit, with the first mismatching tensors. Returns the names left freshly initialised."""
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)  # timm's remapping (e.g. resized position tables)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as e:  # noqa: BLE001 - a filter fails in its own way on a foreign file
            raise WeightsError(f"{what} does not fit {arch}: {type(e).__name__}: {e}", source) from None
    own = model.state_dict()
    fresh = []
    first = info.first_conv + ".weight"
    if first in state and first in own and state[first].shape != own[first].shape:
        if state[first].shape[0] == own[first].shape[0] and state[first].shape[2:] == own[first].shape[2:]:
            from timm.models import adapt_input_conv  # here: importing timm takes seconds
            state[first] = adapt_input_conv(own[first].shape[1], state[first])
        elif state[first].shape[2:] != own[first].shape[2:]:
            del state[first]
            fresh.append(first)
    for key in [k for k in state if k.startswith(info.classifier + ".")]:
        if key in own and state[key].shape != own[key].shape:
            del state[key]
            fresh.append(key)
    missing = [k for k in own if k not in state and k not in fresh and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in {arch}" for k in state
             if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(wrong)} of a different shape (first: {'; '.join(wrong[:3])})" if wrong else "",
                 f"{len(missing)} missing from the file (first: {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} not in {arch} (first: {', '.join(unexpected[:3])})" if unexpected else ""]
        raise WeightsError(f"{what} does not fit {arch}: tensors " + "; ".join(p for p in parts if p) +
                           ". Is it the weights of this architecture?", source)
    model.load_state_dict(state, strict=False)
    return fresh


def fetch_error(arch: str, where: str, cause: Exception) -> SetupError:
    """The error for published weights of `arch` that could not be downloaded from `where`."""
    return SetupError(f"could not fetch pretrained weights for {arch} (are you offline?) from {where}: {cause}. "
                      "Train from scratch, or give a local copy of the weights (a file or folder; README: "
                      "fine-tuning offline)", option="pretrained", fix="name it with {flag} FILE_OR_FOLDER")


def weights_source(pretrained) -> str | Path | None:
    """A builder's `pretrained` argument: False/None/"" for none, True or "imagenet" to download the published
    weights, anything else a local file or folder."""
    if pretrained in (False, None, ""):
        return None
    if pretrained is True or pretrained == "imagenet":
        return "imagenet"
    return Path(pretrained)


def load_local_weights(model: nn.Module, source: Path, info: WeightsInfo, arch: str, rename=None) -> nn.Module:
    """Load the weights of the local `source` into `model` (see load_into); `rename` maps the file's key names to
    the model's where they differ."""
    state, path = read_state_dict(source)
    if rename:
        state = {rename(k): v for k, v in state.items()}
    load_into(model, state, info, arch, source, _named(path, source))
    return model
