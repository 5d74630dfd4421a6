"""The one inference path: batches of cached images -> preprocess -> the model in its compute format ->
log-probabilities (of a softmax over the classes, or of each tag's sigmoid for a multi-label model), averaged over
test-time views. Training's validation (trainer.evaluate) and prediction
(predict.py) are both built on `infer`, so the two cannot drift apart.

    for idx, log_probs in infer(model, pixels, np.arange(len(pixels)), spec.preprocess(), spec.compute, device,
                                batch_size=256, tta=True):
        probs[idx.cpu().numpy()] = log_probs.exp().cpu().numpy()
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import data
from compute import ComputeFormat
from runtime import no_autotune


@torch.no_grad()
def infer(model: nn.Module, pixels, indices: np.ndarray, preprocess: data.Preprocess, compute: ComputeFormat,
          device: torch.device, batch_size: int, tta: bool = False, rank: int = 0, world_size: int = 1,
          multi_label: bool = False, turns: bool = False):
    """Yield (indices, log-probabilities) per batch of the images `indices` of `pixels`, both on `device`: the
    log of the softmax (with `multi_label`: of each class's own sigmoid) averaged over the views of
    `data.tta_views` (the image and, with `tta`, its mirror; with `turns`, its flips and right-angle turns), in
    float32. Each of `world_size` processes takes
    its share of every batch (`rank`), which may be empty. Log-probabilities rather than probabilities: the loss
    of a confident mistake stays finite."""
    model.eval()
    with no_autotune():  # batch shapes seen once or twice: tuning them would not pay
        for x, idx in data.batches(pixels, None, indices, batch_size, device, rank=rank, world_size=world_size):
            if len(idx) == 0:
                continue
            views = data.tta_views(x, tta, turns)
            log_probs = []
            for view in views:
                with compute.autocast(device):
                    logits = model(preprocess(view))  # no DDP forward: ranks may have uneven batches
                log_probs.append(log_probabilities(logits.float(), multi_label))
            if len(log_probs) == 1:
                yield idx, log_probs[0]
            else:  # log of the mean of the views' probabilities
                yield idx, torch.logsumexp(torch.stack(log_probs), 0) - math.log(len(log_probs))


def log_probabilities(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """The model's logits (B, classes) as log-probabilities: of one softmax over the classes, or (`multi_label`)
    of an independent sigmoid per class."""
    return F.logsigmoid(logits) if multi_label else logits.log_softmax(1)


def predict_probs(model: nn.Module, pixels, preprocess: data.Preprocess, compute: ComputeFormat,
                  device: torch.device, batch_size: int, tta: bool = False, multi_label: bool = False,
                  turns: bool = False) -> np.ndarray:
    """Probabilities (N, classes), float64 on the host, of every image of `pixels`, in their order: rows of a
    softmax, or (`multi_label`) each class's sigmoid; averaged over the views of `infer` (`tta`, `turns`)."""
    out = None
    for idx, log_probs in infer(model, pixels, np.arange(len(pixels)), preprocess, compute, device, batch_size, tta,
                                multi_label=multi_label, turns=turns):
        if out is None:
            out = np.zeros((len(pixels), log_probs.shape[1]), dtype=np.float64)
        out[idx.cpu().numpy()] = log_probs.double().exp().cpu().numpy()  # in float64: near 1, float32 would tie
    return out if out is not None else np.zeros((0, 0))
