"""Search a recipe's settings on a validation split (``camlt tune``), with Optuna.

Each trial is a training run of the recipe with some keys drawn from the search space; its
score is the balanced accuracy on the run's validation split at its last evaluation (a recipe
without a val split is refused: the test split never chooses). Each val evaluation is reported
to the pruner, which stops a trial that is behind the others at the same epoch. The trials live
in a SQLite file, so a search stopped anywhere continues where it was with the same command, and
several workers (local processes or SLURM jobs through submitit, as ``camlt submit``) can share
one search. At the end the best trial's resolved config is written as a recipe, with a table of
the trials and a figure of the search.

A space is ``KEY=LOW:HIGH`` (uniform), ``KEY=LOW:HIGH:log`` (log-uniform), ``KEY=LOW:HIGH:int``
(whole numbers) or ``KEY=A,B,C`` (choices), one per key, or a YAML file of such lines
(``KEY: SPEC``)::

    camlt tune configs/fmnist_lt_strong.yaml data.val_per_class=100 \\
        --space model.scale=8:64:log loss.logit_adjust.tau=0.5:2 --trials 20
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from camlt.checkpoint import atomic_write_text
from camlt.config import ConfigError, load_config, to_yaml
from camlt.errors import UsageError
from camlt.losses import loss_settings
from camlt.preflight import check_run
from camlt.rundir import RUN_MARKER
from camlt.viz import plain_text

METRIC = "balanced_accuracy"  # on the val split: a long-tailed val split's top-1 favours the head
STORAGE_FILE = "tune.db"
BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.csv"
FIGURE_FILE = "search.png"


@dataclass(frozen=True)
class Dimension:
    """One searched key: a range (uniform, log-uniform or whole numbers) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this dimension (a recipe's own value may not be)."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and value != int(value):
            return False
        return self.low <= value <= self.high

    def example(self) -> Any:
        """A value of the space, to check that the key takes it before any trial runs."""
        if self.choices is not None:
            return self.choices[0]
        return int(self.low) if self.integer else self.low


def _value(text: str) -> Any:
    """A choice as YAML reads it (0.1 a number, true a bool, last:1 a string)."""
    return yaml.safe_load(text)


def parse_dimension(item: str) -> Dimension:
    """``KEY=SPEC`` as a Dimension; a malformed one is refused naming what was expected."""
    key, eq, spec = item.partition("=")
    key, spec = key.strip(), spec.strip()
    if not eq or not key or not spec:
        raise UsageError(f"--space {item!r}: expected KEY=LOW:HIGH[:log|:int] or KEY=A,B,...")
    if "," in spec:
        choices = tuple(_value(c.strip()) for c in spec.split(",") if c.strip())
        if len(choices) < 2:
            raise UsageError(f"--space {item!r}: give two or more choices")
        return Dimension(key, choices=choices)
    parts = spec.split(":")
    flags = parts[2:]
    try:
        low, high = float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise UsageError(
            f"--space {item!r}: expected LOW:HIGH[:log|:int] with numbers, or choices A,B,..."
        ) from None
    unknown = [f for f in flags if f not in ("log", "int")]
    if unknown or not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise UsageError(f"--space {item!r}: LOW below HIGH, both finite, flags only log and int")
    if "log" in flags and low <= 0:
        raise UsageError(f"--space {item!r}: a log range needs LOW above 0")
    return Dimension(key, low, high, log="log" in flags, integer="int" in flags)


def parse_space(items: Sequence[str]) -> list[Dimension]:
    """The dimensions of ``--space``: KEY=SPEC items, or YAML files of ``KEY: SPEC`` lines."""
    dims: list[Dimension] = []
    for item in items:
        path = Path(item)
        if "=" not in item and path.is_file():
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if not isinstance(data, dict):
                raise UsageError(f"{path}: expected lines KEY: LOW:HIGH[:log|:int] or KEY: A,B")
            dims += [parse_dimension(f"{k}={v}") for k, v in data.items()]
        else:
            dims.append(parse_dimension(item))
    keys = [d.key for d in dims]
    if not dims or len(set(keys)) != len(keys):
        raise UsageError(f"--space: one or more keys, each once (got {keys})")
    return dims


def override(key: str, value: Any) -> str:
    """``key=value`` as the override parser reads it back (a string YAML would not mistake)."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def trial_config(
    recipe: Path, overrides: Sequence[str], values: dict[str, Any], run_dir: Path
) -> DictConfig:
    """The recipe with the trial's values and its own run directory, checked as training would."""
    drawn = [override(k, v) for k, v in values.items()]
    cfg = load_config(recipe, [*overrides, *drawn, f"train.run_dir={run_dir}"])
    check_run(cfg)
    return cfg


def has_val_split(cfg: DictConfig) -> bool:
    data = cfg.data
    return bool(data.val_per_class or data.val_fraction or data.val_file)


def check_search(recipe: Path, overrides: Sequence[str], space: Sequence[Dimension]) -> None:
    """Before any trial: every key takes a value of its range, and the data has a val split."""
    for dim in space:
        try:
            trial_config(recipe, overrides, {dim.key: dim.example()}, Path("unused"))
        except ConfigError as err:
            raise UsageError(f"--space {dim.key}: {err}") from None
    cfg = load_config(recipe, list(overrides))
    if not has_val_split(cfg):
        raise UsageError(
            "camlt tune chooses on a validation split, never the test split, and this recipe has "
            "none: add data.val_per_class=N (benchmarks: N held-out images a class) or "
            "data.val_fraction=F / data.val_file=FILE (own data)"
        )


class Objective:
    """One trial: train the drawn config, report each val evaluation, score the last."""

    def __init__(
        self, recipe: Path, overrides: Sequence[str], space: Sequence[Dimension], out: Path
    ) -> None:
        self.recipe, self.overrides, self.space, self.out = recipe, list(overrides), space, out

    def __call__(self, trial) -> float:
        import optuna

        from camlt.engine import train

        run_dir = self.out / f"trial-{trial.number:04d}"
        values = {d.key: d.suggest(trial) for d in self.space}
        cfg = trial_config(self.recipe, self.overrides, values, run_dir)
        trial.set_user_attr("run_dir", str(run_dir))
        last: dict = {}

        def report(epoch: int, val: dict) -> None:
            last.update(val)
            trial.report(val[METRIC], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val {METRIC} {val[METRIC]:.4f} at epoch {epoch}")

        try:
            train(cfg, run_dir, resume=run_dir.is_dir(), on_val=report)
        except optuna.TrialPruned:
            if (run_dir / RUN_MARKER).is_file():  # a camlt run this trial made: of no more use
                shutil.rmtree(run_dir)
            raise
        return float(last[METRIC])


def open_study(out: Path, name: str, seed: int, prune: bool):
    """The search's study in ``out/tune.db``, created or continued."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
        if prune
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        study_name=name,
        storage=f"sqlite:///{(out / STORAGE_FILE).resolve()}",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )


def effective_value(cfg: DictConfig, key: str) -> Any:
    """A key's value in a run of ``cfg``: a loss's setting left out of the recipe is its
    default (``loss.logit_adjust.tau`` is 1 unless the recipe says otherwise)."""
    value = OmegaConf.select(cfg, key)
    prefix = f"loss.{cfg.loss.name}."
    if value is None and key.startswith(prefix) and "." not in key[len(prefix) :]:
        value = getattr(loss_settings(cfg.loss), key[len(prefix) :], None)
    return value


def recipe_values(
    recipe: Path, overrides: Sequence[str], space: Sequence[Dimension]
) -> dict[str, Any] | None:
    """The recipe's own values of the searched keys, when every one lies in the space."""
    cfg = load_config(recipe, list(overrides))
    values = {d.key: effective_value(cfg, d.key) for d in space}
    inside = all(d.contains(values[d.key]) for d in space)
    return values if inside else None


def enqueue_recipe(study, recipe: Path, overrides: Sequence[str], space: Sequence[Dimension]):
    """A new search's first trial is the recipe as given, so the table says whether the search
    beat it (on the val split); a recipe value outside the space is not tried. Returns it."""
    values = recipe_values(recipe, overrides, space)
    if values is not None and not study.trials:
        study.enqueue_trial(values, user_attrs={"recipe": True})
    return values


@dataclass
class Worker:
    """Trials of one search in one process: here, or as a submitit job (``--cluster``)."""

    recipe: Path
    overrides: list[str]
    space: list[Dimension]
    out: Path
    name: str
    trials: int
    seed: int = 0
    prune: bool = True

    def __call__(self) -> int:
        study = open_study(self.out, self.name, self.seed, self.prune)
        objective = Objective(self.recipe, self.overrides, self.space, self.out)
        study.optimize(objective, n_trials=self.trials, catch=())
        return self.trials


def finished_trials(study) -> list:
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def write_outcome(study, out: Path, space: Sequence[Dimension]) -> Path:
    """The best trial's config as a recipe, the table of trials and the figure of the search."""
    done = finished_trials(study)
    if not done:
        raise UsageError(f"{out}: no trial of the search has finished (all pruned or failed)")
    best = max(done, key=lambda t: t.value)
    config = OmegaConf.load(Path(best.user_attrs["run_dir"]) / "config.yaml")
    header = (
        f"# camlt tune: trial {best.number} of {len(study.trials)}, val {METRIC} "
        f"{best.value:.4f}; searched {', '.join(d.key for d in space)}\n"
    )
    atomic_write_text(out / BEST_FILE, header + to_yaml(config))
    write_trials(study, out / TRIALS_FILE, space)
    plot_search(study, out / FIGURE_FILE, space)
    return out / BEST_FILE


def write_trials(study, path: Path, space: Sequence[Dimension]) -> None:
    rows = [
        [t.number, t.state.name.lower(), "" if t.value is None else f"{t.value:.6f}"]
        + [t.params.get(d.key, "") for d in space]
        + ["yes" if t.user_attrs.get("recipe") else ""]
        for t in study.trials
    ]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["trial", "state", f"val_{METRIC}", *(d.key for d in space), "recipe"])
        writer.writerows(rows)
    tmp.replace(path)


@plain_text
def plot_search(study, path: Path, space: Sequence[Dimension]) -> None:
    """The score by trial with the best so far, and the score against each searched key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    done = finished_trials(study)
    fig, axes = plt.subplots(1, 1 + len(space), figsize=(4 * (1 + len(space)), 3.4), squeeze=False)
    numbers, values = [t.number for t in done], [100 * t.value for t in done]
    best = [max(values[: i + 1]) for i in range(len(values))]
    ax = axes[0][0]
    ax.plot(numbers, values, "o", label="trial")
    ax.step(numbers, best, where="post", label="best so far")
    ax.set(xlabel="trial", ylabel=f"val {METRIC} (%)", title="search")
    ax.legend(fontsize=8)
    for ax, dim in zip(axes[0][1:], space, strict=True):
        xs = [t.params[dim.key] for t in done]
        ax.plot([str(x) for x in xs] if dim.choices else xs, values, "o")
        if dim.log:  # ticks as plain numbers: log axes label in mathtext, drawn here as text
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel=dim.key, ylabel=f"val {METRIC} (%)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
