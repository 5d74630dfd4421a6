"""Defaults that follow the data (recipe.py): image sizes read from file headers, the image size, batch size,
learning rate and epochs chosen for the data, --time-budget, the warm-up, and the whole of it from the command line."""
from __future__ import annotations

import importlib
import json
import math
import re
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import checkpoint
import recipe
import session
import trainer
from config import TrainConfig
from conftest import write_dataset

# The recipe under test is chosen on the images; these only keep the runs short and deterministic.
QUICK = ["--precision", "fp32", "--channels-last", "off", "--no-progress"]


def write_image(path: Path, h: int, w: int, channels: int = 1, params=()) -> Path:
    """A noisy h x w image (noise: a JPEG of a flat image is trivially small, but still a real frame header)."""
    rng = np.random.default_rng(h * 1000 + w)
    shape = (h, w) if channels == 1 else (h, w, channels)
    assert cv2.imwrite(str(path), rng.integers(0, 256, shape, dtype=np.uint8), list(params))
    return path


def sized_files(folder: Path, sizes, ext: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_image(folder / f"{i}{ext}", h, w) for i, (h, w) in enumerate(sizes)]


# ----------------------------------------------------------------------------------------------
# Sizes from the files' headers
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h, w", [(10, 20), (37, 5), (64, 64)])
def test_header_size_reads_png_and_bmp_as_height_then_width(tmp_path, h, w):
    for ext in (".png", ".bmp"):
        assert recipe.header_size(write_image(tmp_path / f"a{ext}", h, w)) == (h, w), ext
    assert recipe.header_size(write_image(tmp_path / "rgb.png", h, w, channels=3)) == (h, w)


def test_header_size_reads_a_top_down_bmp(tmp_path):
    path = write_image(tmp_path / "a.bmp", 12, 30)
    raw = bytearray(path.read_bytes())
    raw[22:26] = struct.pack("<i", -12)  # a negative height: rows stored top-down
    path.write_bytes(bytes(raw))
    assert recipe.header_size(path) == (12, 30)


@pytest.mark.parametrize("progressive, sof", [(False, b"\xff\xc0"), (True, b"\xff\xc2")])
@pytest.mark.parametrize("h, w, channels", [(33, 17, 3), (16, 48, 1), (200, 120, 3)])
def test_header_size_reads_baseline_and_progressive_jpeg(tmp_path, progressive, sof, h, w, channels):
    path = write_image(tmp_path / "a.jpg", h, w, channels, (cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)))
    assert sof in path.read_bytes()  # the frame header the reader has to find (SOF0 baseline, SOF2 progressive)
    assert recipe.header_size(path) == (h, w)


def test_header_size_reads_a_gif_header(tmp_path):
    # cv2 cannot write a GIF: its header (logical screen width, then height, little-endian) written by hand
    path = tmp_path / "a.gif"
    path.write_bytes(b"GIF89a" + struct.pack("<HH", 40, 25) + b"\x00" * 22)
    assert recipe.header_size(path) == (25, 40)


@pytest.mark.parametrize("ext", [".tif", ".webp"])
def test_other_formats_have_no_header_size_and_are_decoded(tmp_path, ext):
    path = write_image(tmp_path / f"a{ext}", 14, 26)
    assert recipe.header_size(path) is None
    assert recipe.image_sizes([path]) == [(14, 26)]


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00", b"\xff\xd8\xff\xe0\x00"])
def test_unreadable_files_have_no_size_and_are_left_out(tmp_path, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    good = write_image(tmp_path / "good.png", 9, 11)
    assert recipe.header_size(bad) is None
    assert recipe.image_sizes([bad, good]) == [(9, 11)]


def test_a_jpeg_truncated_in_its_fill_bytes_has_no_size(tmp_path):
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xff")
    assert recipe.header_size(bad) is None


def test_image_sizes_samples_evenly_including_first_and_last(tmp_path):
    files = sized_files(tmp_path, [(10 + i, 50) for i in range(10)])
    assert recipe.image_sizes(files, sample=3) == [(10, 50), (14, 50), (19, 50)]
    assert len(recipe.image_sizes(files)) == 10  # fewer files than the sample: each once
    assert recipe.image_sizes([]) == []


# ----------------------------------------------------------------------------------------------
# The image size
# ----------------------------------------------------------------------------------------------

def test_img_size_is_the_median_of_the_shorter_sides(tmp_path):
    files = sized_files(tmp_path, [(20, 40), (30, 25), (60, 50)])  # shorter sides 20, 25, 50
    size, why = recipe.choose_img_size(files, cap=64, device_type="cuda")
    assert size == 25 and "median" in why and "25 px" in why
    size, why = recipe.choose_img_size(files[:2], cap=64, device_type="cuda")  # an even count: between the two
    assert size == 22 and "22 px" in why


def test_img_size_is_capped_by_max_img_size(tmp_path):
    files = sized_files(tmp_path, [(60, 60)] * 3)
    size, why = recipe.choose_img_size(files, cap=48, device_type="cuda")
    assert size == 48 and "60 px" in why and "--max-img-size 48" in why


def test_img_size_on_a_cpu_stops_at_cpu_max(tmp_path):
    files = sized_files(tmp_path, [(60, 80)] * 3)
    size, why = recipe.choose_img_size(files, cap=64, device_type="cpu")
    assert size == recipe.CPU_MAX_IMG_SIZE == 32
    assert "CPU" in why and f"{recipe.CPU_MAX_IMG_SIZE} px" in why and "--img-size" in why
    size, why = recipe.choose_img_size(files, cap=64, device_type="cuda")
    assert size == 60 and "CPU" not in why and "max-img-size" not in why
    size, why = recipe.choose_img_size(files, cap=24, device_type="cpu")  # a smaller cap is the cap
    assert size == 24 and "--max-img-size 24" in why and "CPU" not in why


def test_img_size_below_the_limits_is_kept_on_a_cpu(tmp_path):
    files = sized_files(tmp_path, [(16, 16)] * 3)
    assert recipe.choose_img_size(files, cap=64, device_type="cpu") == (16, "the training images' median (shorter "
                                                                           "side) is 16 px")


def test_img_size_is_at_least_the_minimum(tmp_path):
    files = sized_files(tmp_path, [(4, 30)] * 3)
    assert recipe.choose_img_size(files, cap=64, device_type="cuda", min_size=8)[0] == 8


def test_coatnet_sizes_are_multiples_of_32(tmp_path):
    files = sized_files(tmp_path, [(28, 28)] * 3)
    size, why = recipe.choose_img_size(files, cap=224, device_type="cuda", arch="coatnet")
    assert size == 32 and "28 px" in why and "multiple of 32" in why
    assert recipe.choose_img_size(files, cap=224, device_type="cuda", arch="cnn")[0] == 28
    files = sized_files(tmp_path / "64", [(64, 100)] * 3)
    size, why = recipe.choose_img_size(files, cap=224, device_type="cuda", arch="coatnet")
    assert size == 64 and "multiple" not in why


def test_coatnet_size_rounds_within_max_img_size(tmp_path):
    files = sized_files(tmp_path, [(60, 60)] * 3)
    size, _ = recipe.choose_img_size(files, cap=50, device_type="cuda", arch="coatnet")
    assert size <= 50 and size % 32 == 0  # 32; it gives 64


def test_img_size_without_readable_images_says_so(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"junk")
    size, why = recipe.choose_img_size([bad], cap=64, device_type="cpu")
    assert size == recipe.CPU_MAX_IMG_SIZE and why == "no image size could be read"


# ----------------------------------------------------------------------------------------------
# Batch size, learning rate, epochs
# ----------------------------------------------------------------------------------------------

def test_batch_size_follows_the_number_of_training_images():
    assert recipe.choose_batch_size(54_000, 1) == (128, None)
    assert recipe.choose_batch_size(128 * recipe.MIN_STEPS_PER_EPOCH, 1) == (128, None)  # just enough steps
    batch, why = recipe.choose_batch_size(1_621, 1)
    assert batch == 64 and "1,621 training images" in why and "25 steps" in why and "batch 64" in why
    batch, why = recipe.choose_batch_size(120, 1)
    assert batch == recipe.MIN_AUTO_BATCH == 16 and "7 steps" in why
    assert recipe.choose_batch_size(10, 1)[0] == 16  # never below MIN_AUTO_BATCH
    assert recipe.choose_batch_size(1_000, 1, base=32) == (32, None)  # the script's own batch is the start


def test_batch_size_keeps_two_images_per_process():
    assert recipe.choose_batch_size(120, 16)[0] == 32  # not 16: one image per process
    assert recipe.choose_batch_size(120, 4)[0] == 16
    assert recipe.choose_batch_size(1_621, 2)[0] == 64
    for world in (1, 2, 3, 5, 8, 16, 32, 64):
        batch, _ = recipe.choose_batch_size(50, world)
        assert batch // world >= 2, world


@pytest.mark.parametrize("world", [12, 24])
def test_batch_size_keeps_two_images_per_process_for_any_world_size(world):
    batch, _ = recipe.choose_batch_size(50, world)
    assert batch // world >= 2  # 12: 16 (1 each), 24: 32 (1 each)


def test_lr_scales_with_the_batch():
    assert recipe.scale_lr(2e-3, 128, "adamw") == (2e-3, None)
    assert recipe.scale_lr(0.1, 128, "sgd") == (0.1, None)
    lr, why = recipe.scale_lr(1e-3, 32, "adamw")
    assert lr == pytest.approx(5e-4) and "square root" in why and "32/128" in why
    lr, why = recipe.scale_lr(0.1, 32, "sgd")
    assert lr == pytest.approx(0.025) and "linearly" in why
    lr, _ = recipe.scale_lr(2e-3, 16, "adamw")
    assert lr == pytest.approx(2e-3 * math.sqrt(16 / 128), rel=5e-3)  # 3 significant digits


def test_epochs_are_raised_to_the_minimum_steps_and_never_lowered():
    epochs, why = recipe.choose_epochs(10, 25)
    assert epochs == 40 and epochs * 25 >= recipe.MIN_STEPS and "1000" in why and "10 epochs" in why
    assert recipe.choose_epochs(10, 200) == (10, None)  # 5 epochs would do: the script's 10 stay
    assert recipe.choose_epochs(50, 1_000) == (50, None)
    assert recipe.choose_epochs(10, 3)[0] == recipe.MAX_AUTO_EPOCHS  # 334 wanted, capped
    assert recipe.choose_epochs(10, 0)[0] == recipe.MAX_AUTO_EPOCHS
    assert recipe.choose_epochs(400, 1) == (400, None)  # above the cap but given: kept


def test_fit_schedule_changes_only_the_options_not_given():
    config = TrainConfig(arch="cnn", epochs=20, lr=2e-3, batch_size=128)
    plan = recipe.fit_schedule(config, 1_621, 1, {"batch_size", "lr", "epochs"})
    assert (plan.batch_size, plan.epochs) == (64, 40) and plan.lr == pytest.approx(2e-3 * math.sqrt(0.5), rel=5e-3)
    assert set(plan.reasons) == {"batch_size", "lr", "epochs"}
    plan = recipe.fit_schedule(config, 1_621, 1, set())
    assert (plan.batch_size, plan.lr, plan.epochs, plan.reasons) == (128, 2e-3, 20, {})
    # --batch-size 32 given: the script's rate (for batch 128) still scaled to it
    plan = recipe.fit_schedule(TrainConfig(arch="cnn", lr=2e-3, batch_size=32, epochs=20), 54_000, 1, {"lr"})
    assert plan.batch_size == 32 and plan.lr == pytest.approx(1e-3) and set(plan.reasons) == {"lr"}
    plan = recipe.fit_schedule(config, 54_000, 1, {"batch_size", "lr", "epochs"})  # plenty of data: as the script
    assert (plan.batch_size, plan.lr, plan.epochs, plan.reasons) == (128, 2e-3, 20, {})
    applied = recipe.apply_plan(config, recipe.fit_schedule(config, 120, 1, {"batch_size", "lr", "epochs"}))
    assert (applied.batch_size, applied.epochs) == (16, math.ceil(1000 / 7))  # 7 steps an epoch at 16


# ----------------------------------------------------------------------------------------------
# --time-budget
# ----------------------------------------------------------------------------------------------

def test_budget_epochs_are_those_that_fit():
    # 1 step of 0.5 s and no validation: 0.5 + 0.5 s of overhead, exactly 1 s an epoch
    assert recipe.epoch_seconds(0.5, 1, 0, 16) == 1.0
    assert recipe.epoch_seconds(0.1, 10, 40, 16) == pytest.approx(10 * 0.1 + 3 * 0.1 * recipe.EVAL_COST + 0.5)
    for n in (1, 2, 7, 30):
        fits = (n + 0.5) / recipe.BUDGET_SHARE  # seconds whose planned share holds n and a half epochs
        epochs, why = recipe.budget_epochs(fits + 20, 20, 0.5, 1, 0, 16)
        assert epochs == n and "fit" in why and "does not fit" not in why and "20 s spent" in why
        assert recipe.budget_epochs((n - 0.01) / recipe.BUDGET_SHARE, 0, 0.5, 1, 0, 16)[0] == max(1, n - 1)
    epochs, why = recipe.budget_epochs(600, 0, 0.01, 100, 0, 16)  # 1.5 s an epoch: 552 s hold 368
    assert epochs == 368 and why.startswith("368 epochs of 100 steps fit 10 minutes")


def test_budget_that_fits_nothing_trains_one_epoch_and_says_so():
    for budget, elapsed in ((0.5, 0), (30, 29.9), (30, 45)):  # even past the budget already
        epochs, why = recipe.budget_epochs(budget, elapsed, 0.5, 1, 0, 16)
        assert epochs == 1 and "even one epoch does not fit" in why


def test_replan_counts_the_epochs_left_after_the_measured_one():
    # 15 s of planned share left, 2 s an epoch: 7 more after the one done
    assert recipe.replan_epochs(20 + 15 / recipe.BUDGET_SHARE, 20, 1, 2.0, 3) == 8
    assert recipe.replan_epochs(100, 200, 1, 2.0, 3) == 1  # past the budget: the epochs done
    assert recipe.replan_epochs(100, 99.9, 4, 2.0, 9) == 4  # never fewer than done


# ----------------------------------------------------------------------------------------------
# The warm-up
# ----------------------------------------------------------------------------------------------

def test_warmup_steps_are_at_least_the_minimum():
    assert session.warmup_steps(1, 10) == session.MIN_WARMUP_STEPS == 100
    assert session.warmup_steps(0.5, 10) == 100
    assert session.warmup_steps(2, 400) == 800
    assert session.warmup_steps(0, 400) == 0 and session.warmup_steps(0, 1) == 0


def test_schedule_peaks_at_the_warmups_end_and_decays_to_zero():
    schedule = session.LRSchedule(lr=1.0, epochs=40, steps_per_epoch=10, warmup_epochs=1)  # 100 of 400 steps
    lrs = [schedule.at(i) for i in range(400)]
    assert lrs[0] == pytest.approx(1 / 100) and lrs[98] < 1.0 and lrs[99] == pytest.approx(1.0)
    assert max(lrs) == pytest.approx(1.0) and all(a >= b for a, b in zip(lrs[99:], lrs[100:]))
    assert lrs[-1] < 1e-3
    # Warm-up as long as asked when that is more than the minimum (and at most a quarter of the run)
    schedule = session.LRSchedule(lr=0.5, epochs=10, steps_per_epoch=200, warmup_epochs=2)
    lrs = [schedule.at(i) for i in range(2000)]
    assert lrs[398] < 0.5 and lrs[399] == pytest.approx(0.5) and lrs[-1] < 1e-3


@pytest.mark.parametrize("epochs, steps_per_epoch, warmup_epochs", [(4, 10, 1), (1, 10, 1), (2, 30, 3), (8, 50, 1)])
def test_warmup_never_exceeds_a_quarter_of_the_run(epochs, steps_per_epoch, warmup_epochs):
    total = epochs * steps_per_epoch
    schedule = session.LRSchedule(lr=1.0, epochs=epochs, steps_per_epoch=steps_per_epoch, warmup_epochs=warmup_epochs)
    lrs = [schedule.at(i) for i in range(total)]
    peak = int(np.argmax(lrs))
    assert lrs[peak] == pytest.approx(1.0) and peak + 1 <= total // 4  # the warm-up's last step is its peak
    assert lrs[-1] < 0.05


def test_no_warmup_starts_at_the_peak():
    schedule = session.LRSchedule(lr=1.0, epochs=5, steps_per_epoch=100, warmup_epochs=0)
    assert schedule.at(0) == pytest.approx(1.0) and schedule.at(499) < 1e-3


# ----------------------------------------------------------------------------------------------
# Augmentation from the images' layout
# ----------------------------------------------------------------------------------------------

def scattered_shapes(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 (n, 3, size, size): a filled disc or square at a random place and angle on a noisy background of a
    random colour (the kind of competition whose class has no place and no up)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = np.clip(rng.normal(rng.uniform(40, 200, 3), 12, (size, size, 3)), 0, 255).astype(np.uint8)
        r = rng.uniform(0.12, 0.3) * size
        c = rng.uniform(r, size - r, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if i % 2:
            cv2.circle(img, (int(c[0]), int(c[1])), int(r), colour, -1)
        else:
            box = cv2.boxPoints(((float(c[0]), float(c[1])), (1.4 * r, 1.4 * r), float(rng.uniform(0, 90))))
            cv2.fillPoly(img, [box.astype(np.int32)], colour)
        out.append(img.transpose(2, 0, 1))
    return np.stack(out)


def centred_upright(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 (n, 1, size, size): an upright bar or box in the middle of a dark background (Fashion-MNIST's kind)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(0, 30, (size, size), dtype=np.uint8)
        h, w = (size // 2, size // 6) if i % 2 else (size // 3, size // 2)
        img[(size - h) // 2:(size + h) // 2, (size - w) // 2:(size + w) // 2] = 200
        out.append(img[None])
    return np.stack(out)


AUG_OPTIONS = {"dihedral", "translate"}


def test_scattered_objects_get_shifts_and_all_orientations():
    pixels = scattered_shapes(120)
    flatness, anisotropy = recipe.layout_stats(pixels, np.arange(120))
    assert flatness < recipe.FLAT_AVERAGE and anisotropy < recipe.ISOTROPIC_EDGES
    dihedral, translate, why = recipe.choose_augmentation(False, 0, 32, (flatness, anisotropy), AUG_OPTIONS)
    assert (dihedral, translate) == (True, 3)
    assert "flat" in why["translate"] and "no preferred direction" in why["dihedral"]


def test_centred_upright_images_keep_the_scripts_augmentation():
    pixels = centred_upright(120)
    flatness, anisotropy = recipe.layout_stats(pixels, np.arange(120))
    assert flatness > recipe.FLAT_AVERAGE and anisotropy > recipe.ISOTROPIC_EDGES
    assert recipe.choose_augmentation(False, 2, 32, (flatness, anisotropy), AUG_OPTIONS) == (False, 2, {})


def test_given_augmentation_flags_are_kept_on_scattered_objects():
    layout = recipe.layout_stats(scattered_shapes(60), np.arange(60))
    assert recipe.choose_augmentation(False, 1, 32, layout, set()) == (False, 1, {})
    dihedral, translate, why = recipe.choose_augmentation(False, 1, 32, layout, {"translate"})
    assert (dihedral, translate) == (False, 3) and set(why) == {"translate"}


def test_layout_is_read_from_the_training_split_only():
    # The training indices are scattered objects, the others (validation) centred: only the first count.
    pixels = np.concatenate([scattered_shapes(60), np.repeat(centred_upright(60), 3, axis=1)])
    layout = recipe.layout_stats(pixels, np.arange(60))
    assert recipe.choose_augmentation(False, 0, 32, layout, AUG_OPTIONS)[:2] == (True, 3)
    assert recipe.choose_head_pool("map", layout, {"head_pool"})[0] == "global"
    layout = recipe.layout_stats(pixels, np.arange(60, 120))
    assert recipe.choose_augmentation(False, 0, 32, layout, AUG_OPTIONS) == (False, 0, {})
    assert recipe.choose_head_pool("global", layout, {"head_pool"})[0] == "map"


def test_head_pool_follows_the_layout_unless_given():
    scattered = recipe.layout_stats(scattered_shapes(60), np.arange(60))
    centred = recipe.layout_stats(centred_upright(60), np.arange(60))
    pool, why = recipe.choose_head_pool("global", centred, {"head_pool"})
    assert pool == "map" and "not flat" in why["head_pool"]
    pool, why = recipe.choose_head_pool("map", scattered, {"head_pool"})
    assert pool == "global" and "is flat" in why["head_pool"]
    assert recipe.choose_head_pool("global", centred, set()) == ("global", {})


# ----------------------------------------------------------------------------------------------
# From the command line
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "comp", layout="csv", per_class=20, size=16)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # no compute format remembered from elsewhere


def train_cnn(*args) -> Path:
    script = importlib.import_module("train_cnn")
    return trainer.main("cnn", [str(a) for a in args], **script.DEFAULTS)


def read(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


def test_a_run_with_only_data_follows_the_images(dataset, tmp_path):
    run = train_cnn("--data", dataset, "--runs-dir", tmp_path, "--name", "auto", "--epochs", 1, *QUICK)
    info, config = read(run, "run.json"), read(run, "config.json")
    assert info["img_size"] == 16 and config["img_size"] == 16 and info["img_size_from"] == "images"
    assert set(info["recipe"]) == {"img_size", "batch_size", "lr", "head_pool"}  # --epochs was given
    assert "16 px" in info["recipe"]["img_size"] and "54 training images" in info["recipe"]["batch_size"]
    # write_dataset's shapes sit in the middle: the dense layers see the last map, as the checkpoint records.
    assert config["head_pool"] == "map" and "not flat" in info["recipe"]["head_pool"]
    best = checkpoint.load_checkpoint(run / "best.pt")
    assert best["spec"]["model_options"] == {"head_pool": "map"}
    model = checkpoint.model_from_checkpoint(best)
    assert isinstance(model.pool, torch.nn.Flatten) and model.head[0].in_features == 128 * 4 * 4
    assert config["batch_size"] == 16 and config["epochs"] == 1
    script_lr = importlib.import_module("train_cnn").DEFAULTS["lr"]
    assert config["lr"] == pytest.approx(script_lr * math.sqrt(16 / 128), rel=5e-3)
    assert "square root" in info["recipe"]["lr"] and "time_budget_min" not in info
    assert info["status"] == "finished"


def test_given_flags_are_kept_as_given(dataset, tmp_path):
    run = train_cnn("--data", dataset, "--runs-dir", tmp_path, "--name", "given", "--epochs", 1, "--img-size", 24,
                    "--batch-size", 32, "--lr", 0.01, "--head-pool", "global", *QUICK)
    info, config = read(run, "run.json"), read(run, "config.json")
    assert (config["img_size"], config["batch_size"], config["lr"], config["epochs"]) == (24, 32, 0.01, 1)
    assert config["head_pool"] == "global"
    assert not {"img_size", "batch_size", "lr", "epochs", "head_pool"} & set(info.get("recipe", {}))
    assert info["img_size_from"] == "flag" and info["img_size"] == 24


def test_time_budget_plans_the_epochs(dataset, tmp_path, monkeypatch):
    # The budget counts from the process's start: pinned, so that the plan does not depend on how long pytest has
    # run. 28 s of 30 spent when planning; past the budget after epoch 1, so the re-plan ends the run there.
    monkeypatch.setattr(session, "seconds_since_start", lambda: 28.0)
    monkeypatch.setattr(trainer, "seconds_since_start", lambda: 40.0)
    run = train_cnn("--data", dataset, "--runs-dir", tmp_path, "--name", "budget", "--time-budget", 0.5, *QUICK)
    info, config = read(run, "run.json"), read(run, "config.json")
    assert info["time_budget_min"] == 0.5 and config["time_budget"] == 0.5
    why = info["recipe"]["epochs"]
    planned = re.match(r"(\d+) epochs? of 3 steps fit 0\.5 minutes .*28 s spent setting up", why)
    assert planned and int(planned.group(1)) >= 1, why
    assert config["epochs"] == info["epochs"] == info["epochs_done"] == 1 and info["status"] == "finished"
    assert config["batch_size"] == 16  # the batch still follows the data


def test_head_pool_of_another_architecture_is_refused(dataset, tmp_path):
    script = importlib.import_module("train_resnet")
    with pytest.raises(SystemExit) as stop:
        trainer.main("resnet", ["--data", str(dataset), "--runs-dir", str(tmp_path), "--name", "rn", "--head-pool",
                                "map", *map(str, QUICK)], **script.DEFAULTS)
    message = str(stop.value.code)
    assert message.startswith("error: --head-pool map:") and "cnn only" in message, message
    assert not (tmp_path / "rn").exists()


def test_cpu_caps_the_added_epochs_at_what_fits_never_below_the_scripts(dataset, tmp_path, monkeypatch):
    # 54 images give 3 steps an epoch: the recipe raises the script's epochs to 300 (its most); with 10 minutes
    # already spent after epoch 2, none of the added ones fit, so the run trains the script's own.
    monkeypatch.setattr(trainer, "seconds_since_start", lambda: 600.0)
    run = train_cnn("--data", dataset, "--runs-dir", tmp_path, "--name", "capped", *QUICK)
    info, config = read(run, "run.json"), read(run, "config.json")
    script_epochs = importlib.import_module("train_cnn").DEFAULTS["epochs"]
    assert config["epochs"] == info["epochs"] == info["epochs_done"] == script_epochs and info["status"] == "finished"
    why = info["recipe"]["epochs"]
    assert why.startswith(f"{script_epochs} epochs: the {recipe.MAX_AUTO_EPOCHS} raised for small data") and \
        f"fits {recipe.CPU_ADDED_EPOCHS_MINUTES:g} minutes" in why, why


def test_added_epochs_that_fit_are_kept():
    assert recipe.cap_added_epochs(9, 30, 2, 10.0, 40, 9) == (40, None)  # 38 more take 380 of the 510 s left
    epochs, why = recipe.cap_added_epochs(9, 30, 2, 30.0, 40, 9)  # 510 s * 0.92 hold 15 more
    assert epochs == 17 and "about 20 minutes" in why and "epoch 2 took 30.0 s" in why
    assert recipe.cap_added_epochs(9, 30, 2, 100.0, 40, 9)[0] == 9  # never below the script's


def test_time_budget_with_epochs_is_refused(dataset, tmp_path):
    with pytest.raises(SystemExit) as stop:
        train_cnn("--data", dataset, "--runs-dir", tmp_path, "--name", "both", "--time-budget", 0.5, "--epochs", 2,
                  *QUICK)
    message = str(stop.value.code)
    assert message.startswith("error:") and "--time-budget" in message and "--epochs" in message
    assert "\n" not in message.strip() and not (tmp_path / "both").exists()


def test_resuming_keeps_the_chosen_values(dataset, tmp_path):
    run = train_cnn("--data", dataset, "--runs-dir", tmp_path, "--name", "res", "--epochs", 1, *QUICK)
    first = read(run, "config.json")
    assert first["batch_size"] == 16 and first["img_size"] == 16  # chosen, so that keeping them is a check
    again = trainer.main("cnn", ["--resume", str(run), "--epochs", "2", "--no-progress"],
                         **importlib.import_module("train_cnn").DEFAULTS)
    assert again == run
    config, info = read(run, "config.json"), read(run, "run.json")
    assert config["epochs"] == 2 and info["epochs_done"] == 2
    assert {k: config[k] for k in ("img_size", "batch_size", "lr")} == {k: first[k] for k in ("img_size", "batch_size",
                                                                                               "lr")}
    assert set(info["recipe"]) == {"img_size", "batch_size", "lr", "head_pool"}  # the new run's reasons stay on record
    assert config["head_pool"] == first["head_pool"] == "map"
