"""Decoding images once into a memory-mapped cache: `decode_image` (the one BGR->RGB conversion of the
toolkit), `load_images` and the cache's folder and key."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from errors import DataError
from fileio import atomic_write_text
from images import listing

log = logging.getLogger("imgcomp")

# Part of every cache key: raised when decoding gives other pixels for the same files (2: images of other depths
# than uint8 scaled by their range, `to_uint8`, where version 1 clipped them), so no older cache is served.
CACHE_VERSION = 2


def decode_image(path: Path, img_size: int, channels: int | None) -> np.ndarray:
    """One image file as a uint8 array of shape (C, S, S), RGB or gray. The only BGR->RGB conversion
    of the toolkit. `channels` None keeps the file's own (1 for gray, 3 for colour)."""
    if os.path.islink(path) and not os.path.exists(path):
        raise ValueError(f"broken symbolic link (to {os.readlink(path)})")
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise ValueError("empty file")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("cannot decode (truncated, corrupt or not an image)")
    if img.dtype != np.uint8:
        img = to_uint8(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 1 and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    elif channels == 3 and img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[0] != img_size or img.shape[1] != img_size:
        shrink = img.shape[0] > img_size or img.shape[1] > img_size
        img = cv2.resize(img, (img_size, img_size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return img[None] if img.ndim == 2 else img.transpose(2, 0, 1)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """The 0..255 picture of an image of another depth (16-bit PNGs, scientific, medical and satellite TIFFs).

    Integers (uint16, int8, int16, int32): their type's whole range maps to 0..255, for signed types too
    (int16: -32768 -> 0, 0 -> 128, 32767 -> 255): every image of a dataset is scaled alike, so its brightness
    means the same in all of them, whatever values one image happens to hold.
    Floats have no range of their own; by their values: within 0..1, times 255 (the float convention); else
    within 0..255, as they are (8-bit values stored as floats: the same picture as the uint8 image); else the
    image's own min..max stretched to 0..255. An image of one value outside 0..255 is flat: it saturates (0 below,
    255 above). NaN becomes 0, infinities 0 and 255; min and max are taken over the finite values."""
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        scaled = (img.astype(np.float64) - info.min) * (255.0 / (float(info.max) - info.min))
    else:
        values = img.astype(np.float64)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if low >= 0 and high <= 1:
            scaled = values * 255.0
        elif low >= 0 and high <= 255:
            scaled = values
        elif high > low:
            scaled = (values - low) * (255.0 / (high - low))
        else:  # one value, outside 0..255: nothing to stretch
            scaled = values
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return (np.clip(scaled, 0, 255) + 0.5).astype(np.uint8)


@dataclass
class ImageArray:
    """Decoded images: `pixels` is a (N, C, S, S) uint8 array (memory-mapped from the cache);
    `bad` maps the index of each file that could not be read to the reason."""
    pixels: np.ndarray
    files: list[Path]
    bad: dict[int, str]

    @property
    def channels(self) -> int:
        return self.pixels.shape[1]

    def good_indices(self) -> np.ndarray:
        return np.array([i for i in range(len(self.files)) if i not in self.bad], dtype=np.int64)

    def raise_if_bad(self, hint: str | None = None):
        """A DataError listing the files that cannot be read, if any, ending with `hint`: the caller's advice.
        Without one, the advice of training data: fix or remove them, or leave them out (option skip_bad)."""
        if self.bad:
            items = [f"{self.files[i]}: {why}" for i, why in sorted(self.bad.items())]
            message = f"{len(items)} image file(s) cannot be read:{listing(items)}\n"
            if hint is not None:
                raise DataError(message + hint)
            raise DataError(message + "fix or remove them", option="skip_bad", fix="or leave them out")


def user_cache_dir() -> Path:
    """The user's cache folder for decoded images: $XDG_CACHE_HOME/imgcomp, else ~/.cache/imgcomp."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgcomp"


def is_writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            return True
    except OSError:
        return False


def cache_dir_for(root: str | Path, given: str | Path | None = None) -> Path:
    """Where the decoded images of the dataset folder `root` are cached: `given` (option cache_dir), else
    $IMGCOMP_CACHE, else ROOT/.cache; when that cannot be written (a read-only dataset, as competition
    notebooks mount their inputs), the user's cache folder (`user_cache_dir`), with a log line."""
    if given:
        if not is_writable(Path(given)):
            raise DataError(f"cannot write in the cache folder {given}", option="cache_dir",
                            fix="name a writable folder")
        return Path(given)
    if os.environ.get("IMGCOMP_CACHE"):
        if not is_writable(Path(os.environ["IMGCOMP_CACHE"])):
            raise DataError(f"$IMGCOMP_CACHE={os.environ['IMGCOMP_CACHE']}: cannot write there")
        return Path(os.environ["IMGCOMP_CACHE"])
    beside = Path(root) / ".cache"
    if is_writable(beside):
        return beside
    fallback = user_cache_dir()
    if not is_writable(fallback):
        raise DataError(f"cannot write a cache of decoded images in {beside} nor in {fallback}: name a writable "
                        "folder in $IMGCOMP_CACHE", option="cache_dir", fix="or name it")
    log.info("%s is not writable: caching decoded images in %s", root, fallback)
    return fallback


def cache_key(files: list[Path], img_size: int, channels: int | None) -> tuple[str, str]:
    """(key of the file list, key of the files' states). A file's state is its size, modification time,
    inode and status-change time: a file rewritten in place with its old size and modification time put
    back (as cp -p, tar and unzip do) still gets a new status-change time, so it is decoded again."""
    names, full = hashlib.sha256(), hashlib.sha256()
    head = f"v{CACHE_VERSION}|{img_size}|{channels}|"
    names.update(head.encode())
    full.update(head.encode())
    for path in files:
        text = os.path.abspath(path)
        try:
            st = os.stat(path)
            state = f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}"
        except OSError as e:  # e.g. a broken symbolic link: decoding reports it as a bad image
            state = f"unreadable {e.errno}"
        names.update(text.encode() + b"\0")
        full.update(f"{text}\0{state}\0".encode())
    return names.hexdigest()[:12], full.hexdigest()[:12]


def load_images(files: list[Path], img_size: int, channels: int | None = None, cache_dir: str | Path | None = None,
                workers: int | None = None, progress: bool = True, desc: str = "decoding") -> ImageArray:
    """Decode `files` once into a (N, C, S, S) uint8 array cached on disk, and memory-map it.

    The cache is keyed by the file paths and states (`cache_key`), the image size and the channel request,
    so a changed file decodes again. `channels` None: 1 if every image is gray, else 3. `cache_dir` None:
    `cache_dir_for` the folder that holds all the files."""
    if not files:
        raise DataError("no image files to load")
    if cache_dir is None:
        cache_dir = cache_dir_for(os.path.commonpath([os.path.abspath(f.parent) for f in files]))
    cache_dir = Path(cache_dir)
    names_key, full_key = cache_key(files, img_size, channels)
    stem = cache_dir / f"images-{img_size}px-{names_key}-{full_key}"
    meta_path, npy_path = stem.with_suffix(".json"), stem.with_suffix(".npy")
    if meta_path.is_file() and npy_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            pixels = np.load(npy_path, mmap_mode="r")
            if pixels.shape[0] == len(files):
                return ImageArray(pixels, files, {int(k): v for k, v in meta["bad"].items()})
        except (ValueError, KeyError, OSError):
            pass  # a damaged cache is rebuilt below
    cache_dir.mkdir(parents=True, exist_ok=True)
    pixels, bad = _decode_all(files, img_size, channels, cache_dir, workers, progress, desc)
    # The array is complete before its metadata exists, and both appear by atomic renames.
    tmp_npy = pixels.filename
    pixels.flush()
    del pixels
    os.replace(tmp_npy, npy_path)
    atomic_write_text(meta_path, json.dumps({"files": len(files), "img_size": img_size, "bad": bad}))
    for old in cache_dir.glob(f"images-{img_size}px-{names_key}-*"):  # superseded versions of this file list
        if old.stem != stem.name:
            old.unlink(missing_ok=True)
    return ImageArray(np.load(npy_path, mmap_mode="r"), files, {int(k): v for k, v in bad.items()})


def no_space(folder: str | Path, size: int, what: str, free: int) -> DataError:
    """The error of a cache that does not fit in the free space of `folder`'s disk (option cache_dir)."""
    return DataError(f"no space left on the device of {folder} for {what}: it needs {size / 2**20:,.0f} MB, "
                     f"{free / 2**20:,.0f} MB are free; free some space, or put the cache elsewhere ($IMGCOMP_CACHE)",
                     option="cache_dir", fix="or name another folder")


def check_free_space(folder: str | Path, size: int, what: str):
    """Refuse `size` bytes in `folder` before anything is written when its disk has less free: reserving them
    would fill the disk, for every program on it, before failing."""
    free = shutil.disk_usage(folder).free
    if size > free:
        raise no_space(folder, size, what, free)


def reserve_space(path: str | Path, size: int, what: str):
    """Allocate `size` bytes of `path` on its disk now, so that a full disk is a clear error here rather
    than a crash (SIGBUS) when a memory-mapped page is first written (the free space may have gone since
    `check_free_space`)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            folder = os.path.dirname(os.path.abspath(path))
            raise no_space(folder, size, what, shutil.disk_usage(folder).free) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without fallocate: written as used
            raise
    finally:
        os.close(fd)


def images_per_chunk(pixels, budget_bytes: int = 64 * 2**20) -> int:
    """How many images of `pixels` fit in `budget_bytes` as uint8: work on the cache goes chunk by chunk, so
    memory stays bounded at any image size (never a float copy of the dataset)."""
    return max(1, budget_bytes // max(1, int(np.prod(pixels.shape[1:]))))


def _decode_all(files, img_size, channels, cache_dir, workers, progress, desc):
    n = len(files)
    workers = workers or min(8, os.cpu_count() or 1)

    def new_array(c):
        what = f"the cache of {n} decoded images"
        check_free_space(cache_dir, n * c * img_size * img_size, what)
        fd, name = tempfile.mkstemp(dir=cache_dir, suffix=".npy.tmp")
        os.close(fd)
        try:
            array = np.lib.format.open_memmap(name, mode="w+", dtype=np.uint8, shape=(n, c, img_size, img_size))
            reserve_space(name, os.path.getsize(name), what)
            return array
        except BaseException:
            os.unlink(name)
            raise

    def decode(chunk):
        out = []
        for i in chunk:
            try:
                out.append((i, decode_image(files[i], img_size, channels), None))
            except Exception as e:  # noqa: BLE001 - every failure is reported with its file
                out.append((i, None, str(e)))
        return out

    pixels = new_array(channels or 1)
    bad: dict[str, str] = {}
    # Chunks of images per task: one task per image cost more in scheduling than the decoding itself.
    chunks = [range(s, min(n, s + 256)) for s in range(0, n, 256)]
    try:
        with ThreadPoolExecutor(workers) as pool, tqdm(total=n, desc=desc, unit="img", disable=not progress,
                                                       leave=False) as bar:
            for start in range(0, len(chunks), workers * 2):  # bounded look-ahead
                for results in pool.map(decode, chunks[start:start + workers * 2]):
                    bar.update(len(results))
                    for i, img, err in results:
                        if err is not None:
                            bad[str(i)] = err
                            continue
                        if img.shape[0] == 3 and pixels.shape[1] == 1:  # first colour image: the dataset becomes RGB
                            wider = new_array(3)
                            step = images_per_chunk(wider)
                            for s in range(0, i, step):
                                wider[s:min(i, s + step)] = pixels[s:min(i, s + step)]
                            os.unlink(pixels.filename)
                            pixels = wider
                        elif pixels.shape[1] == 3 and img.shape[0] == 1:
                            img = np.repeat(img, 3, axis=0)
                        pixels[i] = img
    except BaseException:
        os.unlink(pixels.filename)
        raise
    return pixels, bad
