"""camlt tune: the search space's spelling, the refusal of a recipe without a val split, a real
search of a tiny problem (trials in SQLite, continued by a second call, pruning, best.yaml)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, tiny_overrides

from camlt import cli, tune
from camlt.config import from_yaml_file
from camlt.errors import UsageError

optuna = pytest.importorskip("optuna")
RECIPE = ROOT / "configs" / "fmnist_lt.yaml"


@pytest.mark.parametrize(
    "item, expected",
    [
        ("model.scale=8:64:log", tune.Dimension("model.scale", 8.0, 64.0, log=True)),
        ("train.epochs=1:3:int", tune.Dimension("train.epochs", 1.0, 3.0, integer=True)),
        ("train.lr=0.01,0.1", tune.Dimension("train.lr", choices=(0.01, 0.1))),
        (
            "model.finetune=full,last:1",
            tune.Dimension("model.finetune", choices=("full", "last:1")),
        ),
    ],
)
def test_space_spellings(item, expected):
    assert tune.parse_dimension(item) == expected


@pytest.mark.parametrize(
    "item, message",
    [
        ("model.scale", "expected KEY=LOW:HIGH"),
        ("model.scale=64:8", "LOW below HIGH"),
        ("model.scale=0:8:log", "LOW above 0"),
        ("model.scale=1:8:cubic", "flags only log and int"),
        ("train.lr=0.1,", "two or more choices"),
        ("train.lr=a:b", "with numbers"),
    ],
)
def test_bad_spaces_are_refused_by_item(item, message):
    with pytest.raises(UsageError, match=message):
        tune.parse_dimension(item)


def test_a_space_file_and_a_key_given_twice(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("model.scale: 8:64:log\nloss.logit_adjust.tau: 0.5:2\n")
    assert [d.key for d in tune.parse_space([str(space)])] == [
        "model.scale",
        "loss.logit_adjust.tau",
    ]
    with pytest.raises(UsageError, match="each once"):
        tune.parse_space(["train.lr=0.01:0.1", "train.lr=0.1,0.2"])


def test_a_recipe_without_a_val_split_or_with_an_unknown_key_is_refused(fmnist_root, tmp_path):
    base = tiny_overrides(fmnist_root, tmp_path / "unused")
    with pytest.raises(UsageError, match="never the test split"):
        tune.check_search(RECIPE, base, tune.parse_space(["model.scale=8:32"]))
    with pytest.raises(UsageError, match="--space model.scal"):
        tune.check_search(RECIPE, base, tune.parse_space(["model.scal=8:32"]))


def tune_args(fmnist_root: Path, out: Path, *extra: str) -> list[str]:
    base = [o for o in tiny_overrides(fmnist_root, out / "unused") if "run_dir" not in o]
    return [
        "tune", str(RECIPE), *base, "train.epochs=2", "data.n_max=20", "data.val_per_class=5",
        "loss.name=logit_adjust",
        "--space", "model.scale=4:32:log", "loss.logit_adjust.tau=0.5,1.0,1.5",
        "--out", str(out), *extra,
    ]  # fmt: skip


def test_a_search_keeps_its_trials_continues_and_writes_the_best_recipe(
    fmnist_root, tmp_path, capsys
):
    out = tmp_path / "search"
    assert cli.main(tune_args(fmnist_root, out, "--trials", "2", "--no-prune")) == 0
    assert cli.main(tune_args(fmnist_root, out, "--trials", "1", "--no-prune")) == 0  # continues
    study = optuna.load_study(study_name="camlt", storage=f"sqlite:///{out / 'tune.db'}")
    assert len(study.trials) == 3 and all(t.value is not None for t in study.trials)
    best = max(study.trials, key=lambda t: t.value)
    assert f"best: trial {best.number}" in capsys.readouterr().out
    recipe = from_yaml_file(out / "best.yaml")  # a recipe camlt train reads
    assert recipe.model.scale == pytest.approx(best.params["model.scale"])
    assert recipe.loss.logit_adjust.tau == best.params["loss.logit_adjust.tau"]
    with open(out / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["state"] for r in rows] == ["complete"] * 3
    # trial 0 is the recipe as given (once, though the search was continued), marked in the table
    assert study.trials[0].params == {"model.scale": 16.0, "loss.logit_adjust.tau": 1.0}
    assert [r["recipe"] for r in rows] == ["yes", "", ""]
    assert (out / "search.png").stat().st_size > 0
    # the score is the val split's balanced accuracy at the last epoch, never the test split's
    trial_dir = Path(best.user_attrs["run_dir"])
    last = [yaml.safe_load(line) for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]
    assert best.value == pytest.approx(last[-1]["val"]["balanced_accuracy"])


def test_the_recipe_is_tried_only_when_its_values_lie_in_the_space(fmnist_root, tmp_path):
    args = tune_args(fmnist_root, tmp_path)[2:-5]  # the overrides
    inside = tune.parse_space(["model.scale=4:32:log", "loss.logit_adjust.tau=0.5,1.0"])
    values = tune.recipe_values(RECIPE, args, inside)
    assert values == {"model.scale": 16.0, "loss.logit_adjust.tau": 1.0}
    outside = tune.parse_space(["model.scale=20:64", "loss.logit_adjust.tau=0.5,1.0"])
    assert tune.recipe_values(RECIPE, args, outside) is None
    assert not tune.Dimension("train.epochs", 1, 3, integer=True).contains(2.5)
    assert not tune.Dimension("model.scale", 1, 3).contains(True)


def test_a_pruned_trial_stops_at_its_first_val_evaluation(fmnist_root, tmp_path, monkeypatch):
    out = tmp_path / "pruned"
    out.mkdir()
    space = tune.parse_space(["model.scale=4:32:log"])
    base = [o for o in tiny_overrides(fmnist_root, out) if "run_dir" not in o]
    overrides = [*base, "train.epochs=2", "data.n_max=20", "data.val_per_class=5"]
    study = tune.open_study(out, "p", 0, prune=True)
    study.pruner = optuna.pruners.ThresholdPruner(lower=2.0)  # every accuracy is below 2: prune
    study.optimize(tune.Objective(RECIPE, overrides, space, out), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # stopped after epoch 1's val evaluation
    assert not Path(trial.user_attrs["run_dir"]).exists()  # its unfinished run is taken back
    with pytest.raises(UsageError, match="no trial of the search has finished"):
        tune.write_outcome(study, out, space)


def test_workers_as_submitit_jobs_share_one_search(fmnist_root, tmp_path):
    """--cluster local: two submitit jobs (processes), one trial each, one study in tune.db."""
    out = tmp_path / "jobs"
    args = tune_args(fmnist_root, out, "--trials", "2", "--workers", "2", "--cluster", "local")
    assert cli.main([*args, "--no-prune"]) == 0
    study = optuna.load_study(study_name="camlt", storage=f"sqlite:///{out / 'tune.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE"]
    assert (out / "best.yaml").is_file() and any((out / "jobs").iterdir())
