"""From the decoded array to the model's input: splits and folds, channel statistics, the one batch path
(`batches`, then `Preprocess`), augmentation (`Augment`, `Mix`), normalisation and test-time views."""
from __future__ import annotations

import logging
import math
import queue
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from decode import images_per_chunk
from errors import DataError, OptionError

log = logging.getLogger("imgcomp")


def stratified_split(labels: np.ndarray, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) holding out `val_split` of each class; the same for the same seed. Multi-label
    labels (N, C): iterative stratification, each tag in both parts where it can be (best effort)."""
    if not 0 <= val_split < 1:
        raise DataError(f"val_split must be in [0, 1), got {val_split}", option="val_split")
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return _split_multi_label(labels, val_split, seed)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_split))
        if val_split > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)  # every class in both parts when it can be
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each image: every class spread evenly over the folds; the same for the same seed.
    Multi-label labels (N, C): iterative stratification of the tags."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return _folds_multi_label(labels, folds, seed)
    rng = np.random.default_rng([seed, folds])
    fold_of = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        fold_of[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)  # the next class starts where this one ended: the folds' sizes differ by one at most
    return fold_of


def check_folds(labels: np.ndarray, folds: int, class_names: list[str]) -> str | None:
    """K folds of these labels (single-label (N,), multi-label (N, C)): an error when there are fewer images than
    folds (a fold would hold out none); a warning (returned, else None) naming the classes (tags) with fewer
    images than folds, which some folds' validation images then lack."""
    labels = np.asarray(labels)
    if folds > len(labels):
        raise DataError(f"the dataset has {len(labels)} images, too few for {folds} folds (a fold would hold out "
                        "none)", option="folds", value=folds, fix=f"choose at most {len(labels)}")
    counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=len(class_names))
    few = [f"{name!r} ({int(n)})" for name, n in zip(class_names, counts) if n < folds]
    if not few:
        return None
    shown = ", ".join(few[:10]) + (f", ... ({len(few)} in all)" if len(few) > 10 else "")
    return (f"--folds {folds}: {'tags' if labels.ndim == 2 else 'classes'} with fewer images than folds: {shown}; "
            "some folds' validation images hold none of them (those folds' scores do not measure them)")


# Iterative stratification (Sechidis et al., 2011, https://doi.org/10.1007/978-3-642-23808-6_10), from the
# iterative-stratification package: the rarest tag's images are placed first, each where it is wanted most.
def _split_multi_label(labels: np.ndarray, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    everything = np.arange(len(labels))
    if val_split == 0:
        return everything, everything[:0]
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit  # imports scikit-learn: only when needed
    try:
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_split, random_state=seed)
        train, val = next(splitter.split(everything[:, None], labels))
    except ValueError as e:  # too few images for the fraction
        raise DataError(f"{len(labels)} images cannot be split with val_split {val_split} ({e})",
                        option="val_split") from None
    return _cover_tags(labels, np.sort(train), np.sort(val))


def _cover_tags(labels: np.ndarray, train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move one training image of each tag missing from the validation images there, when the tag's other
    images keep every training tag present (the rarest tags are too rare for the split's proportions)."""
    in_train, in_val = labels[train].sum(axis=0).astype(np.int64), labels[val].sum(axis=0).astype(np.int64)
    moved = []
    for tag in np.flatnonzero((in_val == 0) & (in_train >= 2)):
        for i in train[labels[train, tag] > 0]:
            tags = labels[i] > 0
            if i not in moved and (in_train[tags] >= 2).all():
                moved.append(i)
                in_train[tags] -= 1
                in_val[tags] += 1
                break
    if not moved:
        return train, val
    return np.setdiff1d(train, moved), np.sort(np.concatenate([val, moved]))


def _folds_multi_label(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    fold_of = np.empty(len(labels), dtype=np.int64)
    try:
        splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, (_, held_out) in enumerate(splitter.split(np.zeros((len(labels), 1)), labels)):
            fold_of[held_out] = k
    except ValueError as e:  # more folds than images
        raise DataError(f"{len(labels)} images cannot be split into {folds} folds ({e})", option="folds") from None
    return fold_of


def label_matrix(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) float32 indicators of labels: the multi-hot rows of multi-label labels (N, C), the one-hot rows of
    class indices (N,)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(np.float32)
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1
    return out


def check_balance(balance: str, multi_label: bool):
    """The balanced sampler draws images by their one class: multi-label images have none."""
    if balance == "sampler" and multi_label:
        raise OptionError("draws each class equally often, which needs single-label data; these images carry "
                          "several tags each", option="balance", value="sampler",
                          fix="{flag} loss weighs each tag's loss by its frequency instead")


def channel_stats(pixels: np.ndarray, indices: np.ndarray, chunk: int | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in 0..1 units) of the images `indices`, summed exactly (integers) chunk by chunk."""
    c = pixels.shape[1]
    chunk = chunk or images_per_chunk(pixels)
    total, total_sq, count = np.zeros(c, np.int64), np.zeros(c, np.int64), 0
    for s in range(0, len(indices), chunk):
        batch = pixels[np.sort(indices[s:s + chunk])]
        total += batch.sum(axis=(0, 2, 3), dtype=np.int64)
        total_sq += [np.square(batch[:, k], dtype=np.uint16).sum(dtype=np.int64) for k in range(c)]  # 255^2 fits
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
    total, total_sq = total / 255.0, total_sq / 255.0 ** 2
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0)) + 1e-6
    return [float(m) for m in mean], [float(s) for s in std]


def batches(pixels: np.ndarray, labels: np.ndarray | None, indices: np.ndarray, batch_size: int,
            device: torch.device, shuffle: bool = False, seed: int = 0, epoch: int = 0, drop_last: bool = False,
            start_step: int = 0, stop_step: int | None = None, rank: int = 0, world_size: int = 1,
            balance: bool = False):
    """The one batch path of training, evaluation, prediction and the benchmarks: (uint8 images, labels)
    on `device`, gathered from the cached array by index on a background thread while the current batch is
    used (`iterate_batches` + `prefetch`); images resident on the GPU (`resident`) are gathered there, in
    order, with no thread: a gather there is one more kernel queued. With `labels` None each batch's second
    item is its indices. `Preprocess` then turns the images into the model's input."""
    batches = iterate_batches(pixels, labels, indices, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                              drop_last=drop_last, start_step=start_step, stop_step=stop_step, rank=rank,
                              world_size=world_size, balance=balance)
    if isinstance(pixels, torch.Tensor) and pixels.is_cuda:
        return batches
    return prefetch(batches, device)


def iterate_batches(pixels: np.ndarray, labels: np.ndarray | None, indices: np.ndarray, batch_size: int,
                    shuffle: bool = False, seed: int = 0, epoch: int = 0, drop_last: bool = False,
                    start_step: int = 0, stop_step: int | None = None, rank: int = 0, world_size: int = 1,
                    balance: bool = False):
    """Yield (uint8 images, labels) batches gathered from the cached array by index, steps
    `start_step` up to `stop_step` (default: the whole epoch). With `balance` (and `shuffle`), an epoch draws
    as many images as `indices` holds, with replacement, each class equally often on average.

    The order of an epoch depends only on (seed, epoch), so a resumed run sees the same batches. Each of
    `world_size` processes takes its share of every batch."""
    indices = np.asarray(indices)
    if shuffle and balance:
        check_balance("sampler", labels.ndim == 2)
        counts = np.bincount(labels[indices])
        weights = 1.0 / counts[labels[indices]]
        indices = np.random.default_rng([seed, epoch]).choice(indices, size=len(indices), p=weights / weights.sum())
    elif shuffle:
        indices = np.random.default_rng([seed, epoch]).permutation(indices)
    n_steps = count_batches(len(indices), batch_size, drop_last)
    on_device = isinstance(pixels, torch.Tensor)
    if on_device and labels is not None:  # resident images (`resident`): their labels beside them
        labels = torch.from_numpy(labels).to(pixels.device)
    for step in range(start_step, n_steps if stop_step is None else min(stop_step, n_steps)):
        idx = np.sort(indices[step * batch_size:(step + 1) * batch_size][rank::world_size])
        if on_device:  # gathered where the images are; the indices go there from pinned memory, without waiting
            where = torch.from_numpy(idx)
            where = where.pin_memory().to(pixels.device, non_blocking=True) if pixels.is_cuda else where
            yield pixels[where], labels[where] if labels is not None else where
        else:
            x = torch.from_numpy(np.ascontiguousarray(pixels[idx]))
            yield x, torch.from_numpy(labels[idx]) if labels is not None else torch.from_numpy(idx)


def resident(pixels: np.ndarray, device: torch.device, share: float = 0.5) -> np.ndarray | torch.Tensor:
    """The images kept on `device` when it is a GPU with room for them (at most `share` of its free memory):
    batches are then gathered there by index, with no copy from the host each step. Elsewhere, or when they do
    not fit, the memory-mapped array itself (batches gathered on the host and prefetched)."""
    if device.type != "cuda":
        return pixels
    free, _ = torch.cuda.mem_get_info(device)
    if pixels.nbytes > share * free:
        log.info("the images (%.1f GB) do not fit in %.0f%% of the GPU's free memory (%.1f GB): batches come from "
                 "the host", pixels.nbytes / 1e9, 100 * share, free / 1e9)
        return pixels
    out = torch.empty(tuple(pixels.shape), dtype=torch.uint8, device=device)
    step = images_per_chunk(pixels)
    for s in range(0, len(pixels), step):  # chunk by chunk: never a second whole copy on the host
        out[s:s + step].copy_(torch.from_numpy(np.ascontiguousarray(pixels[s:s + step])))
    return out


def count_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches in an epoch of `n` images (the one place that counts them)."""
    return n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)


def prefetch(batches, device: torch.device, depth: int = 2):
    """Gather the next batches on a background thread and move them to `device` while the current one
    trains."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()
    pin = device.type == "cuda"

    def work():
        try:
            for x, y in batches:
                if stop.is_set():
                    return
                if pin:  # pinned host memory copies to the GPU asynchronously; resident images are there already
                    x, y = (x if x.is_cuda else x.pin_memory()), y.pin_memory()
                q.put((x, y))
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            x, y = item
            yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)


@dataclass
class Augment:
    """Batch augmentation on the training device: random horizontal flip, vertical flip and right-angle turn
    (dihedral), rotation, translation and random erasing (Zhong et al., https://arxiv.org/abs/1708.04896), each
    drawn per image."""
    hflip: bool = True
    rotate: float = 0.0  # maximum angle in degrees, either way
    translate: int = 0  # maximum shift in whole pixels, either way (the edge fills with the image mirrored)
    erase: float = 0.0  # probability of erasing one random rectangle of an image with noise
    dihedral: bool = False  # random vertical flips and right-angle turns (with hflip: all 8 orientations)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: float images in 0..1, (B, C, H, W)."""
        b, _, h, w = x.shape
        if self.hflip:
            flip = torch.rand(b, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.dihedral:  # exact: no interpolation, nothing comes in at the edges
            flip = torch.rand(b, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(2), x)
            if h == w:
                turn = torch.rand(b, device=x.device) < 0.5
                x = torch.where(turn[:, None, None, None], x.transpose(2, 3), x)
        if self.rotate > 0 or self.translate > 0:
            angle = (torch.rand(b, device=x.device) * 2 - 1) * math.radians(self.rotate)
            cos, sin = torch.cos(angle), torch.sin(angle)
            # Whole-pixel shifts, in affine_grid's -1..1 coordinates, so a shift alone moves pixels exactly.
            shift = torch.randint(-self.translate, self.translate + 1, (2, b), device=x.device).float()
            tx, ty = shift[0] * 2 / w, shift[1] * 2 / h
            theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            # What comes in at the edges is the image mirrored, not black: a black band's straight edges and its
            # corner look like the features of shapes (square corners, bars), and a network learns them from every
            # shifted image (a 4-conv CNN on objects placed at random: 69% with black, 94% mirrored, --translate 3).
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.erase > 0:
            x = self._erase(x)
        return x

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        """One rectangle per chosen image, 2-40% of its area, aspect ratio 0.3-3.3, filled with uniform noise."""
        b, _, h, w = x.shape
        dev = x.device
        area = torch.empty(b, device=dev).uniform_(0.02, 0.4) * h * w
        ratio = torch.exp(torch.empty(b, device=dev).uniform_(math.log(0.3), math.log(1 / 0.3)))
        eh = torch.sqrt(area * ratio).round().clamp(1, h)
        ew = torch.sqrt(area / ratio).round().clamp(1, w)
        y0 = (torch.rand(b, device=dev) * (h - eh + 1)).floor()
        x0 = (torch.rand(b, device=dev) * (w - ew + 1)).floor()
        rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_y = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])
        in_x = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])
        chosen = torch.rand(b, device=dev) < self.erase
        mask = in_y[:, :, None] & in_x[:, None, :] & chosen[:, None, None]
        return torch.where(mask[:, None], torch.rand_like(x), x)


@dataclass
class Mix:
    """MixUp (Zhang et al., https://arxiv.org/abs/1710.09412) and CutMix (Yun et al.,
    https://arxiv.org/abs/1905.04899) on whole batches on the device: each batch is blended with itself in
    reverse order, by a weight lam ~ Beta(alpha, alpha) (MixUp: the pixels; CutMix: a box of area 1 - lam
    pasted), and the targets become the same blend of the two one-hot labels (multi-label: of the two multi-hot
    tag vectors). With both alphas set, each batch takes one of the two at random."""
    mixup: float = 0.0  # alpha of MixUp's Beta distribution (0: off)
    cutmix: float = 0.0  # alpha of CutMix's (0: off)

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets (B, classes), the label that weighs most in each image's target), for
        labels `y` that are class indices (B,) or multi-hot tags (B, classes)."""
        # Drawn on the CPU: a decision read back from the GPU would wait for it every step.
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or bool(torch.rand(()) < 0.5))
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        other = x.flip(0)
        if use_cutmix:
            h, w = x.shape[2:]
            cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
            cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the box as clipped at the border
        else:
            x = x * lam + other * (1 - lam)
        hot = (y if y.ndim == 2 else F.one_hot(y, num_classes)).to(x.dtype)
        targets = hot * lam + hot.flip(0) * (1 - lam)
        return x, targets, y if lam >= 0.5 else y.flip(0)


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def tta_views(x: torch.Tensor, hflip: bool, dihedral: bool = False) -> list[torch.Tensor]:
    """Test-time views of a batch, those the model was trained with (a view it never saw would only add noise):
    itself, its mirror image with `hflip`, and with `dihedral` (`Augment.dihedral`) its vertical flip and
    transposes: 4 orientations, all 8 with `hflip` too."""
    views = [x, x.flip(3)] if hflip else [x]  # in `Augment`'s order: mirror, vertical flip, transpose
    if dihedral:
        views = [f for v in views for f in (v, v.flip(2))]
        views = [t for v in views for t in (v, v.transpose(2, 3))] if x.shape[2] == x.shape[3] else views
    return views


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Float images in 0..1 to zero-mean unit-std per channel (mean/std: sequences, or tensors on x's device)."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


@dataclass
class Preprocess:
    """uint8 images on the device -> the model's input: 0..1 floats, augmented (when training and given an
    `augment`), normalised with (mean, std) when given, in the model's memory format. Training, evaluation
    and prediction all go through here."""
    mean: list[float] | None = None
    std: list[float] | None = None
    augment: Augment | None = None
    memory_format: torch.memory_format = torch.contiguous_format
    _stats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = to_float(x)
        if train and self.augment is not None:
            x = self.augment(x)
        if self.mean is not None:
            x = normalize(x, *self._on(x.device))
        return x.contiguous(memory_format=self.memory_format)

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as tensors on `device`, made once: copying them there every batch would make the host
        wait for a GPU each time."""
        if device not in self._stats:
            self._stats[device] = (torch.tensor(self.mean, device=device), torch.tensor(self.std, device=device))
        return self._stats[device]
