"""Multi-label training end to end on tiny generated data: each tag is a bright bar across the image, drawn
independently; the loss, MixUp, thresholds in best.pt, resume, k-fold and what is refused."""
from __future__ import annotations

import csv
import importlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import checkpoint
import compute
import config as options
import data
import inference
import metrics
import runs
import session
import trainer
from conftest import write_csv
from images import parse_labels

FAST = ["--precision", "fp32", "--channels-last", "off", "--no-progress", "--batch-size", "16", "--img-size", "16"]
EXACT = ["--device", "cpu"]  # bit-for-bit comparisons pin the CPU
TAGS = ("cloud", "haze", "road", "water")  # in natural order; tag k brightens the k-th quarter of the rows


def tagged_image(tags: list[str], size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy gray image with a bright horizontal bar for each of its tags, at the tag's own height (as
    conftest.class_image draws a class): a horizontal flip keeps its tags."""
    img = rng.integers(0, 60, (size, size), dtype=np.int32)
    band = size // len(TAGS)
    for tag in tags:
        top = TAGS.index(tag) * band
        img[top:top + band, :] += 150
    return np.clip(img, 0, 255).astype(np.uint8)


def write_tagged_dataset(root: Path, n: int = 96, size: int = 16, seed: int = 0) -> Path:
    """A planet-style competition folder: train.csv `image_name,tags` (tags joined by spaces), train/*.png.
    Each tag is on an image with probability 0.35, independently; an image has at least one."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    rows = []
    for i in range(n):
        tags = [t for t in TAGS if rng.random() < 0.35] or [TAGS[int(rng.integers(len(TAGS)))]]
        assert cv2.imwrite(str(root / "train" / f"img_{i}.png"), tagged_image(tags, size, rng))
        rows.append((f"img_{i}", " ".join(tags)))
    write_csv(root / "train.csv", ["image_name", "tags"], rows)
    return root


def true_tags(root: Path) -> dict[str, str]:
    """Each training image's tags (as train.csv writes them), by its id (train.csv's image_name)."""
    with open(root / "train.csv", newline="") as f:
        return {r["image_name"]: r["tags"] for r in csv.DictReader(f)}


def train(*args, **overrides) -> Path:
    script = importlib.import_module("train_cnn")
    return trainer.main("cnn", [str(a) for a in args], **{**script.DEFAULTS, **overrides})


def multi_hot(texts: list[str]) -> np.ndarray:
    return np.array([[tag in text.split() for tag in TAGS] for text in texts], dtype=np.uint8)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory) -> Path:
    return write_tagged_dataset(tmp_path_factory.mktemp("data") / "planet")


@pytest.fixture(scope="module")
def f2_run(tagged, tmp_path_factory) -> Path:
    return train("--data", tagged, "--runs-dir", tmp_path_factory.mktemp("runs"), "--name", "tags", "--epochs", 3,
                 "--lr", 3e-3, "--val-split", 0.25, "--metric", "f2_samples", *FAST)


def test_tags_train_to_a_clearly_better_than_chance_f2(tagged, f2_run):
    rows = runs.read_metrics(f2_run / "metrics.csv")
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    files, labels, names, probs = runs.read_predictions(f2_run / "val_predictions.csv")
    assert names == list(TAGS)
    truth = multi_hot(labels)
    # Chance: every image given every tag, the best a constant answer does on F2 (recall weighs 4x precision).
    chance = metrics.score("f2_samples", np.ones(truth.shape), truth)
    best = max(r["val_score"] for r in rows)
    assert best >= chance + 0.1 and best >= 0.9, (best, chance)
    assert metrics.score("roc_auc", np.array(probs), truth) >= 0.95  # the tags are told apart, whatever thresholds
    assert max(r["val_acc"] for r in rows) >= 0.8  # every tag of the image right (subset accuracy)
    info = json.loads((f2_run / "run.json").read_text())
    assert info["multi_label"] is True and info["best_val_score"] == pytest.approx(best, abs=1e-6)


def test_best_pt_holds_the_thresholds_its_score_was_decided_with(tagged, f2_run):
    spec = checkpoint.read_spec(checkpoint.load_checkpoint(f2_run / "best.pt"))
    assert spec.multi_label and spec.class_names == list(TAGS)
    assert len(spec.thresholds) == len(TAGS) and all(0 < t < 1 for t in spec.thresholds)
    assert checkpoint.read_spec(checkpoint.load_checkpoint(f2_run / "last.pt")).thresholds == spec.thresholds
    files, labels, _, probs = runs.read_predictions(f2_run / "val_predictions.csv")
    truth = parse_labels(labels, list(TAGS), True, f2_run / "val_predictions.csv", list(range(2, len(labels) + 2)))
    expected = true_tags(tagged)
    assert labels == [expected[f] for f in files]  # the label column: the image's tags, as the data has them
    assert np.array_equal(truth, multi_hot(labels))
    probs = np.array(probs)
    assert ((probs >= 0) & (probs <= 1)).all() and not np.allclose(probs.sum(1), 1)  # sigmoids, not a softmax
    info = json.loads((f2_run / "run.json").read_text())
    assert metrics.score("f2_samples", probs, truth, np.array(spec.thresholds)) == pytest.approx(
        info["best_val_score"], abs=1e-6)


def test_resume_with_mixup_cutmix_ema_and_balanced_loss_is_exact(tagged, tmp_path):
    recipe = ["--data", tagged, "--runs-dir", tmp_path, "--epochs", 2, "--lr", 3e-3, "--mixup", 0.4, "--cutmix",
              1.0, "--ema", 0.9, "--balance", "loss", "--metric", "f1_samples", *FAST, *EXACT]
    whole = train(*recipe, "--name", "whole")
    train(*recipe, "--name", "parts", "--stop-at-epoch", 1)
    parts = train("--resume", tmp_path / "parts", "--no-progress")
    comparable = [[{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
                   for r in runs.read_metrics(run / "metrics.csv")] for run in (whole, parts)]
    assert comparable[0] == comparable[1]
    assert all(0 <= r["train_acc"] <= 1 and math.isfinite(r["train_loss"]) for r in comparable[0])
    a, b = (checkpoint.load_checkpoint(run / "best.pt") for run in (whole, parts))
    assert a["spec"]["thresholds"] == b["spec"]["thresholds"] and a["spec"]["thresholds"] is not None
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_k_fold_out_of_fold_file_holds_every_image_once_with_fitted_thresholds(tagged, tmp_path):
    out = train("--data", tagged, "--runs-dir", tmp_path, "--name", "kf", "--folds", 2, "--epochs", 1,
                "--lr", 3e-3, "--metric", "f2_samples", *FAST)
    files, labels, names, probs = runs.read_predictions(out)
    expected = true_tags(tagged)
    assert sorted(files) == sorted(expected) and len(files) == len(expected)
    assert labels == [expected[f] for f in files]
    summary = json.loads((tmp_path / "kf-oof.json").read_text())
    assert summary["multi_label"] is True and summary["images"] == len(expected)
    thresholds = np.array(summary["thresholds"])
    assert thresholds.shape == (len(TAGS),)
    assert summary["score"] == pytest.approx(metrics.score("f2_samples", np.array(probs), multi_hot(labels),
                                                           thresholds), abs=1e-6)
    # multi-label as each fold's best.pt says, whatever run.json holds; the folds must agree
    for fold in (1, 2):
        info = json.loads((tmp_path / f"kf-f{fold}" / "run.json").read_text())
        (tmp_path / f"kf-f{fold}" / "run.json").write_text(json.dumps({k: v for k, v in info.items()
                                                                       if k != "multi_label"}))
    trainer.collect_out_of_fold(tmp_path, "kf", 2, "f2_samples")
    assert json.loads((tmp_path / "kf-oof.json").read_text()) == summary
    best = checkpoint.load_checkpoint(tmp_path / "kf-f2" / "best.pt")
    best["spec"]["multi_label"] = False
    checkpoint.save_checkpoint(tmp_path / "kf-f2" / "best.pt", best)
    with pytest.raises(trainer.DataError, match=r"fold 2 \(.*kf-f2.best\.pt\) is single-label, fold 1 is multi-label"):
        trainer.collect_out_of_fold(tmp_path, "kf", 2, "f2_samples")


def test_a_single_label_metric_is_refused_on_tags_naming_the_flag_once(tagged, tmp_path):
    with pytest.raises(SystemExit) as e:
        train("--data", tagged, "--runs-dir", tmp_path, "--metric", "quadratic_kappa", *FAST)
    assert str(e.value.code).startswith("error: --metric quadratic_kappa: quadratic_kappa scores one class per "
                                        "image and these labels are multi-label")
    assert str(e.value.code).count("--metric") == 1 and not list(tmp_path.glob("*/last.pt"))


def test_balance_sampler_is_refused_on_tags(tagged, tmp_path):
    with pytest.raises(SystemExit) as e:
        train("--data", tagged, "--runs-dir", tmp_path, "--balance", "sampler", *FAST)
    assert "--balance sampler" in str(e.value.code) and "single-label data" in str(e.value.code)
    assert not list(tmp_path.glob("*/last.pt"))


def test_mix_blends_multi_hot_targets():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.uint8)
    mixed, targets, hard = data.Mix(mixup=0.4)(x, y, 3)
    lam = float(targets[0, 0])  # image 0 (tags 0, 2) blended with image 3 (tag 2)
    assert torch.allclose(targets, y.float() * lam + y.flip(0).float() * (1 - lam), atol=1e-6)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert torch.equal(hard, y if lam >= 0.5 else y.flip(0))
    mixed, targets, _ = data.Mix(cutmix=1.0)(x, y, 3)
    pasted = float((mixed != x).any(1)[0].float().mean())  # the share of image 0 taken from image 3
    assert float(targets[0, 2]) == pytest.approx(1.0)  # both images have tag 2
    assert float(targets[0, 0]) == pytest.approx(1 - pasted, abs=1e-6)


def test_multi_label_loss_smooths_towards_a_half_and_weighs_rare_tags():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, 0.0]])
    targets = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.uint8)
    loss = session.MultiLabelLoss(smoothing=0.1)(logits, targets)
    soft = targets.float() * 0.9 + 0.05
    assert float(loss) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, soft)), rel=1e-6)
    labels = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 1, 1]], np.uint8)
    td = session.TrainData(np.zeros((4, 1, 2, 2), np.uint8), labels, [], ["a", "b", "c"], np.arange(4),
                           np.array([], np.int64), multi_label=True)
    weights = session.positive_weights(td, torch.device("cpu"))
    assert torch.allclose(weights, torch.tensor([3.0, 3.0, 1 / 4]))  # negatives / positives; a tag on all: > 0
    loss_fn = session.training_loss(options_for(balance="loss", label_smoothing=0.0), td, torch.device("cpu"))
    assert torch.equal(loss_fn.pos_weight, weights)


def options_for(**values):
    return options.make_config("cnn", {}, **{"data": "unused", **values})


def test_validation_loss_is_the_mean_binary_cross_entropy_and_stays_finite():
    logits = torch.tensor([[4.0, -2.0], [0.3, 200.0]])  # the last: a probability that rounds to 1
    labels = torch.tensor([[1, 0], [0, 0]], dtype=torch.uint8)
    summed = trainer.summed_loss(inference.log_probabilities(logits, multi_label=True), labels)
    expected = F.binary_cross_entropy_with_logits(logits[0], labels[0].float()) + \
        -(math.log(1 - torch.sigmoid(torch.tensor(0.3)).item()) + math.log(1e-15)) / 2
    assert math.isfinite(float(summed)) and float(summed) == pytest.approx(float(expected), rel=1e-5)
    # a confident miss (a tag present, its probability ~0) costs -log(1e-15) at most, as metrics.log_loss charges
    for logit in (-1e4, -math.inf):
        summed = trainer.summed_loss(inference.log_probabilities(torch.tensor([[logit, 0.0]]), multi_label=True),
                                     torch.tensor([[1, 0]], dtype=torch.uint8))
        assert float(summed) == pytest.approx((-math.log(1e-15) + math.log(2)) / 2, rel=1e-5), logit


def test_inference_gives_each_tags_sigmoid_averaged_over_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    pixels = np.random.default_rng(0).integers(0, 255, (5, 1, 4, 4), dtype=np.uint8)
    fmt = compute.ComputeFormat()
    probs = inference.predict_probs(model, pixels, data.Preprocess(), fmt, torch.device("cpu"), 2, tta=True,
                                    multi_label=True)
    x = torch.from_numpy(pixels).float() / 255
    with torch.no_grad():
        expected = (torch.sigmoid(model(x)) + torch.sigmoid(model(x.flip(3)))) / 2
    assert np.allclose(probs, expected.double().numpy(), atol=1e-6)
    single = inference.predict_probs(model, pixels, data.Preprocess(), fmt, torch.device("cpu"), 2)
    assert np.allclose(single.sum(1), 1)


def test_dataset_key_notices_a_changed_tag_and_resume_a_changed_shape(tmp_path):
    labels = np.array([[1, 0], [0, 1], [1, 1]], np.uint8)
    files = [tmp_path / f"train/{i}.png" for i in range(3)]

    def train_data(labels, multi_label=True):
        return session.TrainData(np.zeros((3, 1, 2, 2), np.uint8), labels, files, ["a", "b"], np.arange(2),
                                 np.array([2]), multi_label)

    key = session.dataset_key(train_data(labels), str(tmp_path))
    changed = labels.copy()
    changed[2, 1] = 0
    assert session.dataset_key(train_data(changed), str(tmp_path)) != key
    assert session.dataset_key(train_data(labels.copy()), str(tmp_path)) == key
    resume = {"spec": {"class_names": ["a", "b"], "multi_label": False}, "val_files": ["train/2.png"],
              "dataset_key": key}
    with pytest.raises(session.DataError, match="multi-label"):
        session.check_same_data(resume, train_data(labels), options_for(data=str(tmp_path)), key)


def test_an_older_spec_reads_as_single_label():
    spec = checkpoint.ModelSpec("cnn", ["a", "b"], 16, 1, None, None, compute.ComputeFormat(), True)
    old = {k: v for k, v in spec.to_dict().items() if k not in ("multi_label", "thresholds")}
    again = checkpoint.ModelSpec.from_dict(old)
    assert again.multi_label is False and again.thresholds is None
