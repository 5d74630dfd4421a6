"""The competition workflow of the trainer on tiny generated data: the competition's metric decides best.pt,
k-fold with out-of-fold predictions, MixUp/CutMix, class imbalance, early stopping."""
from __future__ import annotations

import csv
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import metrics
import predict
import runs
import session
import trainer
from conftest import write_dataset

FAST = ["--precision", "fp32", "--channels-last", "off", "--no-progress", "--batch-size", "16", "--img-size", "16"]


def train(arch: str, *args) -> Path:
    return trainer.main(arch, [str(a) for a in args], **importlib.import_module(f"train_{arch}").DEFAULTS)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "comp", layout="csv", per_class=12, size=16)


def test_the_metric_decides_best_pt_and_is_recorded(dataset, tmp_path):
    run = train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "ll", "--epochs", 3, "--lr", 3e-3,
                "--metric", "log_loss", "--val-split", 0.25, *FAST)
    rows = runs.read_metrics(run / "metrics.csv")
    best = min(rows, key=lambda r: r["val_score"])  # log loss: lower is better
    info = runs.read_run_info(run)
    assert info["metric"] == "log_loss" and info["best_epoch"] == int(best["epoch"])
    assert info["best_val_score"] == pytest.approx(best["val_score"], abs=1e-6)
    # val_predictions.csv holds the best epoch's probabilities of the validation images: its score is the same
    files, labels, names, probs = runs.read_predictions(run / "val_predictions.csv")
    assert len(files) == 9 and names == ["bird", "cat", "dog"]
    index = {n: i for i, n in enumerate(names)}
    again = metrics.score("log_loss", np.array(probs), np.array([index[label] for label in labels]))
    assert again == pytest.approx(best["val_score"], abs=1e-4)
    assert "| log_loss |" in (tmp_path / "runs.md").read_text()


def test_k_fold_covers_every_image_once_and_resumes_per_fold(dataset, tmp_path, capsys):
    # one fold alone first, as a user would start
    train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "kf", "--folds", 3, "--fold", 2, "--epochs", 1,
          *FAST)
    fold2 = (tmp_path / "kf-f2" / "last.pt").read_bytes()
    oof = train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "kf", "--folds", 3, "--epochs", 1, *FAST)
    assert oof == tmp_path / "kf-oof.csv"
    assert (tmp_path / "kf-f2" / "last.pt").read_bytes() == fold2  # done: not trained again
    files, labels, names, probs = runs.read_predictions(oof)
    found = data.find_labelled_images(dataset)
    assert sorted(files) == sorted(found.ids) and len(found.ids) == 36  # every training image exactly once
    assert next(csv.reader(oof.open()))[:2] == ["id", "label"]  # keyed by train.csv's own id column
    held_out = [set(runs.read_predictions(tmp_path / f"kf-f{i}" / "val_predictions.csv")[0]) for i in (1, 2, 3)]
    assert all(not (a & b) for k, a in enumerate(held_out) for b in held_out[k + 1:])
    assert [len(h) for h in held_out] == [12, 12, 12]  # stratified: 4 of each class per fold
    index = {n: i for i, n in enumerate(names)}
    score = metrics.score("accuracy", np.array(probs), np.array([index[label] for label in labels]))
    assert json.loads((tmp_path / "kf-oof.json").read_text())["score"] == pytest.approx(score)
    assert f"out-of-fold accuracy: {score:.4f} over 36 images (3 folds)" in capsys.readouterr().out
    # the fold models average with equal weights, without the warning of unrelated splits
    folds = [str(tmp_path / f"kf-f{i}") for i in (1, 2, 3)]
    members = predict.load_models(folds, torch.device("cpu"))
    assert predict.are_folds(members) and not predict.are_folds(members[:1] + members[:1])
    predict.main([*folds, "--data", str(dataset), "--out", str(tmp_path / "sub.csv"), "--no-progress"])
    out = capsys.readouterr().out
    assert "folds of one k-fold run" in out and "WARNING" not in out


def test_stratified_folds_are_balanced_and_repeatable():
    labels = np.array([0] * 10 + [1] * 7 + [2] * 3)
    folds = data.stratified_folds(labels, 3, seed=5)
    assert np.array_equal(folds, data.stratified_folds(labels, 3, seed=5))
    assert sorted(np.bincount(folds)) == [6, 7, 7]
    for c in range(3):
        per_fold = np.bincount(folds[labels == c], minlength=3)
        assert per_fold.max() - per_fold.min() <= 1


def test_mixup_and_cutmix_blend_images_and_targets_alike():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, targets, hard = data.Mix(mixup=0.4)(x, y, 3)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    lam = float(targets[0, 0])  # image 0 (class 0) blended with image 5 (class 2)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert torch.equal(hard, y if lam >= 0.5 else y.flip(0))
    mixed, targets, _ = data.Mix(cutmix=1.0)(x, y, 3)
    pasted = (mixed != x).any(1)[0].float().mean()  # the share of image 0 taken from image 5
    assert float(targets[0, 2]) == pytest.approx(float(pasted), abs=1e-6)


def test_mixup_cutmix_train_with_a_meaningful_accuracy(dataset, tmp_path):
    run = train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "mix", "--epochs", 2, "--lr", 3e-3,
                "--mixup", 0.2, "--cutmix", 1.0, *FAST)
    rows = runs.read_metrics(run / "metrics.csv")
    assert all(0 <= r["train_acc"] <= 1 and np.isfinite(r["train_loss"]) for r in rows)
    assert rows[-1]["train_acc"] > 0.5  # the dominant label of each mixed image is learnt


def test_balanced_sampling_draws_each_class_equally_often():
    labels = np.array([0] * 90 + [1] * 10)
    pixels = np.zeros((100, 1, 2, 2), np.uint8)
    drawn = np.concatenate([y.numpy() for e in range(20)
                            for _, y in data.iterate_batches(pixels, labels, np.arange(100), 10, shuffle=True,
                                                             balance=True, epoch=e)])
    assert len(drawn) == 2000 and 0.4 < drawn.mean() < 0.6  # class 1 is 10% of the data, half of the draws
    again = [y.numpy() for _, y in data.iterate_batches(pixels, labels, np.arange(100), 10, shuffle=True,
                                                        balance=True, epoch=0)]
    assert np.array_equal(np.concatenate(again), drawn[:100])  # the same for the same (seed, epoch)


def test_imbalanced_data_trains_with_either_balance(tmp_path):
    comp = write_dataset(tmp_path / "comp", layout="csv", per_class=6, size=16)
    with open(comp / "train.csv", "a", newline="") as f:  # a majority class: 24 more images of "cat"
        for i in range(24):
            shutil.copy(comp / "train" / "0_0.png", comp / "train" / f"x_{i}.png")
            csv.writer(f).writerow([f"x_{i}", "cat"])
    for mode in ("sampler", "loss"):
        run = train("cnn", "--data", comp, "--runs-dir", tmp_path / "runs", "--name", mode, "--epochs", 1,
                    "--balance", mode, *FAST)
        assert np.isfinite(runs.read_metrics(run / "metrics.csv")[0]["train_loss"])
    td = session.TrainData(np.zeros((42, 1, 2, 2), np.uint8), np.array([0] * 30 + [1] * 6 + [2] * 6), [],
                           ["a", "b", "c"], np.arange(42), np.array([], np.int64))
    weights = session.class_weights(td, torch.device("cpu"))
    assert torch.allclose(weights, torch.tensor([42 / 90, 42 / 18, 42 / 18]))


def test_early_stopping_ends_the_run_and_says_why(dataset, tmp_path):
    # a learning rate too small to change anything: no epoch after the first is better
    run = train("cnn", "--data", dataset, "--runs-dir", tmp_path, "--name", "es", "--epochs", 6, "--lr", 1e-12,
                "--warmup-epochs", 0, "--patience", 2, *FAST)
    info = runs.read_run_info(run)
    assert info["status"] == "stopped early: no better validation score in 2 epochs"
    assert info["epochs_done"] == 3 and info["best_epoch"] == 1
    assert len(runs.read_metrics(run / "metrics.csv")) == 3
    # resumable: with more patience it goes on from where it stopped
    train("cnn", "--resume", run, "--patience", 10, "--no-progress")
    assert runs.read_run_info(run)["status"] == "finished" and len(runs.read_metrics(run / "metrics.csv")) == 6


def test_fold_flags_are_checked(dataset, tmp_path):
    for flags in (["--folds", 1], ["--folds", 3, "--fold", 4], ["--fold", 2]):
        with pytest.raises(SystemExit, match="--fold"):
            train("cnn", "--data", dataset, "--runs-dir", tmp_path, *flags, *FAST)


def test_k_fold_runs_are_weighted_on_their_out_of_fold_predictions(tmp_path):
    comp = write_dataset(tmp_path / "comp", layout="csv", per_class=20, size=16)
    train("cnn", "--data", comp, "--runs-dir", tmp_path, "--name", "good", "--folds", 3, "--epochs", 2, "--lr", 3e-3,
          *FAST)
    train("cnn", "--data", comp, "--runs-dir", tmp_path, "--name", "poor", "--folds", 3, "--epochs", 1, "--lr", 1e-12,
          "--warmup-epochs", 0, "--seed", 7, *FAST)
    good = [str(tmp_path / f"good-f{i}") for i in (1, 2, 3)]
    members = predict.load_models(good + [str(tmp_path / f"poor-f{i}") for i in (1, 2, 3)], torch.device("cpu"))
    groups = predict.fold_groups(members)
    assert [(path.name, idx) for path, idx in groups] == [("good-oof.csv", [0, 1, 2]), ("poor-oof.csv", [3, 4, 5])]
    # for accuracy the poor run's near-uniform probabilities change no answer: equal weights score as well
    assert list(predict.out_of_fold_weights(members, groups, "accuracy").weights) == pytest.approx([1 / 6] * 6)
    # for log loss they cost: the good run alone
    w = predict.out_of_fold_weights(members, groups, "log_loss")
    assert w.n_val == 60 and list(w.weights) == pytest.approx([1 / 3] * 3 + [0] * 3)  # never below the better run
    poor = [str(tmp_path / f"poor-f{i}") for i in (1, 2, 3)]
    for name, runs_given in (("good", good), ("all", good + poor)):
        predict.main([*runs_given, "--data", str(comp), "--metric", "log_loss", "--probs", str(tmp_path / f"{name}.csv"),
                      "--out", str(tmp_path / f"{name}-sub.csv"), "--no-progress"])
    assert (tmp_path / "all.csv").read_text() == (tmp_path / "good.csv").read_text()
