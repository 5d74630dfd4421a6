"""data.py on tiny generated datasets: both layouts, every image format the toolkit promises, the
decode-once cache, batches, splits, augmentation, the Fashion-MNIST demo, and each kind of bad input."""
from __future__ import annotations

import csv
import gzip
import hashlib
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import data
import decode
from conftest import ROOT, class_image, write_csv, write_dataset
from data import DataError
from errors import explain


# ----------------------------------------------------------------------------------------------
# Small local helpers
# ----------------------------------------------------------------------------------------------

def write_image(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img), path
    return path


def gray(value: int, size: int = 8, dtype=np.uint8) -> np.ndarray:
    return np.full((size, size), value, dtype=dtype)


def bgr(b: int, g: int, r: int, size: int = 8) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    img[...] = (b, g, r)
    return img


def load(files, img_size, cache_dir, **kwargs):
    return data.load_images(list(files), img_size, cache_dir=cache_dir, progress=False, **kwargs)


def write_rows(path: Path, header, rows):
    """Like conftest's write_csv, but always UTF-8 (labels with accents)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def csv_competition(root: Path, rows, header=("id", "label"), image_dir="train", ext=".png") -> Path:
    """train.csv with `rows` (id, label); one distinct gray image per id that has a file to write."""
    for i, (ident, _) in enumerate(rows):
        write_image(root / image_dir / f"{ident}{ext}", gray(10 * i % 250))
    write_rows(root / "train.csv", header, rows)
    return root


@pytest.fixture
def decode_calls(monkeypatch):
    """Counts calls of decode.decode_image (the only place a file is decoded)."""
    calls = []
    real = decode.decode_image

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decode, "decode_image", counting)
    return calls


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------

def test_csv_layout_is_detected_and_labels_follow_the_rows(csv_dataset):
    found = data.find_labelled_images(csv_dataset)
    assert found.layout == "csv"
    assert found.class_names == ["bird", "cat", "dog"]  # natural (alphabetical) order, strings kept
    assert len(found.files) == 60 and len(found.labels) == 60
    classes = ("cat", "dog", "bird")  # the order write_dataset numbers them in
    for path, label in zip(found.files, found.labels):
        assert path.parent == csv_dataset / "train"
        assert found.class_names[label] == classes[int(path.stem.split("_")[0])]
    assert found.labels.dtype == np.int64
    assert np.bincount(found.labels).tolist() == [20, 20, 20]


def test_folder_layout_is_detected_and_labels_are_the_folder_names(folder_dataset):
    found = data.find_labelled_images(folder_dataset)
    assert found.layout == "folder"
    assert found.class_names == ["bird", "cat", "dog"]
    assert len(found.files) == 60
    for path, label in zip(found.files, found.labels):
        assert path.parent.name == found.class_names[label]
    assert list(found.labels) == sorted(found.labels)  # grouped by class, stable order
    assert found.notes == []


def test_folder_layout_orders_files_naturally(tmp_path):
    for name in ("img10", "img2", "img1"):
        write_image(tmp_path / "train" / "a" / f"{name}.png", gray(1))
        write_image(tmp_path / "train" / "b" / f"{name}.png", gray(2))
    found = data.find_labelled_images(tmp_path)
    assert [p.stem for p in found.files] == ["img1", "img2", "img10"] * 2


def test_csv_images_may_live_in_an_images_folder(tmp_path):
    rows = [("a", "x"), ("b", "y"), ("c", "x")]
    csv_competition(tmp_path, rows, image_dir="images")
    found = data.find_labelled_images(tmp_path)
    assert [p.name for p in found.files] == ["a.png", "b.png", "c.png"]
    assert all(p.parent == tmp_path / "images" for p in found.files)
    assert [found.class_names[i] for i in found.labels] == ["x", "y", "x"]


def test_csv_ids_with_or_without_extension_in_any_letter_case(tmp_path):
    for name in ("a.PNG", "b.png", "c.Jpg", "d.png", "e.png"):
        write_image(tmp_path / "train" / name, gray(100))
    write_rows(tmp_path / "train.csv", ["id", "label"],
               [("a", "x"), ("b.png", "y"), ("c.jpg", "x"), ("d.PNG", "y"),
                ("train/e.png", "x")])
    found = data.find_labelled_images(tmp_path)
    assert [p.name for p in found.files] == ["a.PNG", "b.png", "c.Jpg", "d.png", "e.png"]
    assert [found.class_names[i] for i in found.labels] == ["x", "y", "x", "y", "x"]


def test_csv_ids_in_subfolders(tmp_path):
    write_image(tmp_path / "train" / "sub" / "a.png", gray(1))
    write_image(tmp_path / "train" / "sub" / "b.png", gray(2))
    write_rows(tmp_path / "train.csv", ["id", "label"], [("sub/a", "x"), ("sub\\b.png", "y")])
    found = data.find_labelled_images(tmp_path)
    assert found.files == [tmp_path / "train" / "sub" / "a.png", tmp_path / "train" / "sub" / "b.png"]


@pytest.mark.parametrize("id_name,label_name", [("id", "label"), ("image", "class"), ("image_id", "target"),
                                                ("filename", "category"), ("file", "label"), ("path", "label"),
                                                ("Image_ID", "Category")])
def test_common_column_names_are_detected(tmp_path, id_name, label_name):
    csv_competition(tmp_path, [("a", "x"), ("b", "y")], header=(id_name, label_name))
    found = data.find_labelled_images(tmp_path)
    assert [p.stem for p in found.files] == ["a", "b"] and found.class_names == ["x", "y"]


def test_column_overrides(tmp_path):
    write_image(tmp_path / "train" / "a.png", gray(1))
    write_image(tmp_path / "train" / "b.png", gray(2))
    # "label" holds something else; the real columns are named explicitly
    write_rows(tmp_path / "train.csv", ["name", "label", "breed"], [("a", "ignored", "x"), ("b", "ignored", "y")])
    with pytest.raises(DataError, match="no id column"):
        data.find_labelled_images(tmp_path)
    found = data.find_labelled_images(tmp_path, id_col="name", label_col="breed")
    assert found.class_names == ["x", "y"]
    assert [found.class_names[i] for i in found.labels] == ["x", "y"]


def test_string_labels_with_spaces_slashes_and_accents_are_kept(tmp_path):
    labels = ["T-shirt/top", "Ankle boot", "café crème", "Ankle boot", " T-shirt/top "]
    csv_competition(tmp_path, [(f"i{k}", label) for k, label in enumerate(labels)])
    found = data.find_labelled_images(tmp_path)
    assert found.class_names == ["Ankle boot", "café crème", "T-shirt/top"]
    assert [found.class_names[i] for i in found.labels] == [s.strip() for s in labels]


def test_accented_class_folders(tmp_path):
    write_image(tmp_path / "train" / "café" / "1.png", gray(1))
    write_image(tmp_path / "train" / "thé vert" / "1.png", gray(2))
    found = data.find_labelled_images(tmp_path)
    assert found.class_names == ["café", "thé vert"]


def test_integer_labels_are_strings_in_natural_order(tmp_path):
    rows = [(f"i{k}", str(label)) for k, label in enumerate([10, 2, 1, 0, 2, 10, 11])]
    csv_competition(tmp_path, rows)
    found = data.find_labelled_images(tmp_path)
    assert found.class_names == ["0", "1", "2", "10", "11"]
    assert all(isinstance(n, str) for n in found.class_names)
    assert [found.class_names[i] for i in found.labels] == ["10", "2", "1", "0", "2", "10", "11"]


def test_every_extension_in_any_letter_case(tmp_path):
    exts = [".png", ".PNG", ".jpg", ".JPG", ".jpeg", ".JPEG", ".bmp", ".BMP", ".tif", ".TIF", ".tiff",
            ".Tiff", ".webp", ".WEBP"]
    for k, ext in enumerate(exts):
        write_image(tmp_path / "train" / ("a" if k % 2 else "b") / f"img{k}{ext}", gray(128, 16))
    found = data.find_labelled_images(tmp_path)
    assert sorted(p.suffix for p in found.files) == sorted(exts)
    arr = load(found.files, 16, tmp_path / "cache")
    assert arr.bad == {}
    # OpenCV stores WebP as colour, so the dataset is RGB with the gray images replicated
    assert arr.pixels.shape == (len(exts), 3, 16, 16)
    assert np.abs(arr.pixels.astype(int) - 128).max() <= 3  # lossy formats come close


def test_find_test_images_natural_order_and_non_images_ignored(tmp_path):
    for name in ("t10.png", "t2.JPG", "t1.png"):
        write_image(tmp_path / "test" / name, gray(5))
    (tmp_path / "test" / "notes.txt").write_text("not an image")
    files = data.find_test_images(tmp_path)
    assert [p.name for p in files] == ["t1.png", "t2.JPG", "t10.png"]


def test_find_test_images_errors(tmp_path):
    with pytest.raises(DataError, match="no test folder"):
        data.find_test_images(tmp_path)
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="holds no images"):
        data.find_test_images(tmp_path)


def test_describe_and_info_command(csv_dataset, capsys):
    data.main(["info", str(csv_dataset)])
    out = capsys.readouterr().out
    assert "csv layout, 60 training images, 3 classes" in out
    assert "'cat': 20" in out and "test images: 12" in out


def test_show_command_draws_training_images_per_class(csv_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data.main(["show", str(csv_dataset), "--per-class", "1"])
    default = tmp_path / "comp-show.png"  # DIR's name + -show.png, in the working folder
    assert capsys.readouterr().out.strip() == str(Path("comp-show.png"))
    data.main(["show", str(csv_dataset), "--per-class", "4", "--out", str(tmp_path / "four.png")])
    one, four = cv2.imread(str(default)), cv2.imread(str(tmp_path / "four.png"))
    assert one is not None and four is not None
    assert four.shape[1] > one.shape[1] and four.shape[0] == one.shape[0]  # wider with more images per class
    assert (tmp_path / "four.png").stat().st_size > default.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["comp-show.png", "four.png"]  # no temp files


def test_show_command_on_multi_label_data_and_bad_options(tmp_path, capsys):
    root = csv_competition(tmp_path / "tags", [(f"i{k}", tags) for k, tags in
                                               enumerate(["sky", "sky sea", "sea tree", "tree", "sky tree", "sea"])],
                           header=("image_name", "tags"))
    out = tmp_path / "tags.png"
    data.main(["show", str(root), "--out", str(out), "--per-class", "2", "--img-size", "16"])
    assert cv2.imread(str(out)) is not None
    for argv, message in [(["--per-class", "0"], "error: --per-class 0: must be at least 1"),
                          (["--img-size", "4"], "error: --img-size 4: must be at least 8")]:
        with pytest.raises(SystemExit) as e:
            data.main(["show", str(root), "--out", str(out), *argv])
        assert str(e.value.code).startswith(message)


def test_preview_picks_images_per_class_by_first_tag():
    import preview
    single = np.array([0, 1, 0, 2, 0, 1])
    picks = preview.pick_per_class(single, 3, 2, exclude={2})
    assert [sorted(p.tolist()) for p in picks][1:] == [[1, 5], [3]]
    assert set(picks[0].tolist()) <= {0, 4} and len(picks[0]) == 2  # image 2 is unreadable
    tags = np.array([[0, 1, 1], [1, 1, 0], [0, 0, 0], [0, 0, 1]], np.uint8)
    assert [p.tolist() for p in preview.pick_per_class(tags, 3, 5)] == [[1], [0], [3]]  # image 2 has no tag


def test_preview_pixels_go_through_training_augmentation():
    import preview
    pixels = np.random.default_rng(0).integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    indices = np.array([4, 1, 3])
    plain = preview.augmented_pixels(pixels, indices, data.Augment(hflip=False))
    assert np.allclose(plain, pixels[indices] / 255.0)
    state = torch.random.get_rng_state()
    flipped = preview.augmented_pixels(pixels, indices, data.Augment(hflip=True), seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # torch's own generator is left as it was
    assert all(np.allclose(f, p) or np.allclose(f, p[..., ::-1]) for f, p in zip(flipped, plain))
    assert np.array_equal(flipped, preview.augmented_pixels(pixels, indices, data.Augment(hflip=True), seed=3))


# ----------------------------------------------------------------------------------------------
# Decoding: channels, bit depth, sizes
# ----------------------------------------------------------------------------------------------

def test_grayscale_dataset_stays_one_channel_and_pixels_are_exact(csv_dataset, tmp_path):
    found = data.find_labelled_images(csv_dataset)
    arr = load(found.files, 16, tmp_path / "cache")
    assert isinstance(arr.pixels, np.memmap)
    assert arr.pixels.dtype == np.uint8 and arr.pixels.shape == (60, 1, 16, 16)
    assert arr.channels == 1
    for i in (0, 25, 59):
        expected = cv2.imread(str(found.files[i]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(arr.pixels[i, 0], expected)


def test_colour_is_converted_from_bgr_to_rgb_once(tmp_path):
    files = [write_image(tmp_path / "red.png", bgr(0, 0, 255)), write_image(tmp_path / "mix.png", bgr(10, 20, 30))]
    arr = load(files, 8, tmp_path / "cache")
    assert arr.pixels.shape == (2, 3, 8, 8)
    assert (arr.pixels[0, 0] == 255).all() and (arr.pixels[0, 1] == 0).all() and (arr.pixels[0, 2] == 0).all()
    assert arr.pixels[1, :, 0, 0].tolist() == [30, 20, 10]
    assert data.decode_image(files[1], 8, None)[:, 3, 3].tolist() == [30, 20, 10]


def test_colour_dataset_matches_the_generated_images(folder_dataset, tmp_path):
    found = data.find_labelled_images(folder_dataset)
    arr = load(found.files, 16, tmp_path / "cache")
    assert arr.pixels.shape == (60, 3, 16, 16)
    expected = cv2.cvtColor(cv2.imread(str(found.files[7])), cv2.COLOR_BGR2RGB).transpose(2, 0, 1)
    np.testing.assert_array_equal(arr.pixels[7], expected)


def test_rgba_drops_alpha(tmp_path):
    img = np.zeros((8, 8, 4), np.uint8)
    img[...] = (10, 20, 30, 0)  # BGRA, fully transparent: the colour is kept, not premultiplied
    files = [write_image(tmp_path / "a.png", img)]
    arr = load(files, 8, tmp_path / "cache")
    assert arr.pixels.shape == (1, 3, 8, 8)
    assert arr.pixels[0, :, 4, 4].tolist() == [30, 20, 10]


def test_rgba_dataset_is_three_channel(tmp_path):
    root = write_dataset(tmp_path / "comp", layout="csv", channels=4, per_class=3, n_test=2)
    found = data.find_labelled_images(root)
    arr = load(found.files, 16, tmp_path / "cache")
    assert arr.pixels.shape == (9, 3, 16, 16)
    bgra = cv2.imread(str(found.files[0]), cv2.IMREAD_UNCHANGED)
    assert bgra.shape[2] == 4
    np.testing.assert_array_equal(arr.pixels[0], bgra[:, :, 2::-1].transpose(2, 0, 1))


def test_sixteen_bit_is_scaled_to_eight_bit(tmp_path):
    colour16 = np.zeros((8, 8, 3), np.uint16)
    colour16[..., 2] = 65535  # red in BGR
    files = [write_image(tmp_path / "white.png", gray(65535, dtype=np.uint16)),
             write_image(tmp_path / "mid.png", gray(257 * 100, dtype=np.uint16)),
             write_image(tmp_path / "zero.tif", gray(0, dtype=np.uint16)),
             write_image(tmp_path / "red16.tiff", colour16)]
    assert cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    arr = load(files, 8, tmp_path / "cache")
    assert arr.pixels.dtype == np.uint8 and arr.pixels.shape == (4, 3, 8, 8)
    assert (arr.pixels[0] == 255).all()
    assert (arr.pixels[1] == 100).all()
    assert (arr.pixels[2] == 0).all()
    assert arr.pixels[3, :, 0, 0].tolist() == [255, 0, 0]


def test_sixteen_bit_gray_dataset_from_class_images(tmp_path):
    rng = np.random.default_rng(0)
    img8 = class_image(1, 3, 16, rng)
    path = write_image(tmp_path / "a.png", class_image(1, 3, 16, np.random.default_rng(0), dtype=np.uint16))
    np.testing.assert_array_equal(data.decode_image(path, 16, None)[0], img8)


# Each depth written as a TIFF holding the uint8 picture `img8` in that depth's units (uint16, int16 and int32:
# over their type's whole range; floats: 0..1, 0..255 as they are, or any range), decoded back to `img8`.
DEPTHS = {
    "uint16": lambda img8: img8.astype(np.uint16) * 257,
    "int16": lambda img8: (img8.astype(np.int32) * 257 - 32768).astype(np.int16),
    "int32": lambda img8: (img8.astype(np.int64) * 16843009 - 2**31).astype(np.int32),  # (2^32 - 1) / 255
    "float32 0..1": lambda img8: (img8 / 255.0).astype(np.float32),
    "float32 0..255": lambda img8: img8.astype(np.float32),
    "float64 -1000..3000": lambda img8: img8.astype(np.float64) * (4000 / 255) - 1000,  # as CT numbers range
}


@pytest.mark.parametrize("depth", list(DEPTHS))
def test_every_depth_decodes_to_the_same_picture_as_its_uint8_image(tmp_path, depth):
    img8 = class_image(1, 3, 16, np.random.default_rng(0))
    img8[0, 0], img8[0, 1] = 0, 255  # the picture's own range is the whole 0..255 (for the stretched float)
    path = write_image(tmp_path / "img.tif", DEPTHS[depth](img8))
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype.name == depth.split()[0]
    decoded = data.decode_image(path, 16, None)[0]
    assert np.abs(decoded.astype(int) - img8).max() <= 1  # a rounding at most: not clipped to black and white
    assert len(np.unique(decoded)) > 10


def test_signed_and_float_images_follow_the_documented_rules():
    # int16: the type's range, also for an image of non-negative values only (every image scaled alike)
    assert decode.to_uint8(np.array([[-32768, 0, 32767]], np.int16)).tolist() == [[0, 128, 255]]
    assert decode.to_uint8(np.array([[0, 32767]], np.int16)).tolist() == [[128, 255]]
    assert decode.to_uint8(np.array([[-128, 127]], np.int8)).tolist() == [[0, 255]]
    # floats: 0..1 times 255; 0..255 as they are; else the image's min..max; NaN 0, infinities 0 / 255
    assert decode.to_uint8(np.array([[0.0, 0.5, 1.0]], np.float32)).tolist() == [[0, 128, 255]]
    assert decode.to_uint8(np.array([[0.0, 2.0, 255.0]], np.float32)).tolist() == [[0, 2, 255]]
    assert decode.to_uint8(np.array([[-1.0, 0.0, 1.0]])).tolist() == [[0, 128, 255]]
    assert decode.to_uint8(np.array([[np.nan, np.inf, -np.inf, 0.5]])).tolist() == [[0, 255, 0, 128]]
    # one value throughout: no division by zero
    for value, expected in ((1000.0, 255), (-5.0, 0), (0.25, 64), (7.0, 7)):
        assert (decode.to_uint8(np.full((4, 4), value, np.float32)) == expected).all(), value
    assert (decode.to_uint8(np.full((4, 4), np.nan, np.float32)) == 0).all()


def test_the_cache_key_changed_with_the_scaling_of_other_depths(tmp_path):
    # version 1 clipped float 0..255 and int16 images to black and white: its caches must not be served
    assert data.CACHE_VERSION >= 2
    files = [write_image(tmp_path / "a.tif", np.full((8, 8), 100, np.float32))]
    names_key, full_key = data.cache_key(files, 8, None)
    old_names = hashlib.sha256(f"v1|8|None|{os.path.abspath(files[0])}\0".encode()).hexdigest()[:12]
    assert names_key != old_names
    assert (load(files, 8, tmp_path / "cache").pixels == 100).all()


def test_mixed_gray_and_colour_dataset_becomes_rgb_with_gray_replicated(tmp_path):
    files = [write_image(tmp_path / "0.png", gray(10)),
             write_image(tmp_path / "1.png", gray(20)),
             write_image(tmp_path / "2.png", bgr(0, 0, 255)),  # the first colour image
             write_image(tmp_path / "3.png", gray(200)),
             write_image(tmp_path / "4.jpg", gray(100))]  # a gray JPEG
    arr = load(files, 8, tmp_path / "cache")
    assert arr.pixels.shape == (5, 3, 8, 8)
    for i, value in ((0, 10), (1, 20), (3, 200)):
        assert (arr.pixels[i] == value).all(), i
    assert arr.pixels[2, :, 0, 0].tolist() == [255, 0, 0]
    assert (arr.pixels[4, 0] == arr.pixels[4, 1]).all() and (arr.pixels[4, 1] == arr.pixels[4, 2]).all()


def test_mixed_dataset_widens_the_array_only_once(tmp_path, monkeypatch):
    """Gray images after the first colour one are replicated, not a reason to copy the array again."""
    files = [write_image(tmp_path / "0.png", bgr(0, 0, 255))]
    files += [write_image(tmp_path / f"{i}.png", gray(i * 10)) for i in range(1, 8)]
    created = []
    real_mkstemp = decode.tempfile.mkstemp

    def counting_mkstemp(*args, **kwargs):
        created.append(1)
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(decode.tempfile, "mkstemp", counting_mkstemp)
    arr = load(files, 8, tmp_path / "cache", workers=1)
    assert len(created) <= 2  # the 1-channel start and one 3-channel array
    assert [int(v) for v in arr.pixels[1:, 1, 0, 0]] == [i * 10 for i in range(1, 8)]
    leftovers = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(leftovers) == 2 and {Path(n).suffix for n in leftovers} == {".npy", ".json"}


def test_channels_can_be_forced(tmp_path):
    files = [write_image(tmp_path / "red.png", bgr(0, 0, 255)), write_image(tmp_path / "g.png", gray(90))]
    one = load(files, 8, tmp_path / "cache", channels=1)
    assert one.pixels.shape == (2, 1, 8, 8)
    assert abs(int(one.pixels[0, 0, 0, 0]) - 76) <= 1  # 0.299 * 255
    assert (one.pixels[1] == 90).all()
    three = load(files[1:], 8, tmp_path / "cache", channels=3)
    assert three.pixels.shape == (1, 3, 8, 8) and (three.pixels == 90).all()


def test_mixed_sizes_are_resized(tmp_path):
    files = [write_image(tmp_path / "small.png", gray(50, 8)),
             write_image(tmp_path / "wide.png", np.full((12, 20), 150, np.uint8)),
             write_image(tmp_path / "big.png", gray(250, 32)),
             write_image(tmp_path / "exact.png", gray(7, 16))]
    arr = load(files, 16, tmp_path / "cache")
    assert arr.pixels.shape == (4, 1, 16, 16)
    assert [int(v) for v in arr.pixels[:, 0].reshape(4, -1).min(1)] == [50, 150, 250, 7]
    assert [int(v) for v in arr.pixels[:, 0].reshape(4, -1).max(1)] == [50, 150, 250, 7]


def test_resize_keeps_image_content(tmp_path):
    img = np.zeros((32, 32), np.uint8)
    img[:16] = 255  # top half white
    arr = load([write_image(tmp_path / "half.png", img)], 8, tmp_path / "cache")
    assert (arr.pixels[0, 0, :4] == 255).all() and (arr.pixels[0, 0, 4:] == 0).all()


def test_load_images_of_no_files():
    with pytest.raises(DataError, match="no image files"):
        data.load_images([], 8)


# ----------------------------------------------------------------------------------------------
# Bad image files
# ----------------------------------------------------------------------------------------------

def test_unreadable_truncated_and_empty_files_are_reported(tmp_path):
    good = [write_image(tmp_path / f"good{i}.png", gray(30 * i + 1)) for i in range(3)]
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all" * 10)
    full = cv2.imencode(".png", class_image(0, 2, 16, np.random.default_rng(1)))[1].tobytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full[: len(full) // 2])
    jpeg = cv2.imencode(".jpg", bgr(1, 2, 3, 32))[1].tobytes()
    truncated_jpg = tmp_path / "truncated.jpg"
    truncated_jpg.write_bytes(jpeg[: len(jpeg) // 2])
    files = [good[0], empty, good[1], garbage, truncated, truncated_jpg, good[2]]

    arr = load(files, 8, tmp_path / "cache")
    assert sorted(arr.bad) == [1, 3, 4, 5]
    assert "empty" in arr.bad[1]
    assert "decode" in arr.bad[3]
    assert arr.good_indices().tolist() == [0, 2, 6]
    assert [int(arr.pixels[i, 0, 0, 0]) for i in arr.good_indices()] == [1, 31, 61]
    with pytest.raises(DataError) as err:
        arr.raise_if_bad()
    message = str(err.value)
    assert "4 image file(s) cannot be read" in message
    for path in (empty, garbage, truncated, truncated_jpg):
        assert str(path) in message
    for path in good:
        assert str(path) not in message


def test_bad_files_are_remembered_by_the_cache(tmp_path, decode_calls):
    files = [write_image(tmp_path / "ok.png", gray(9)), tmp_path / "bad.png"]
    files[1].write_bytes(b"\x89PNG broken")
    first = load(files, 8, tmp_path / "cache")
    assert len(decode_calls) == 2
    second = load(files, 8, tmp_path / "cache")
    assert len(decode_calls) == 2
    assert second.bad == first.bad and list(second.bad) == [1]
    assert second.good_indices().tolist() == [0]


# ----------------------------------------------------------------------------------------------
# The decode-once cache
# ----------------------------------------------------------------------------------------------

def cache_files(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir())


def test_second_load_reuses_the_cache(csv_dataset, tmp_path, decode_calls, monkeypatch):
    files = data.find_labelled_images(csv_dataset).files
    cache = tmp_path / "cache"
    first = load(files, 16, cache)
    assert len(decode_calls) == 60
    first_pixels = np.array(first.pixels)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode, "decode_image", no_decoding)
    second = load(files, 16, cache)
    assert second.bad == {}  # decode_image's failures would land here
    np.testing.assert_array_equal(np.array(second.pixels), first_pixels)
    assert len(cache_files(cache)) == 2


def test_changed_file_invalidates_the_cache_and_old_files_are_removed(tmp_path, decode_calls):
    files = [write_image(tmp_path / f"{i}.png", gray(10 * i)) for i in range(4)]
    cache = tmp_path / "cache"
    load(files, 8, cache)
    before = cache_files(cache)
    assert len(before) == 2 and len(decode_calls) == 4

    write_image(files[2], gray(222))  # same size on disk, new content
    st = os.stat(files[2])
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    arr = load(files, 8, cache)
    assert len(decode_calls) == 8
    assert [int(v) for v in arr.pixels[:, 0, 0, 0]] == [0, 10, 222, 30]
    after = cache_files(cache)
    assert len(after) == 2 and set(after).isdisjoint(before)  # the superseded cache is gone

    load(files, 8, cache)
    assert len(decode_calls) == 8


def test_cache_is_keyed_by_size_channels_and_file_list(tmp_path, decode_calls):
    files = [write_image(tmp_path / f"{i}.png", gray(10 * i)) for i in range(3)]
    cache = tmp_path / "cache"
    load(files, 8, cache)
    assert load(files, 12, cache).pixels.shape == (3, 1, 12, 12)
    assert load(files, 8, cache, channels=3).pixels.shape == (3, 3, 8, 8)
    assert load(files[:2], 8, cache).pixels.shape == (2, 1, 8, 8)
    assert len(decode_calls) == 3 + 3 + 3 + 2
    assert len(cache_files(cache)) == 8  # four different lists/requests, none superseded
    load(files, 8, cache)
    load(files, 12, cache)
    assert len(decode_calls) == 11


def test_damaged_cache_is_rebuilt(tmp_path, decode_calls):
    files = [write_image(tmp_path / f"{i}.png", gray(10 * i)) for i in range(3)]
    cache = tmp_path / "cache"
    load(files, 8, cache)
    for path in cache.glob("*.json"):
        path.write_text("{not json")
    arr = load(files, 8, cache)
    assert len(decode_calls) == 6
    assert [int(v) for v in arr.pixels[:, 0, 0, 0]] == [0, 10, 20]


def test_default_cache_dir_does_not_disturb_the_dataset(tmp_path, monkeypatch, decode_calls):
    monkeypatch.delenv("IMGCOMP_CACHE", raising=False)
    for layout in ("csv", "folder"):
        root = write_dataset(tmp_path / layout, layout=layout, per_class=3, n_test=2)
        found = data.find_labelled_images(root)
        assert data.cache_dir_for(root) == root / ".cache"  # the one documented place: DIR/.cache
        data.load_images(found.files, 16, cache_dir=data.cache_dir_for(root), progress=False)
        assert list((root / ".cache").glob("*.npy"))
        assert not list(root.glob("train/**/.cache"))
        again = data.find_labelled_images(root)
        assert again.files == found.files and again.notes == []
        data.load_images(found.files, 16, cache_dir=data.cache_dir_for(root), progress=False)
    assert len(decode_calls) == 18


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCOMP_CACHE", str(tmp_path / "envcache"))
    files = [write_image(tmp_path / "imgs" / "a.png", gray(1)), write_image(tmp_path / "imgs" / "b.png", gray(2))]
    data.load_images(files, 8, progress=False)
    assert len(list((tmp_path / "envcache").glob("*.npy"))) == 1
    assert not (tmp_path / "imgs" / ".cache").exists()


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------

def test_stratified_split():
    labels = np.array([0] * 10 + [1] * 20 + [2] * 30)
    train, val = data.stratified_split(labels, 0.2, seed=0)
    assert np.bincount(labels[val]).tolist() == [2, 4, 6]
    assert np.bincount(labels[train]).tolist() == [8, 16, 24]
    assert np.intersect1d(train, val).size == 0
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(60))
    again = data.stratified_split(labels, 0.2, seed=0)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], val)
    other = data.stratified_split(labels, 0.2, seed=1)
    assert not np.array_equal(other[1], val)


def test_split_keeps_small_classes_in_both_parts_when_possible():
    labels = np.array([0] * 2 + [1] * 1 + [2] * 40)
    train, val = data.stratified_split(labels, 0.1, seed=3)
    assert np.bincount(labels[val], minlength=3).tolist() == [1, 0, 4]
    assert np.bincount(labels[train], minlength=3).tolist() == [1, 1, 36]


def test_zero_val_split_is_all_training():
    labels = np.array([0, 1, 0, 1, 1])
    train, val = data.stratified_split(labels, 0.0, seed=0)
    assert train.tolist() == [0, 1, 2, 3, 4] and val.size == 0


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_bad_val_split(bad):
    with pytest.raises(DataError, match="val_split") as err:
        data.stratified_split(np.array([0, 1, 0, 1]), bad, seed=0)
    assert err.value.option == "val_split"


# ----------------------------------------------------------------------------------------------
# Batches and prefetching
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def numbered():
    """Image i has every pixel equal to i; label i is 100 + i."""
    pixels = np.broadcast_to(np.arange(20, dtype=np.uint8)[:, None, None, None], (20, 1, 4, 4)).copy()
    return pixels, np.arange(100, 120, dtype=np.int64)


def batch_ids(batches):
    return [x[:, 0, 0, 0].tolist() for x, _ in batches]


def test_batches_in_order_with_matching_labels(numbered):
    pixels, labels = numbered
    indices = np.arange(2, 12)
    batches = list(data.iterate_batches(pixels, labels, indices, 4))
    assert batch_ids(batches) == [[2, 3, 4, 5], [6, 7, 8, 9], [10, 11]]
    for x, y in batches:
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 4, 4)
        assert (y - 100).tolist() == x[:, 0, 0, 0].tolist()
    assert data.count_batches(10, 4, drop_last=False) == 3
    dropped = list(data.iterate_batches(pixels, labels, indices, 4, drop_last=True))
    assert batch_ids(dropped) == [[2, 3, 4, 5], [6, 7, 8, 9]]
    assert data.count_batches(10, 4, drop_last=True) == 2


def test_batches_without_labels_yield_indices(numbered):
    pixels, _ = numbered
    (x, y), = data.iterate_batches(pixels, None, np.array([5, 3, 9]), 8)
    # gathered in index order (sequential reads of the memmap); y says which image each row is
    assert y.tolist() == [3, 5, 9] and x[:, 0, 0, 0].tolist() == [3, 5, 9]


def test_shuffle_is_seeded_and_resumable(numbered):
    pixels, labels = numbered
    idx = np.arange(20)

    def epoch(**kw):
        return batch_ids(data.iterate_batches(pixels, labels, idx, 6, shuffle=True, **kw))

    first = epoch(seed=1, epoch=0)
    assert first == epoch(seed=1, epoch=0)
    assert first != epoch(seed=1, epoch=1) and first != epoch(seed=2, epoch=0)
    assert sorted(sum(first, [])) == list(range(20))
    assert sum(first, []) != list(range(20))
    assert epoch(seed=1, epoch=0, start_step=2) == first[2:]
    assert len(first) == data.count_batches(20, 6, False) == 4


def test_ranks_share_each_batch(numbered):
    pixels, labels = numbered
    idx = np.arange(20)
    whole = batch_ids(data.iterate_batches(pixels, labels, idx, 8, shuffle=True, seed=4))
    parts = [batch_ids(data.iterate_batches(pixels, labels, idx, 8, shuffle=True, seed=4, rank=r, world_size=3))
             for r in range(3)]
    assert all(len(p) == len(whole) for p in parts)
    for step, batch in enumerate(whole):
        shares = [p[step] for p in parts]
        assert sorted(sum(shares, [])) == sorted(batch)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_prefetch_yields_the_same_batches(numbered):
    pixels, labels = numbered
    plain = list(data.iterate_batches(pixels, labels, np.arange(20), 3))
    fetched = list(data.prefetch(data.iterate_batches(pixels, labels, np.arange(20), 3), torch.device("cpu")))
    assert len(fetched) == len(plain) == 7
    for (x1, y1), (x2, y2) in zip(plain, fetched):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_prefetch_passes_errors_on_and_stops_early():
    def failing():
        yield torch.zeros(1), torch.zeros(1)
        raise RuntimeError("boom in the loader")

    with pytest.raises(RuntimeError, match="boom"):
        list(data.prefetch(failing(), torch.device("cpu")))

    produced = []

    def many():
        for i in range(10_000):
            produced.append(i)
            yield torch.tensor([i]), torch.tensor([i])

    for x, _ in data.prefetch(many(), torch.device("cpu"), depth=2):
        assert x.item() == 0
        break
    assert len(produced) < 100  # the producer stopped instead of running to the end


# ----------------------------------------------------------------------------------------------
# Augmentation, statistics and normalisation
# ----------------------------------------------------------------------------------------------

def test_hflip_flips_some_whole_images():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = data.Augment(hflip=True, rotate=0)(x)
    assert out.shape == x.shape
    flipped = 0
    for a, b in zip(x, out):
        if torch.equal(a, b):
            continue
        assert torch.equal(a.flip(-1), b)
        flipped += 1
    assert 10 < flipped < 54


def test_no_augmentation_is_identity():
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(data.Augment(hflip=False, rotate=0)(x), x)


def test_rotation_on_a_batch():
    torch.manual_seed(0)
    x = torch.ones(16, 3, 16, 16)
    out = data.Augment(hflip=False, rotate=30)(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 + 1e-5
    assert (out > 0.99).all()  # what rotates in at the corners is the image mirrored, never black
    assert torch.equal(x, torch.ones(16, 3, 16, 16))  # the input is not modified
    ramp = torch.linspace(0, 1, 16).expand(16, 3, 16, 16).contiguous()
    turned = data.Augment(hflip=False, rotate=30)(ramp)
    assert not torch.allclose(turned, ramp, atol=0.05)  # it does rotate


def test_dihedral_gives_all_eight_orientations_exactly():
    torch.manual_seed(0)
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(200, 2, 1, 1) / 16  # no two orientations alike
    out = data.Augment(hflip=True, dihedral=True)(x)
    views = {}
    for k in range(4):
        turned = torch.rot90(x[0], k, (1, 2))
        views[f"rot{k}"], views[f"rot{k}-flip"] = turned, turned.flip(2)
    seen = set()
    for img in out:
        match = [name for name, view in views.items() if torch.equal(img, view)]
        assert len(match) == 1  # moved as a whole, without interpolation
        seen.add(match[0])
    assert seen == set(views)
    assert torch.equal(data.Augment(hflip=False, dihedral=False)(x), x)


def _orientations(x: torch.Tensor, mirrored: bool) -> list[torch.Tensor]:
    turned = [torch.rot90(x, k, (2, 3)) for k in range(4)]
    return turned + [t.flip(3) for t in turned] if mirrored else turned


@pytest.mark.parametrize("hflip,count", [(True, 8), (False, 4)])
def test_tta_views_are_the_orientations_training_showed(hflip, count):
    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # no two orientations alike
    views = data.tta_views(x, hflip, dihedral=True)
    assert len(views) == count and views[0] is x
    assert len({tuple(v.flatten().tolist()) for v in views}) == count  # all different
    # Each is one of the 8 orientations; training's dihedral without flips (vertical flips, transposes) gives 4.
    every = {tuple(v.flatten().tolist()) for v in _orientations(x, True)}
    assert {tuple(v.flatten().tolist()) for v in views} <= every
    torch.manual_seed(0)
    trained = {tuple(img.flatten().tolist()) for img in data.Augment(hflip=hflip, dihedral=True)(x.repeat(200, 1, 1, 1))}
    assert trained == {tuple(v.flatten().tolist()) for v in views}
    assert [v.shape for v in data.tta_views(x, hflip)] == [x.shape] * (2 if hflip else 1)


def test_shifts_fill_the_edges_with_the_image_mirrored_not_black():
    # A black band's straight edges and corner look like shapes' features: a CNN on objects placed at random learnt
    # them from every shifted image (bench/competitions.py objects, --translate 3: 69% test accuracy with black edges).
    torch.manual_seed(0)
    x = torch.full((32, 3, 16, 16), 0.5)
    x[:, :, :, :2] = 0.8  # a bright left edge: what comes in from the left is that edge, mirrored
    out = data.Augment(hflip=False, translate=3)(x)
    assert out.min() >= 0.5 - 1e-5
    moved_right = [img for img in out if img[0, :, 2].mean() > 0.7 and img[0, :, 3].mean() > 0.7]
    assert moved_right, "no image shifted right shows its bright edge, mirrored, where black would have been"


def test_translation_moves_whole_images_by_whole_pixels():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 12, 12)
    x[:, :, 6, 5] = 1.0  # one bright pixel per image
    out = data.Augment(hflip=False, translate=2)(x)
    shifts = set()
    for img in out[:, 0]:
        assert torch.allclose(img.sum(), torch.tensor(1.0), atol=1e-5)  # moved exactly, not blurred
        r, c = divmod(int(img.argmax()), 12)
        assert abs(r - 6) <= 2 and abs(c - 5) <= 2
        shifts.add((r - 6, c - 5))
    assert len(shifts) > 10  # shifts are drawn per image, in both directions


def test_random_erasing_replaces_one_rectangle_per_chosen_image():
    torch.manual_seed(0)
    x = torch.full((200, 2, 20, 20), 2.0)  # outside 0..1, so every erased pixel shows
    out = data.Augment(hflip=False, erase=0.5)(x)
    erased = 0
    for img in out:
        changed = (img != 2.0)
        assert torch.equal(changed[0], changed[1])  # the same rectangle in every channel
        if not changed.any():
            continue
        erased += 1
        rows, cols = changed[0].any(1).nonzero().flatten(), changed[0].any(0).nonzero().flatten()
        box = changed[0, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()  # a filled rectangle
        assert 0.01 <= box.numel() / 400 <= 0.45
        assert img[changed].max() <= 1.0  # filled with 0..1 noise
    assert 70 < erased < 130
    assert torch.equal(data.Augment(hflip=False, erase=0.0)(x), x)


def test_channel_stats_to_float_and_normalize():
    pixels = np.zeros((3, 2, 4, 4), np.uint8)
    pixels[1, 0] = 255
    pixels[2, 0] = 255  # left out of the statistics below
    pixels[:, 1] = 51
    mean, std = data.channel_stats(pixels, np.array([1, 0]))
    assert mean == pytest.approx([0.5, 0.2])
    assert std == pytest.approx([0.5, 0.0], abs=1e-5)
    again_mean, again_std = data.channel_stats(pixels, np.array([0, 1]), chunk=1)
    assert again_mean == pytest.approx(mean) and again_std == pytest.approx(std)

    x = data.to_float(torch.from_numpy(pixels[:2]))
    assert x.dtype == torch.float32 and x.max() == 1.0 and x[0, 1, 0, 0] == pytest.approx(0.2)
    z = data.normalize(x, mean, std)
    assert z[:, 0].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert z[:, 0].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_normalize_real_images(tmp_path, folder_dataset):
    found = data.find_labelled_images(folder_dataset)
    arr = load(found.files, 16, tmp_path / "cache")
    idx = np.arange(len(found.files))
    mean, std = data.channel_stats(arr.pixels, idx)
    z = data.normalize(data.to_float(torch.from_numpy(np.array(arr.pixels))), mean, std)
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (z.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3


# ----------------------------------------------------------------------------------------------
# The Fashion-MNIST demo
# ----------------------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x00000800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture
def fake_fashion_source(tmp_path):
    """A fake source folder: 7 training and 5 test images of 28x28, each with its own pattern."""
    src = tmp_path / "fashion-source"
    src.mkdir()
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    y_train = np.array([0, 9, 3, 0, 5, 8, 1], np.uint8)
    y_test = np.array([9, 0, 2, 7, 6], np.uint8)
    write_idx(src / "train-images-idx3-ubyte.gz", x_train)
    write_idx(src / "train-labels-idx1-ubyte.gz", y_train)
    write_idx(src / "t10k-images-idx3-ubyte.gz", x_test)
    write_idx(src / "t10k-labels-idx1-ubyte.gz", y_test)
    return src, (x_train, y_train, x_test, y_test)


def test_idx_writer_matches_the_format(fake_fashion_source):
    src, (x_train, y_train, _, _) = fake_fashion_source
    with gzip.open(src / "train-images-idx3-ubyte.gz", "rb") as f:
        assert f.read(16) == bytes.fromhex("00000803" "00000007" "0000001c" "0000001c")
    np.testing.assert_array_equal(data.read_idx(src / "train-labels-idx1-ubyte.gz"), y_train)


def test_fashion_mnist_arrays_read_a_source_folder(fake_fashion_source):
    # public: bench/shapes.py builds its competitions from these arrays
    import demo
    src, expected = fake_fashion_source
    for got, want in zip(demo.fashion_mnist_arrays(src), expected):
        np.testing.assert_array_equal(got, want)


def test_write_fashion_mnist_from_a_source_folder(tmp_path, fake_fashion_source):
    src, (x_train, y_train, x_test, y_test) = fake_fashion_source
    out = data.write_fashion_mnist(tmp_path / "fm", source=src, limit=4)
    assert out == tmp_path / "fm"
    assert not (tmp_path / "fm.partial").exists()
    assert sorted(p.name for p in out.iterdir()) == ["sample_submission.csv", "solution.csv", "test", "train",
                                                     "train.csv"]
    names = data.FASHION_MNIST_CLASSES
    assert read_rows(out / "train.csv") == [["id", "label"]] + [
        [f"train_{i:05d}", names[y]] for i, y in enumerate(y_train[:4])]
    assert read_rows(out / "train.csv")[1] == ["train_00000", "T-shirt/top"]
    assert read_rows(out / "solution.csv") == [["id", "label"]] + [
        [f"test_{i:05d}", names[y]] for i, y in enumerate(y_test[:4])]
    assert read_rows(out / "sample_submission.csv")[1:] == [[f"test_{i:05d}", "T-shirt/top"] for i in range(4)]
    assert len(list((out / "train").iterdir())) == 4 and len(list((out / "test").iterdir())) == 4
    for i in range(4):
        np.testing.assert_array_equal(cv2.imread(str(out / "train" / f"train_{i:05d}.png"), cv2.IMREAD_UNCHANGED),
                                      x_train[i])
        np.testing.assert_array_equal(cv2.imread(str(out / "test" / f"test_{i:05d}.png"), cv2.IMREAD_UNCHANGED),
                                      x_test[i])

    # the result is a valid competition in the CSV layout
    found = data.find_labelled_images(out)
    assert found.layout == "csv"
    assert found.class_names == ["Ankle boot", "Dress", "T-shirt/top"]
    arr = load(found.files, 28, tmp_path / "cache")
    assert arr.pixels.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(arr.pixels[:, 0], x_train[:4])
    assert len(data.find_test_images(out)) == 4


def test_write_fashion_mnist_without_limit_and_twice(tmp_path, fake_fashion_source):
    src, _ = fake_fashion_source
    out = data.write_fashion_mnist(tmp_path / "fm", source=src)
    assert len(read_rows(out / "train.csv")) == 8 and len(read_rows(out / "solution.csv")) == 6
    (out / "train.csv").write_text("id,label\nmarker,kept\n")
    data.write_fashion_mnist(out, source=src)  # already there: left alone
    assert (out / "train.csv").read_text() == "id,label\nmarker,kept\n"


def test_fashion_mnist_command_line(tmp_path, fake_fashion_source):
    src, (_, y_train, _, _) = fake_fashion_source
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "data.py", "fashion-mnist", str(out), "--source", str(src),
                             "--limit", "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = read_rows(out / "train.csv")
    assert [r[1] for r in rows[1:]] == [data.FASHION_MNIST_CLASSES[y] for y in y_train[:3]]
    assert len(list((out / "test").glob("*.png"))) == 3


def test_fashion_mnist_with_no_source_and_no_download(tmp_path, monkeypatch):
    torchvision_datasets = pytest.importorskip("torchvision.datasets")

    def offline(*args, **kwargs):
        raise RuntimeError("no network here")

    monkeypatch.setattr(torchvision_datasets, "FashionMNIST", offline)
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        data.write_fashion_mnist(tmp_path / "fm", source=missing)
    message = str(err.value)
    assert str(missing) in message and "no network here" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not (tmp_path / "fm").exists()


@pytest.mark.skipif(not data.FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_with_limit(tmp_path):
    out = data.write_fashion_mnist(tmp_path / "fm", limit=50)
    found = data.find_labelled_images(out)
    assert len(found.files) == 50 and set(found.class_names) <= set(data.FASHION_MNIST_CLASSES)
    assert len(found.class_names) >= 5
    assert len(data.find_test_images(out)) == 50
    arr = load(found.files, 28, tmp_path / "cache")
    assert arr.bad == {} and arr.pixels.shape == (50, 1, 28, 28) and arr.pixels.max() > 200


# ----------------------------------------------------------------------------------------------
# Bad datasets: a DataError that names the row, file or flag
# ----------------------------------------------------------------------------------------------

def test_csv_row_with_missing_file(tmp_path):
    csv_competition(tmp_path, [("a", "x"), ("b", "y")])
    with open(tmp_path / "train.csv", "a", newline="") as f:
        csv.writer(f).writerow(["ghost", "x"])
    with pytest.raises(DataError) as err:
        data.find_labelled_images(tmp_path)
    assert "line 4" in str(err.value) and "'ghost'" in str(err.value) and "not found" in str(err.value)


def test_duplicate_ids(tmp_path):
    csv_competition(tmp_path, [("a", "x"), ("b", "y")])
    write_rows(tmp_path / "train.csv", ["id", "label"], [("a", "x"), ("b", "y"), ("a", "y")])
    with pytest.raises(DataError) as err:
        data.find_labelled_images(tmp_path)
    assert "duplicate" in str(err.value) and "line 4" in str(err.value) and "line 2" in str(err.value)


def test_same_file_listed_with_and_without_extension_is_a_duplicate(tmp_path):
    csv_competition(tmp_path, [("a", "x"), ("b", "y")])
    write_rows(tmp_path / "train.csv", ["id", "label"], [("a", "x"), ("b", "y"), ("a.png", "y")])
    with pytest.raises(DataError) as err:
        data.find_labelled_images(tmp_path)
    assert "duplicate" in str(err.value) and "line 4" in str(err.value) and "'a.png'" in str(err.value)


def test_missing_label_column(tmp_path):
    csv_competition(tmp_path, [("a", "x"), ("b", "y")], header=("id", "something"))
    with pytest.raises(DataError, match="no label column") as err:
        data.find_labelled_images(tmp_path)
    assert "--label-col" not in str(err.value)  # the data layer states the facts; the command line names the flag
    assert re.search("no label column.*--label-col", explain(err.value))


def test_missing_id_column(tmp_path):
    csv_competition(tmp_path, [("a", "x"), ("b", "y")], header=("name", "label"))
    with pytest.raises(DataError, match="no id column") as err:
        data.find_labelled_images(tmp_path)
    assert re.search("no id column.*--id-col", explain(err.value))


def test_id_col_naming_a_column_that_does_not_exist(tmp_path, capsys):
    csv_competition(tmp_path, [("a", "x"), ("b", "y")])
    with pytest.raises(DataError, match="'nope' is not a column") as err:
        data.find_labelled_images(tmp_path, id_col="nope")
    assert err.value.option == "id_col" and explain(err.value).endswith("--id-col")
    with pytest.raises(DataError, match="'nope' is not a column") as err:
        data.find_labelled_images(tmp_path, label_col="nope")
    assert err.value.option == "label_col" and explain(err.value).endswith("--label-col")
    with pytest.raises(SystemExit) as exit_:
        data.main(["info", str(tmp_path), "--id-col", "nope"])
    code = str(exit_.value.code)
    assert "'nope' is not a column" in code and code.endswith("--id-col") and code.startswith("error:")


def test_empty_class_folder(tmp_path):
    write_image(tmp_path / "train" / "cat" / "1.png", gray(1))
    write_image(tmp_path / "train" / "dog" / "1.png", gray(2))
    (tmp_path / "train" / "bird").mkdir()
    with pytest.raises(DataError, match=r"bird holds no images"):
        data.find_labelled_images(tmp_path)
    (tmp_path / "train" / "bird" / "readme.txt").write_text("only text")
    with pytest.raises(DataError, match=r"bird holds no images"):
        data.find_labelled_images(tmp_path)


def test_fewer_than_two_classes(tmp_path):
    csv_competition(tmp_path / "csv", [("a", "x"), ("b", "x")])
    with pytest.raises(DataError, match="1 class.*at least two"):
        data.find_labelled_images(tmp_path / "csv")
    write_image(tmp_path / "folder" / "train" / "only" / "1.png", gray(1))
    with pytest.raises(DataError, match="1 class.*at least two"):
        data.find_labelled_images(tmp_path / "folder")


def test_non_image_files_are_ignored_with_a_note(tmp_path):
    csv_root = csv_competition(tmp_path / "csv", [("a", "x"), ("b", "y")])
    (csv_root / "train" / "readme.txt").write_text("hello")
    (csv_root / "train" / ".DS_Store").write_bytes(b"\0")
    found = data.find_labelled_images(csv_root)
    assert [p.name for p in found.files] == ["a.png", "b.png"]
    assert any("non-image" in n and "readme.txt" in n for n in found.notes)
    assert not any(".DS_Store" in n for n in found.notes)

    folder_root = tmp_path / "folder"
    write_image(folder_root / "train" / "x" / "1.png", gray(1))
    write_image(folder_root / "train" / "y" / "1.png", gray(2))
    (folder_root / "train" / "y" / "Thumbs.db").write_bytes(b"\0")
    (folder_root / "train" / "labels.txt").write_text("loose")
    found = data.find_labelled_images(folder_root)
    assert [p.name for p in found.files] == ["1.png", "1.png"]
    assert any("Thumbs.db" in n for n in found.notes)
    assert any("not in a class folder" in n for n in found.notes)


def test_unlisted_images_are_noted(tmp_path):
    csv_competition(tmp_path, [("a", "x"), ("b", "y"), ("c", "x")])
    write_rows(tmp_path / "train.csv", ["id", "label"], [("a", "x"), ("b", "y")])
    found = data.find_labelled_images(tmp_path)
    assert len(found.files) == 2 and any("1 image(s)" in n and "not listed" in n for n in found.notes)


@pytest.mark.parametrize("ident", ["/etc/passwd", "../outside.png", "../outside", "sub/../../outside.png",
                                   "..\\outside.png", "C:\\outside.png", "\\\\server\\outside.png"])
def test_ids_that_escape_the_data_folder(tmp_path, ident):
    root = csv_competition(tmp_path / "comp", [("a", "x"), ("b", "y")])
    write_image(tmp_path / "comp" / "outside.png", gray(3))  # exists, so "not found" could not hide it
    write_image(tmp_path / "outside.png", gray(3))
    write_rows(root / "train.csv", ["id", "label"], [("a", "x"), (ident, "y"), ("b", "y")])
    with pytest.raises(DataError) as err:
        data.find_labelled_images(root)
    assert "line 3" in str(err.value) and "outside the data folder" in str(err.value)


def test_empty_label_and_empty_id(tmp_path):
    root = csv_competition(tmp_path, [("a", "x"), ("b", "y")])
    write_rows(root / "train.csv", ["id", "label"], [("a", "x"), ("b", "  ")])
    with pytest.raises(DataError, match="line 3: empty label for id 'b'"):
        data.find_labelled_images(root)
    write_rows(root / "train.csv", ["id", "label"], [("", "x"), ("b", "y")])
    with pytest.raises(DataError, match="line 2: empty id"):
        data.find_labelled_images(root)


def test_ambiguous_id(tmp_path):
    write_image(tmp_path / "train" / "a.png", gray(1))
    write_image(tmp_path / "train" / "a.jpg", gray(2))
    write_image(tmp_path / "train" / "b.png", gray(3))
    write_rows(tmp_path / "train.csv", ["id", "label"], [("a", "x"), ("b", "y")])
    with pytest.raises(DataError, match="'a' matches several files"):
        data.find_labelled_images(tmp_path)
    write_rows(tmp_path / "train.csv", ["id", "label"], [("a.jpg", "x"), ("b", "y")])
    assert data.find_labelled_images(tmp_path).files[0].name == "a.jpg"


def test_dataset_folder_problems(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.find_labelled_images(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither train.csv nor a train/ folder"):
        data.find_labelled_images(tmp_path / "empty")
    (tmp_path / "flat" / "train").mkdir(parents=True)
    write_image(tmp_path / "flat" / "train" / "a.png", gray(1))
    with pytest.raises(DataError, match="no class folders"):
        data.find_labelled_images(tmp_path / "flat")
    (tmp_path / "csvonly").mkdir()
    write_csv(tmp_path / "csvonly" / "train.csv", ["id", "label"], [("a", "x")])
    with pytest.raises(DataError, match="no image folder"):
        data.find_labelled_images(tmp_path / "csvonly")
    (tmp_path / "csvonly" / "train").mkdir()
    (tmp_path / "csvonly" / "train.csv").write_text("")
    with pytest.raises(DataError, match="empty file"):
        data.find_labelled_images(tmp_path / "csvonly")
    write_csv(tmp_path / "csvonly" / "train.csv", ["id", "label"], [])
    with pytest.raises(DataError, match="no rows"):
        data.find_labelled_images(tmp_path / "csvonly")
