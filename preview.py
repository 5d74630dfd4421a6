"""A picture of the data: a grid of a few training images per class as the network receives them (decoded,
resized and augmented along training's own path: `data.load_images`, then `data.Preprocess` with
`data.Augment` at TrainConfig's default augmentation), before normalisation, so that the image size, the crop
and the colour can be checked before a long run. `python data.py show DIR` draws it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

import data
import recipe
import runs
from config import FOLLOW_DATA, MIN_IMG_SIZE, built_in_defaults
from errors import DataError, OptionError

log = logging.getLogger("imgcomp")

# More rows than this make a figure nobody reads: the first classes stand for the rest.
MAX_CLASSES = 40


def default_preview_path(root: str | Path) -> Path:
    """Where `python data.py show DIR` writes without --out: DIR's name + "-show.png" in the working folder
    (never inside the dataset, which may be read-only)."""
    return Path(f"{Path(root).resolve().name}-show.png")


def pick_per_class(labels: np.ndarray, num_classes: int, per_class: int, seed: int = 0,
                   exclude=()) -> list[np.ndarray]:
    """Up to `per_class` image indices of each class, drawn with `seed`; a multi-label image counts for its first
    tag (in class order). `exclude`: indices to leave out (unreadable images)."""
    labels = np.asarray(labels)
    first = labels.argmax(1) if labels.ndim == 2 else labels
    usable = np.ones(len(labels), bool)
    usable[list(exclude)] = False
    if labels.ndim == 2:
        usable &= labels.any(1)  # an image without tags has no first tag
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[usable[order]]
    return [order[first[order] == k][:per_class] for k in range(num_classes)]


def augmented_pixels(pixels: np.ndarray, indices: np.ndarray, augment: data.Augment, seed: int = 0) -> np.ndarray:
    """The images at `indices` as training feeds them to the model, before normalisation: (N, C, S, S) floats
    in 0..1, through `data.Preprocess` with `augment` (drawn with `seed`, leaving torch's own generator as it was)."""
    batch = torch.from_numpy(np.ascontiguousarray(pixels[np.sort(indices)]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = data.Preprocess(augment=augment)(batch, train=True)
    restore = np.argsort(np.argsort(indices))  # back to the order of `indices`
    return x.clamp(0, 1).numpy()[restore]


def describe_augment(augment: data.Augment) -> str:
    parts = [name if value is True else f"{name} {value}" for name, value in vars(augment).items() if value]
    return ", ".join(parts) or "none"


def save_data_preview(root: str | Path, out: str | Path | None = None, per_class: int = 4,
                      img_size: int | None = None, seed: int = 0, **layout) -> Path:
    """Draw `per_class` training images of each class of the dataset folder `root` after decoding and
    augmentation (TrainConfig's defaults, the orientations and shifts as the images' layout chooses them; `img_size`
    None: as a new run chooses it too) into the PNG `out` (None:
    `default_preview_path`). `layout`: find_labelled_images' options (id_col, label_col, labels_file,
    train_dir, multi_label). The images are decoded into the cache training uses."""
    defaults = built_in_defaults()
    if per_class < 1:
        raise OptionError("must be at least 1", option="per_class", value=per_class)
    if img_size is not None and img_size < MIN_IMG_SIZE:
        raise OptionError(f"must be at least {MIN_IMG_SIZE}", option="img_size", value=img_size)
    found = data.find_labelled_images(root, **layout)
    if not img_size:  # as a new run on a CPU would choose it (recipe.py)
        img_size, why = recipe.choose_img_size(found.files, defaults["max_img_size"], "cpu")
        log.info("image size %d px: %s", img_size, why)
    images = data.load_images(found.files, img_size, None, data.cache_dir_for(root))
    shown = len(found.class_names)
    if shown > MAX_CLASSES:
        log.info("showing the first %d of %d classes", MAX_CLASSES, shown)
        shown = MAX_CLASSES
    picks = pick_per_class(found.labels, len(found.class_names), per_class, seed, images.bad)[:shown]
    readable = np.setdiff1d(np.arange(len(found.files)), np.array(sorted(images.bad), dtype=int))
    layout = recipe.layout_stats(images.pixels, readable)
    dihedral, translate, why = recipe.choose_augmentation(defaults["dihedral"], defaults["translate"], img_size,
                                                          layout, set(FOLLOW_DATA))
    for text in why.values():  # as a new run chooses them (recipe.py)
        log.info("augmentation: %s", text)
    augment = data.Augment(hflip=defaults["hflip"], rotate=defaults["rotate"], translate=translate,
                           erase=defaults["erase"], dihedral=dihedral)
    flat = np.concatenate(picks)
    if len(flat) == 0:
        raise DataError(f"{root}: no readable training image to show")
    pixels = dict(zip(flat.tolist(), augmented_pixels(images.pixels, flat, augment, seed)))
    grid = [[pixels[i] for i in row.tolist()] for row in picks]
    colour = "gray" if images.channels == 1 else "colour"
    title = (f"{root}: {img_size}x{img_size} px, {colour}, augmentation: {describe_augment(augment)} "
             "(as a new run chooses it), before normalisation")
    path = Path(out) if out else default_preview_path(root)
    plot_samples(grid, found.class_names[:shown], path, title)
    return path


def plot_samples(grid: list[list[np.ndarray]], row_names: list[str], path: Path, title: str):
    """One row per class: its images ((C, S, S) floats in 0..1), each titled with the class's name."""
    cols = max(1, max(len(row) for row in grid))
    fig, axes = runs.new_figure(len(grid), cols, figsize=(1.6 * cols + 0.4, 1.7 * len(grid) + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for axes_row, row, name in zip(axes, grid, row_names):
        for ax, img in zip(axes_row, row):
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
            ax.set_title(name if len(name) <= 18 else name[:17] + "…", fontsize=8)
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    runs._save_figure(fig, path)
