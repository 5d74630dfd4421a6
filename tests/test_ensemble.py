"""Weighted ensembles (ensemble.py, and predict.py's use of them): the weight fit and its guards against
overfitting on synthetic probabilities, then end to end on a tiny run and checkpoints made from it (a bad
member, other validation splits, small validation sets).

One CNN is trained for the whole module (one epoch, 16 px); every other member is a checkpoint made from it."""
from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import checkpoint
import ensemble
import metrics
import predict
import runs
import trainer
from conftest import write_dataset
from submission import submission_accuracy

CLASSES = ("bird", "cat", "dog")  # sorted: the class indices are this order


def one_hot(predicted, classes=3) -> np.ndarray:
    return np.eye(classes)[predicted]


# ----------------------------------------------------------------------------------------------
# Choosing weights, on synthetic probabilities
# ----------------------------------------------------------------------------------------------

def member(labels: np.ndarray, wrong: set[int], confidence: float = 0.7) -> np.ndarray:
    """Probabilities right (with `confidence`) on every image but those in `wrong`, where the next class gets
    0.5: where one such member is right and another wrong, their average is right."""
    probs = np.full((len(labels), 3), (1 - confidence) / 2)
    probs[np.arange(len(labels)), labels] = confidence
    for i in wrong:
        probs[i] = 0.25
        probs[i, (labels[i] + 1) % 3] = 0.5
    return probs


def confidently_wrong(labels: np.ndarray) -> np.ndarray:
    probs = np.full((len(labels), 3), 0.01)
    probs[np.arange(len(labels)), (labels + 2) % 3] = 0.98
    return probs


def test_complementary_members_are_fitted_and_a_bad_one_gets_weight_zero():
    labels = np.arange(300) % 3
    a = member(labels, set(range(0, 60)))        # 80%
    b = member(labels, set(range(60, 150)))      # 70%, right where a is wrong
    probs = [a, b, confidently_wrong(labels)]    # equal weights: only where a and b are both right, 50%
    w = ensemble.choose_weights(probs, labels, "accuracy")
    assert w.choice == "fitted"
    np.testing.assert_allclose(w.weights, [0.5, 0.5, 0.0])
    assert w.member_scores == pytest.approx([0.8, 0.7, 0.0])
    assert w.score == 1.0 == metrics.score("accuracy", ensemble.blend(probs, w.weights), labels)


def test_a_fit_within_the_noise_keeps_the_simple_choice():
    """Fitted weights must beat the simple choice in 90% of bootstrap resamples: 3 images more right out of
    400 do (95%), 1 does not (63%)."""
    labels = np.arange(400) % 3
    bad = confidently_wrong(labels)  # equal weights are worse than the best member: the simple choice is it
    for gained, choice in ((1, "best member"), (3, "fitted")):
        # a is wrong on 0..gained, b on gained..2*gained: together only image `gained` stays wrong
        a, b = member(labels, set(range(gained + 1))), member(labels, set(range(gained, 2 * gained + 1)))
        w = ensemble.choose_weights([a, b, bad], labels, "accuracy")
        assert w.choice == choice, w.reason
        assert w.score == pytest.approx((400 - 1 - (gained if choice != "fitted" else 0)) / 400)
        if choice == "best member":
            np.testing.assert_array_equal(w.weights, [1, 0, 0])
            assert "bootstrap" in w.reason


def test_small_validation_sets_are_not_fitted():
    labels = np.arange(120) % 3
    good, bad = member(labels, set(range(10))), confidently_wrong(labels)
    # 120 images: too few to fit; equal weights are worse than the best member alone: it is chosen
    w = ensemble.choose_weights([good, bad], labels, "accuracy")
    assert (w.choice, list(w.weights), w.score) == ("best member", [1.0, 0.0], pytest.approx(110 / 120))
    assert "too few to fit" in w.reason and not w.warning
    # equal weights not worse than the best member: equal weights (here a member as good, more confident)
    w = ensemble.choose_weights([good, member(labels, set(range(10)), 0.9)], labels, "accuracy")
    assert (w.choice, list(w.weights)) == ("equal", [0.5, 0.5])
    # fewer than 50 images: the same simple choice, never below the best member, with a warning
    w = ensemble.choose_weights([good[:30], bad[:30]], labels[:30], "accuracy")
    assert (w.choice, list(w.weights)) == ("best member", [1.0, 0.0]) and "WARNING" in w.warning


@pytest.mark.parametrize("metric", metrics.METRICS)
def test_weights_never_score_below_the_best_member(metric):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 300)
    probs = []
    for noise in (1.0, 2.0, 4.0, 8.0):  # members from good to near chance
        logits = rng.normal(0, noise, (300, 4))
        logits[np.arange(300), labels] += 2.0
        p = np.exp(logits - logits.max(1, keepdims=True))
        probs.append(p / p.sum(1, keepdims=True))
    scores = [metrics.score(metric, p, labels) for p in probs]
    best = max(scores) if metrics.higher_is_better(metric) else min(scores)
    fitted = ensemble.fit_ensemble_weights(probs, labels, metric)
    assert fitted.min() >= 0 and fitted.sum() == pytest.approx(1)
    for weights in (fitted, ensemble.choose_weights(probs, labels, metric).weights):
        value = metrics.score(metric, ensemble.blend(probs, weights), labels)
        assert not metrics.better(metric, best, value) or value == pytest.approx(best)


def test_multi_label_members_blend_sigmoids_and_the_blend_gets_thresholds():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 4)) < 0.4).astype(np.uint8)
    good = labels * 0.3 + rng.random((300, 4)) * 0.7  # positives 0.3..1, negatives 0..0.7: 0.5 is not the best cut
    noise = rng.random((300, 4))
    w = ensemble.choose_weights([good, noise], labels, "f2_samples")
    assert w.weights[0] > w.weights[1] and w.thresholds.shape == (4,)
    blended = ensemble.blend([good, noise], w.weights)
    assert metrics.score("f2_samples", blended, labels, w.thresholds) >= \
        metrics.score("f2_samples", blended, labels) - 1e-12  # fitted on these images: at least 0.5 everywhere
    assert ensemble.choose_weights([good, noise], labels.argmax(1), "accuracy").thresholds is None  # single-label
    # without images to fit them on: the members' own (0.5 for one without), weighted as their probabilities
    tags = ["cloud", "haze", "road", "water"]
    members = [SimpleNamespace(spec=SimpleNamespace(multi_label=True, thresholds=[0.2] * 4), class_names=tags),
               SimpleNamespace(spec=SimpleNamespace(multi_label=True, thresholds=None), class_names=tags)]
    np.testing.assert_allclose(ensemble.ensemble_thresholds(members, np.array([0.75, 0.25])), [0.275] * 4)
    single = [SimpleNamespace(spec=SimpleNamespace(multi_label=False, thresholds=None), class_names=tags)]
    assert ensemble.ensemble_thresholds(single, np.ones(1)) is None


def test_multi_label_candidates_compare_at_the_thresholds_submitted():
    """A member that is good at 0.5 and one whose probabilities separate the tags well but all lie under 0.5: at
    0.5 the first looks better, at the thresholds the blend is submitted with the second is."""
    rng = np.random.default_rng(0)
    labels = (rng.random((150, 4)) < 0.4).astype(np.uint8)
    at_half = np.clip(labels * 0.45 + rng.random((150, 4)) * 0.55, 0, 1)
    low = labels * 0.2 + rng.random((150, 4)) * 0.19 + 0.1
    own = [metrics.score("f2_samples", p, labels, metrics.fit_thresholds("f2_samples", p, labels))
           for p in (at_half, low)]
    assert metrics.score("f2_samples", at_half, labels) > metrics.score("f2_samples", low, labels)
    w = ensemble.choose_weights([at_half, low], labels, "f2_samples")
    assert w.member_scores == pytest.approx(own)  # each member at thresholds fitted for it
    submitted = metrics.score("f2_samples", ensemble.blend([at_half, low], w.weights), labels, w.thresholds)
    assert w.score == pytest.approx(submitted) and submitted >= max(own) - 1e-12  # never below the best member


def test_labels_read_back_name_the_file_and_line():
    member = SimpleNamespace(spec=SimpleNamespace(multi_label=False), class_names=list(CLASSES))
    assert ensemble.read_labels(["dog", "bird"], member, "val.csv").tolist() == [2, 0]
    with pytest.raises(ensemble.DataError, match="val.csv line 3: 'cow' is not a class"):
        ensemble.read_labels(["dog", "cow"], member, "val.csv")
    member.spec.multi_label = True
    assert ensemble.read_labels(["dog bird"], member, "val.csv").tolist() == [[1, 0, 1]]


def test_the_folds_of_a_multi_label_run_decide_with_its_out_of_fold_thresholds(tmp_path):
    folds = [SimpleNamespace(checkpoint={"config": {"name": f"kf-f{k}", "fold": k, "folds": 2}},
                             run_dir=tmp_path / f"kf-f{k}", spec=SimpleNamespace(multi_label=True),
                             class_names=["a", "b"]) for k in (1, 2)]
    assert ensemble.fold_thresholds(folds) is None  # no out-of-fold file yet
    (tmp_path / "kf-oof.json").write_text(json.dumps({"thresholds": [0.3, 0.6], "multi_label": True}))
    assert ensemble.fold_thresholds(folds).tolist() == [0.3, 0.6]
    folds[0].spec.multi_label = False
    assert ensemble.fold_thresholds(folds) is None


def test_shared_validation_images():
    a = {"val_files": [f"train/{i}.png" for i in range(100)]}
    reordered = {"val_files": list(reversed(a["val_files"]))}
    overlap = {"val_files": [f"train/{i}.png" for i in range(40, 160)]}  # 60 in common with a
    small = {"val_files": ["train/1.png", "train/2.png"]}
    assert ensemble.shared_val_files([a, reordered]) == a["val_files"]  # the same split: all of them
    assert ensemble.shared_val_files([a, overlap]) == a["val_files"][40:]  # at least 50 in common
    assert ensemble.shared_val_files([small, {"val_files": ["train/2.png", "train/1.png"]}]) == small["val_files"]
    assert ensemble.shared_val_files([a, small]) == []  # 2 in common: too few
    assert ensemble.shared_val_files([a, {"val_files": []}]) == []  # --val-split 0


# ----------------------------------------------------------------------------------------------
# End to end: a trained CNN and checkpoints made from it
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    """300 training images; the run holds out 70% of them, so that 210 validation images are shared."""
    return write_dataset(tmp_path_factory.mktemp("ens") / "comp", classes=CLASSES, per_class=100, size=16)


@pytest.fixture(scope="module")
def good(comp, tmp_path_factory) -> Path:
    defaults = importlib.import_module("train_cnn").DEFAULTS
    run = trainer.main("cnn", ["--data", str(comp), "--epochs", "1", "--img-size", "16", "--val-split", "0.7",
                               "--batch-size", "16", "--runs-dir", str(tmp_path_factory.mktemp("runs")),
                               "--name", "good", "--precision", "fp32", "--channels-last", "off", "--no-progress"],
                       **defaults)
    return run / "best.pt"


def variant(good: Path, path: Path, bad: bool = False, **changes) -> Path:
    """A checkpoint made from the good run's: `bad` predicts the class after the good model's, confidently
    (its last layer's rows rolled and scaled up); `changes` replace checkpoint entries (val_files, config)."""
    ckpt = checkpoint.load_checkpoint(good)
    weights = dict(ckpt["model"])
    if bad:
        last = [k for k, v in weights.items() if v.ndim == 2 and v.shape[0] == len(CLASSES)][-1]
        bias = last[:-len("weight")] + "bias"
        weights[last] = 5 * torch.roll(weights[last], 1, 0)
        weights[bias] = 5 * torch.roll(weights[bias], 1, 0)
    checkpoint.save_checkpoint(path, {**ckpt, "model": weights, **changes})
    return path


@pytest.fixture(scope="module")
def bad(good, tmp_path_factory) -> Path:
    return variant(good, tmp_path_factory.mktemp("bad") / "bad.pt", bad=True)


def run_predict(*argv):
    return predict.main([str(a) for a in argv] + ["--no-progress"])


def read_probs(path: Path) -> np.ndarray:
    ids, labels, names, probs = runs.read_predictions(path, labelled=False)
    assert labels is None and names == list(CLASSES)
    return np.array(probs)


def weighting(paths, comp: Path, metric="accuracy", tta=False, mode="fit") -> ensemble.Weighting:
    device = torch.device("cpu")
    predictors = predict.load_models([str(p) for p in paths], device)
    images = predict.ImageCache(comp / ".cache", progress=False)
    return predict.ensemble_weights(predictors, comp, images, device, 64, tta, metric, mode)


@pytest.fixture(scope="module")
def validation(comp, good, bad) -> tuple[np.ndarray, list[np.ndarray]]:
    """The labels of the shared validation images and the probabilities of the good and the bad member there."""
    predictors = predict.load_models([str(good), str(bad)], torch.device("cpu"))
    files, labels = ensemble.validation_images(predictors, comp)
    images = predict.ImageCache(comp / ".cache", progress=False)
    return labels, predict.member_probs(predictors, files, images, torch.device("cpu"), 64, tta=False)


def test_a_bad_member_gets_weight_zero_and_changes_nothing(comp, good, bad, validation, tmp_path, capsys):
    for name, members in (("good", [good]), ("both", [good, bad])):
        run_predict(*members, "--data", comp, "--out", tmp_path / f"{name}.csv", "--probs", tmp_path / f"{name}_p.csv")
    out = capsys.readouterr().out
    assert out.count("ensemble weights for accuracy on 210 validation images") == 1  # for the ensemble only
    assert (tmp_path / "both.csv").read_text() == (tmp_path / "good.csv").read_text()
    assert (tmp_path / "both_p.csv").read_text() == (tmp_path / "good_p.csv").read_text()
    val_acc = checkpoint.load_checkpoint(good)["best_val_acc"]
    assert val_acc > 0.6  # one epoch learns the bars: the good model is good
    w = weighting([good, bad], comp, "accuracy")
    assert (w.n_val, w.choice, list(w.weights)) == (210, "best member", [1.0, 0.0]), w.reason
    assert w.score == w.member_scores[0] == pytest.approx(val_acc)  # what training measured on these images
    labels, probs = validation
    for metric in metrics.METRICS:
        for order in (1, -1):  # whichever comes first
            w = ensemble.choose_weights(probs[::order], labels, metric)
            assert (w.choice, list(w.weights[::order])) == ("best member", [1.0, 0.0]), (metric, w.reason)
            assert w.score == w.member_scores[::order][0]
            assert metrics.better(metric, *w.member_scores[::order])


def test_tta_applies_to_the_validation_predictions(comp, good, bad, validation):
    labels, (plain, _) = validation
    predictors = predict.load_models([str(good)], torch.device("cpu"))
    assert predictors[0].has_tta
    files, _ = ensemble.validation_images(predictors, comp)
    images = predict.ImageCache(comp / ".cache", progress=False)
    tta = predict.ensemble_probs(predictors, files, images, torch.device("cpu"), 64, tta=True)
    score = weighting([good, bad], comp, "log_loss", tta=True).member_scores[0]
    assert score == pytest.approx(metrics.score("log_loss", tta, labels), rel=1e-9)
    assert score != pytest.approx(metrics.score("log_loss", plain, labels), rel=1e-6)  # the mirrored images did count


def test_weights_equal_is_the_plain_average(comp, good, bad, tmp_path):
    for name, members in (("good", [good]), ("bad", [bad]), ("both", [good, bad])):
        run_predict(*members, "--data", comp, "--out", tmp_path / f"{name}.csv", "--probs", tmp_path / f"{name}_p.csv",
                    "--weights", "equal")
    average = (read_probs(tmp_path / "good_p.csv") + read_probs(tmp_path / "bad_p.csv")) / 2
    np.testing.assert_allclose(read_probs(tmp_path / "both_p.csv"), average, atol=2e-6)
    assert weighting([good, bad], comp, mode="equal").weights.tolist() == [0.5, 0.5]


def test_other_validation_splits_get_equal_weights_and_a_warning(comp, good, bad, tmp_path, caplog):
    ckpt = checkpoint.load_checkpoint(good)
    val_files = ckpt["val_files"]
    others = {"other split": variant(good, tmp_path / "other.pt", bad=True, val_files=val_files[:30],
                                     config={**ckpt["config"], "metric": "macro_f1"}, best_val_score=0.25),
              "no split": variant(good, tmp_path / "none.pt", bad=True, val_files=[], best_val_acc=float("nan"))}
    for what, other in others.items():
        w = weighting([good, other], comp)
        assert (w.choice, list(w.weights), w.n_val) == ("equal", [0.5, 0.5], 0), what
        assert "could not be fitted" in w.warning and str(good) in w.warning and str(other) in w.warning
        assert f"{good}: accuracy {ckpt['best_val_acc']:.4f}" in w.warning  # each member's own best validation score
    assert "macro_f1 0.2500" in weighting([good, others["other split"]], comp).warning  # and its run's metric
    # end to end: the plain average, and the warning is shown
    run_predict(good, others["other split"], "--data", comp, "--out", tmp_path / "both.csv", "--probs",
                tmp_path / "both_p.csv")
    run_predict(others["other split"], "--data", comp, "--out", tmp_path / "other.csv", "--probs",
                tmp_path / "other_p.csv")
    run_predict(good, "--data", comp, "--out", tmp_path / "good.csv", "--probs", tmp_path / "good_p.csv")
    np.testing.assert_allclose(read_probs(tmp_path / "both_p.csv"),
                               (read_probs(tmp_path / "good_p.csv") + read_probs(tmp_path / "other_p.csv")) / 2,
                               atol=2e-6)
    assert any("could not be fitted" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_small_shared_validation_sets_fall_back(comp, good, bad, tmp_path):
    val_files = checkpoint.load_checkpoint(good)["val_files"]
    for n, choice, weights in ((120, "best member", [1.0, 0.0]), (30, "best member", [1.0, 0.0])):
        members = [variant(good, tmp_path / f"good{n}.pt", val_files=val_files[:n]),
                   variant(good, tmp_path / f"bad{n}.pt", bad=True, val_files=val_files[:n])]
        w = weighting(members, comp)
        assert (w.n_val, w.choice, list(w.weights)) == (n, choice, weights), w.reason
        assert bool(w.warning) == (n < ensemble.MIN_SHARED_IMAGES)


def test_metric_from_the_checkpoint_and_against_the_solution(comp, good, bad, tmp_path, capsys):
    trained_for = variant(good, tmp_path / "good_ll.pt",
                          config={**checkpoint.load_checkpoint(good)["config"], "metric": "log_loss"})
    out, probs = tmp_path / "sub.csv", tmp_path / "probs.csv"
    run_predict(trained_for, bad, "--data", comp, "--out", out, "--probs", probs, "--solution", comp / "solution.csv")
    printed = capsys.readouterr().out
    assert "ensemble weights for log_loss" in printed
    with open(comp / "solution.csv", newline="") as f:
        labels = np.array([CLASSES.index(row[1]) for row in list(csv.reader(f))[1:]])  # same order as the sample
    expected = metrics.score("log_loss", read_probs(probs), labels)
    assert f"accuracy against {comp / 'solution.csv'}: {submission_accuracy(out, comp / 'solution.csv'):.4f}" in printed
    line = next(x for x in printed.splitlines() if x.startswith("log_loss against"))
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(expected, abs=1e-3)  # --probs holds 6 decimals
    # --metric overrides it; --eval reports it
    result = run_predict(trained_for, bad, "--data", comp, "--eval", "--solution", comp / "solution.csv",
                         "--metric", "macro_f1")
    assert result["metric"] == "macro_f1"
    assert result["score"] == pytest.approx(metrics.score("macro_f1", one_hot(result["predicted"]), labels))
    assert f"macro_f1 {result['score']:.4f}" in capsys.readouterr().out


def test_an_unknown_metric_in_a_checkpoint_is_an_error(comp, good, tmp_path):
    odd = variant(good, tmp_path / "odd.pt", config={**checkpoint.load_checkpoint(good)["config"], "metric": "auc"})
    with pytest.raises(SystemExit) as exc:
        run_predict(odd, "--data", comp, "--out", tmp_path / "s.csv")
    assert str(exc.value.code).startswith("error: ") and "--metric" in str(exc.value.code)


def test_weights_given_by_hand_blend_in_the_order_given(comp, good, bad, tmp_path, capsys):
    for name, members in (("good", [good]), ("bad", [bad])):
        run_predict(*members, "--data", comp, "--out", tmp_path / f"{name}.csv", "--probs", tmp_path / f"{name}_p.csv")
    run_predict(good, bad, "--data", comp, "--out", tmp_path / "both.csv", "--probs", tmp_path / "both_p.csv",
                "--weights", "3,1")  # normalised: 0.75, 0.25
    expected = 0.75 * read_probs(tmp_path / "good_p.csv") + 0.25 * read_probs(tmp_path / "bad_p.csv")
    np.testing.assert_allclose(read_probs(tmp_path / "both_p.csv"), expected, atol=3e-6)
    printed = capsys.readouterr().out
    assert f"the submission uses the 2 models: {good.parent} (weight 0.75), {bad} (weight 0.25)" in printed
    w = weighting([good, bad], comp, mode=(3.0, 1.0))
    assert (w.choice, list(w.weights), w.n_val) == ("given", [0.75, 0.25], 210)  # scored on the shared images
    assert w.member_scores[0] > w.member_scores[1] and w.score is not None
    for bad_value, what in (("0.5,0.3,0.2", "3 weight(s) for 2 models"), ("0.7,x", "expected fit, equal or one"),
                            ("-1,2", "non-negative"), ("0,0", "non-negative")):
        with pytest.raises(SystemExit) as exc:
            run_predict(good, bad, "--data", comp, "--out", tmp_path / "x.csv", f"--weights={bad_value}")
        # the count is checked against the models (error: ...), the numbers by the parser (exit status 2)
        message = str(exc.value.code) if exc.value.code != 2 else capsys.readouterr().err
        assert "--weights" in message and what in message, message
    assert not (tmp_path / "x.csv").exists()


def test_the_log_says_which_models_the_submission_uses(comp, good, bad, tmp_path, capsys):
    run_predict(good, bad, "--data", comp, "--out", tmp_path / "s.csv")
    printed = capsys.readouterr().out
    assert (f"the submission uses 1 of 2 models: {good.parent} (weight 1.0); {bad} left out: weight 0 "
            "(the best member alone") in printed
    assert "rows (labels), 1 of 2 models" in printed and "2 model(s)" not in printed


def test_the_folds_table_shows_each_folds_score_and_the_real_out_of_fold_path(tmp_path):
    def fold(k, metric, score):
        run_dir = tmp_path / "runs" / f"kf-f{k}"
        run_dir.mkdir(parents=True)
        runs.write_predictions(run_dir / "val_predictions.csv", [f"train/{k}{i}.png" for i in range(4)],
                               ["a", "b", "a", "b"], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]], ["a", "b"])
        config = {"name": f"kf-f{k}", "fold": k, "folds": 2, "seed": 0, "data": "d", "arch": "cnn", "metric": metric}
        return SimpleNamespace(checkpoint={"config": config, "best_val_score": score, "best_val_acc": 0.75},
                               path=run_dir / "best.pt", run_dir=run_dir, class_names=["a", "b"],
                               spec=SimpleNamespace(multi_label=False, thresholds=None, arch="cnn"))
    folds = [fold(1, "accuracy", 0.75), fold(2, "log_loss", 0.4)]
    w = predict.ensemble_weights(folds, tmp_path, None, torch.device("cpu"), 64, False, "accuracy")
    assert w.member_scores == [0.75, 0.75]  # recorded, and the accuracy recorded beside another metric
    table = ensemble.format_weighting(w, folds, tta=False)
    assert str(tmp_path / "runs" / "kf-oof.json") in table and "RUNS/NAME" not in table
    assert "0.7500" in table
    # a metric a fold did not record: scored on its validation predictions
    w = predict.ensemble_weights(folds, tmp_path, None, torch.device("cpu"), 64, False, "log_loss")
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    assert w.member_scores[0] == pytest.approx(metrics.score("log_loss", probs, np.array([0, 1, 0, 1])), abs=1e-6)
    assert w.member_scores[1] == 0.4
