"""From a trained run to a decision: metrics for any test split, calibration and priors fitted on
validation data, shifted test priors, export and the Python API (generated data, tiny models)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_fmnist
from viz_helpers import train_tiny, write_test_pngs

import camlt
from camlt import calibration, cli
from camlt.config import ConfigError
from camlt.data.benchmarks import build_benchmark_sets
from camlt.errors import UsageError
from camlt.metrics import evaluate_predictions, format_table
from camlt.priors import adjust_logits, parse_prior, read_prior_file, shifted_counts
from camlt.trained import evaluate_run, open_run, split_logits

VAL = "data.val_per_class=5"  # the generated set has 30 training images a class, n_max 30 keeps 3+


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("deploy")
    paths, labels = write_test_pngs(base, 6)
    small = ("data.n_max=20",)  # leaves 10 images a class outside the subset for a val split
    return {
        "base": base,
        "linear": train_tiny(base, "linear", "model.head=linear", *small),
        "normalized": train_tiny(base, "normalized", "model.head=normalized", *small),
        "camc": train_tiny(base, "camc", "model.head=camc", *small),
        "pngs": paths,
        "labels": labels,
    }


# ----------------------------------------------------------------------------- metrics
def test_metrics_of_an_unbalanced_split_lead_with_balanced_accuracy():
    labels = torch.tensor([0] * 6 + [1] + [2] * 3)
    logits = torch.tensor([[3.0, 0.0, 0.0]]).repeat(10, 1)  # always class 0
    m = evaluate_predictions(logits, labels, [100, 30, 5])
    assert m["overall"] == pytest.approx(0.6) and m["balanced_accuracy"] == pytest.approx(1 / 3)
    assert m["headline"] == "balanced_accuracy" and m["test_counts"] == [6, 1, 3]
    # class 0: precision 6/10, recall 1, F1 2*6/(10+6); classes 1, 2: never predicted, F1 0
    assert m["per_class_precision"] == [pytest.approx(0.6), None, None]
    assert m["macro_f1"] == pytest.approx(0.75 / 3)
    assert m["confusion"] == [[6, 0, 0], [1, 0, 0], [3, 0, 0]]
    assert m["few_test_classes"] == [1, 2]
    text = format_table(m, ["a", "b", "c"], [100, 30, 5])
    assert text.startswith("headline: balanced accuracy") and "fewer than 5 test images" in text


def test_a_class_without_test_images_is_in_no_group_count():
    labels = torch.tensor([0, 0, 1, 1])
    m = evaluate_predictions(torch.eye(3)[[0, 0, 1, 1]], labels, [200, 150, 50])
    assert m["many_classes"] == 2 and m["medium_classes"] == 0 and m["per_class"][2] is None
    assert m["headline"] == "overall" and m["balanced_accuracy"] == 1.0


# ----------------------------------------------------------------------------- priors
def test_shifted_test_sets_follow_the_training_order():
    # by rank: int(100 * 50 ** (-i / 2)) = 100, 14, 2; class 0 has most training images
    assert shifted_counts("forward50", [500, 50, 5], 100) == [100, 14, 2]
    assert shifted_counts("backward50", [500, 50, 5], 100) == [2, 14, 100]
    assert shifted_counts("forward2", [5, 50, 500], 10) == [5, 7, 10]  # 10, 7, 5 by rank
    assert shifted_counts("uniform", [5, 50, 500], 10) == [10, 10, 10]
    with pytest.raises(UsageError, match="forward3: expected one of forward50"):
        shifted_counts("forward3", [1, 2], 10)


def test_the_decision_rule_by_hand():
    z = torch.tensor([[1.0, 2.0]])
    prior = torch.tensor([0.25, 0.75])
    out = adjust_logits(z, [90, 10], tau=1.0, temperature=2.0, prior=prior)
    expected = [(1 - math.log(0.9)) / 2 + math.log(0.25), (2 - math.log(0.1)) / 2 + math.log(0.75)]
    assert out[0].tolist() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "2 values, but the model has 3 classes"),
        ("[1, -2, 3]", "-2 is not a non-negative number"),
        ("0\n0\n0\n", "every class frequency is zero"),
        ('{"a": 1, "b": 2, "dog": 3}', "unknown classes \\['dog'\\]"),
        ("[1, 2,\n", "line 1: invalid JSON"),
        ("1\nmany\n3\n", "line 2: 'many' is not a number"),
    ],
)
def test_bad_prior_files_are_refused_by_name(tmp_path, text, message):
    path = tmp_path / "prior.txt"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as err:
        read_prior_file(path, ["a", "b", "c"])
    assert str(path) in str(err.value)


def test_named_priors_and_an_unknown_name():
    assert parse_prior("uniform", ["a", "b"], [3, 1]) is None
    assert parse_prior("train", ["a", "b"], [3, 1]).tolist() == [0.75, 0.25]
    with pytest.raises(UsageError, match="expected train or uniform or a prior file"):
        parse_prior("trian", ["a", "b"], [3, 1])


# ----------------------------------------------------------------------------- calibration
def test_fitted_temperature_recovers_a_known_one():
    gen = torch.Generator().manual_seed(0)
    true = torch.randn(20000, 5, generator=gen) * 2
    labels = torch.multinomial(true.softmax(1), 1, generator=gen)[:, 0]
    assert calibration.fit_temperature(true * 3, labels) == pytest.approx(3, rel=0.05)


def test_fitted_tau_removes_a_known_prior():
    gen = torch.Generator().manual_seed(1)
    counts = [900, 90, 10]
    labels = torch.arange(3).repeat(2000)
    evidence = torch.nn.functional.one_hot(labels, 3) * 1.5 + torch.randn(6000, 3, generator=gen)
    logits = evidence + torch.log(torch.tensor(counts) / sum(counts))  # a CE model's scores
    assert calibration.fit_tau(logits, labels, counts) == pytest.approx(1.0, abs=0.15)


def test_val_split_is_held_out_balanced_and_leaves_the_subset_alone(tmp_path):
    from conftest import ROOT, tiny_overrides

    from camlt.config import load_config

    root = write_fmnist(tmp_path / "f")
    make = lambda *x: load_config(  # noqa: E731
        ROOT / "configs" / "fmnist_lt.yaml",
        tiny_overrides(root, tmp_path / "r") + ["data.n_max=20", *x],
    )
    train, val, _ = build_benchmark_sets(make(VAL))
    plain, none, _ = build_benchmark_sets(make())
    assert none is None and torch.equal(train.images, plain.images)
    assert torch.bincount(val.labels).tolist() == [5] * 10
    seen = {bytes(img.numpy()) for img in train.images}
    assert not any(bytes(img.numpy()) in seen for img in val.images)
    with pytest.raises(Exception, match="data.val_per_class=11: class .* has only 10"):
        build_benchmark_sets(make("data.val_per_class=11"))


def test_calibrate_then_eval_predict_and_priors_use_it(runs, tmp_path, capsys):
    run = runs["linear"]
    assert cli.main(["calibrate", str(run)]) == 2  # no val split: says how to get one
    assert "data.val_per_class=N" in capsys.readouterr().err
    assert cli.main(["calibrate", str(run), VAL]) == 0
    out = capsys.readouterr().out
    cal = calibration.load(run)
    assert cal.fitted_on == {"split": "val", "images": 50, "epoch": 1} and "->" in out
    assert (
        cli.main(["eval", str(run), VAL, "--split", "val", "--out", str(tmp_path / "v.json")]) == 0
    )
    record = json.loads((tmp_path / "v.json").read_text())
    assert record["tau"] == cal.tau and record["temperature"] == cal.temperature
    assert record["metrics"]["balanced_accuracy"] == pytest.approx(cal.after["balanced_accuracy"])

    capsys.readouterr()
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps([1.0] + [0.0] * 9))  # only t-shirts where it is used
    assert (
        cli.main(
            [
                "predict",
                str(run),
                *map(str, runs["pngs"]),
                "--prior",
                str(prior),
                "--format",
                "json",
                "--topk",
                "1",
            ]
        )
        == 0
    )
    top = json.loads(capsys.readouterr().out)
    assert {r["top"][0]["name"] for r in top} == {"t-shirt"}
    (run / "calibration.json").unlink()  # the other tests use the run uncalibrated


def test_eval_on_shifted_test_priors(runs, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert (
        cli.main(
            [
                "eval",
                str(runs["normalized"]),
                "--test-prior",
                "forward2",
                "--test-prior",
                "backward2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    shifted = json.loads(out.read_text())["test_priors"]
    assert set(shifted) == {"forward2", "backward2"} and "known" in text
    # 8 test images a class; forward2 keeps int(8 * 2 ** (-r / 9)) at rank r: 58 images
    assert shifted["forward2"]["num_samples"] == sum(int(8 * 2 ** (-r / 9)) for r in range(10))
    assert (
        cli.main(
            [
                "eval",
                str(runs["normalized"]),
                "--test-prior",
                "all",
                "--out",
                str(out),
                "--overwrite",
            ]
        )
        == 2
    )
    assert "would keep no image" in capsys.readouterr().err  # 8 images / 50: refused by name


def test_eval_refuses_model_keys_and_changed_data(runs, tmp_path):
    with pytest.raises(ConfigError, match="model.head: a trained run's model cannot change"):
        open_run(runs["linear"], ["model.head=normalized"])
    other = write_fmnist(tmp_path / "other", per_class_train=15)  # fewer than n_max=20
    loaded = open_run(runs["linear"], [f"data.root={other}"], "cpu")
    with pytest.raises(Exception, match="has 15 training images; the profile asks for 20"):
        split_logits(loaded, "test")


def test_out_never_replaces_a_runs_files(runs, tmp_path, capsys):
    run = runs["linear"]
    before = (run / "checkpoint.pt").read_bytes()
    assert cli.main(["eval", str(run), "--out", str(run / "checkpoint.pt")]) == 2
    assert "a file of the run" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before
    mine = tmp_path / "mine.json"
    mine.write_text("keep me")
    assert cli.main(["eval", str(run), "--out", str(mine)]) == 2
    assert mine.read_text() == "keep me"
    assert cli.main(["eval", str(run), "--out", str(mine), "--overwrite"]) == 0


# ----------------------------------------------------------------------------- export and the API
@pytest.mark.parametrize("head", ["linear", "normalized", "camc"])
def test_onnx_and_torchscript_give_the_models_probabilities(runs, tmp_path, head):
    ort = pytest.importorskip("onnxruntime")
    from camlt.data.inputs import decode, normalise

    loaded = open_run(runs[head], device="cpu")
    loaded.prior = torch.tensor([0.3] + [0.7 / 9] * 9, dtype=torch.float64)
    images = torch.stack([decode(p, loaded.spec) for p in runs["pngs"]])
    expected = loaded.logits(images).softmax(1)
    x = normalise(images, loaded.spec).float().contiguous()
    assert (
        cli.main(["export", str(runs[head]), "--out", str(tmp_path / "m.onnx"), "--overwrite"]) == 0
    )
    from camlt.export import export

    export(loaded, tmp_path / "p.onnx", "onnx")
    export(loaded, tmp_path / "p.pt", "torchscript")
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    for batch in (x, x[:1]):  # a dynamic batch
        probs = session.run(["probabilities"], {"images": batch.numpy()})[0]
        assert np.abs(probs - expected[: len(batch)].numpy()).max() < 1e-4
    files = {"camlt.json": ""}
    scripted = torch.jit.load(str(tmp_path / "p.pt"), _extra_files=files)
    assert (scripted(x)[0] - expected).abs().max() < 1e-4
    meta = json.loads(files["camlt.json"])
    assert meta["classes"] == loaded.classes and meta["input"]["shape"] == ["N", 1, 32, 32]
    assert meta["decision_rule"]["prior"][0] == pytest.approx(0.3)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "p.onnx")).metadata_props}
    assert json.loads(props["camlt"])["input"]["mean"] == meta["input"]["mean"]


def test_export_of_a_timm_backbone(runs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("timm")
    from camlt.data.inputs import decode, normalise
    from camlt.export import export

    run = train_tiny(runs["base"], "timm", "model.backbone=timm/resnet10t", "model.head=linear")
    loaded = open_run(run, device="cpu")
    images = torch.stack([decode(p, loaded.spec) for p in runs["pngs"]])
    export(loaded, tmp_path / "t.onnx", "onnx")
    session = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    x = normalise(images, loaded.spec).float().contiguous().numpy()
    probs = session.run(["probabilities"], {"images": x})[0]
    assert np.abs(probs - loaded.logits(images).softmax(1).numpy()).max() < 1e-4


def test_python_api_as_the_readme_shows_it(runs, capsys):
    model = camlt.load(runs["camc"], device="cpu")
    top = model.predict([str(p) for p in runs["pngs"]], topk=3)
    assert (
        cli.main(
            [
                "predict",
                str(runs["camc"]),
                *map(str, runs["pngs"]),
                "--format",
                "json",
                "--topk",
                "3",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert [t.names for t in top] == [[r["name"] for r in p["top"]] for p in printed]
    batch = torch.stack([_decode(p, model) for p in runs["pngs"]])
    assert torch.allclose(model.probabilities(batch), model.probabilities(runs["pngs"]))
    maps = model.cam(batch)
    assert maps["raw_cam"].shape[0] == len(runs["pngs"])
    with pytest.raises(UsageError, match="expected a uint8 batch"):
        model.logits(batch.float())


def _decode(path: Path, model) -> torch.Tensor:
    from camlt.data.inputs import decode

    return decode(path, model.loaded.spec)


def test_evaluate_run_is_eval(runs):
    metrics, loaded = evaluate_run(runs["normalized"], device="cpu")
    saved = json.loads((runs["normalized"] / "final_metrics.json").read_text())
    assert metrics == saved["metrics"]


def test_the_readme_example_runs(runs, tmp_path, monkeypatch, capsys):
    from conftest import ROOT

    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- example:api", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "fmnist_lt").symlink_to(runs["normalized"])
    (tmp_path / "shirt.png").write_bytes(runs["pngs"][0].read_bytes())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    top = namespace["top"][0]
    assert len(top.names) == 3 and str(top.names) in capsys.readouterr().out
    assert namespace["maps"]["raw_cam"].shape[0] == 1


def test_a_map_negative_everywhere_is_drawn_cold():
    from camlt.viz import upsample

    negative = -torch.rand(4, 4) - 0.5
    assert upsample(negative, (8, 8)).max() == 0.0
    mixed = torch.tensor([[-2.0, 1.0], [0.5, -1.0]])
    scaled = upsample(mixed, (2, 2))
    assert scaled.max() == 1.0 and scaled.min() == 0.0 and scaled[0, 0] == 0.0
