"""The ``camlt`` command: train, eval and data subcommands."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from camlt import __version__
from camlt.checkpoint import atomic_write_json
from camlt.cli_inspect import add_inspection_commands
from camlt.cluster import add_resource_arguments
from camlt.config import ConfigError, from_yaml_file, load_config
from camlt.errors import UsageError, UserError, printable
from camlt.rundir import CHECKPOINT, CONFIG_FILE, EVAL_FILE, RUN_FILES, default_run_dir

# What is printed as one line: errors a user can fix, and the system's (a missing file, a full
# disk). Anything else is a bug in camlt and shows its traceback.
EXPECTED_ERRORS = (
    UserError,
    OSError,  # FileNotFoundError; a full disk while writing config.yaml
)


def _resolve_train_target(target: str, overrides: list[str]):
    """A recipe plus overrides, or an existing run directory (whose saved config is reused)."""
    path = Path(target)
    if path.is_dir():
        if overrides:
            raise ConfigError(f"{target} is a run directory; overrides apply to a recipe file only")
        return from_yaml_file(path / CONFIG_FILE), path
    cfg = load_config(path, overrides)
    run_dir = cfg.train.run_dir or default_run_dir(path, overrides, cfg.train.out_dir)
    return cfg, Path(run_dir)


def cmd_train(args: argparse.Namespace) -> int:
    from camlt.engine import train

    cfg, run_dir = _resolve_train_target(args.config, args.overrides)
    print(f"run directory: {run_dir}", flush=True)
    train(cfg, run_dir, resume=args.resume or Path(args.config).is_dir())
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """``camlt train`` as a submitit job: the same config and run directory, on SLURM or here."""
    from camlt import cluster

    cfg, run_dir = _resolve_train_target(args.config, args.overrides)
    print(f"run directory: {run_dir}", flush=True)
    kind = "local" if args.local else "slurm"
    res = cluster.resources_from(args)
    resume = args.resume or Path(args.config).is_dir()
    command = shlex.join(["camlt", "train", args.config, *args.overrides, *(["--resume"] * resume)])
    job = cluster.submit_train(cfg, run_dir, resume, kind, res, command, args.folder)
    print(cluster.describe(job, kind, res), flush=True)
    if args.wait or args.local:
        metrics = cluster.wait(job)
        print(f"job {job.job_id} finished: test top-1 {100 * metrics['overall']:.2f}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """An Optuna search of ``--space`` on the recipe's val split (camlt.tune)."""
    from camlt import cluster, tune

    recipe, out = Path(args.recipe), Path(args.out)
    space = tune.parse_space(args.space)
    tune.check_search(recipe, args.overrides, space)
    out.mkdir(parents=True, exist_ok=True)
    study = tune.open_study(out, args.study, args.seed, not args.no_prune)  # before any worker
    if tune.enqueue_recipe(study, recipe, args.overrides, space) is None:
        print("the recipe's own values lie outside --space: not tried as a trial")
    workers = max(1, args.workers)
    shares = [args.trials // workers + (i < args.trials % workers) for i in range(workers)]
    jobs = [
        tune.Worker(recipe, list(args.overrides), space, out, args.study, n, args.seed + i,
                    not args.no_prune)
        for i, n in enumerate(shares) if n
    ]  # fmt: skip
    if args.cluster is None:
        for job in jobs:
            job()
    else:
        res = cluster.resources_from(args)
        ex = cluster.executor(
            args.cluster, args.folder or out / "jobs", res, "pass --cluster local"
        )
        commands = [f"camlt tune worker {i} of {len(jobs)}" for i in range(len(jobs))]
        for job in cluster.submit(ex, jobs, commands, "pass --cluster local"):
            cluster.wait(job)
    study = tune.open_study(out, args.study, args.seed, not args.no_prune)
    best = tune.write_outcome(study, out, space)
    done = tune.finished_trials(study)
    top = max(done, key=lambda t: t.value)
    print(
        f"{len(study.trials)} trials ({len(done)} finished) in {out / tune.STORAGE_FILE}; best: "
        f"trial {top.number}, val {tune.METRIC} {100 * top.value:.2f}, "
        + ", ".join(f"{k}={v}" for k, v in top.params.items())
    )
    own = [t for t in done if t.user_attrs.get("recipe")]
    if own:
        print(
            f"the recipe as given: trial {own[0].number}, val {tune.METRIC} {100 * own[0].value:.2f}"
        )
    print(f"wrote {best} (camlt train {best}), {out / tune.TRIALS_FILE}, {out / tune.FIGURE_FILE}")
    return 0


def _out_path(out: str | None, default: Path, overwrite: bool) -> Path:
    """Where a command writes its file: never over a run's own files, and over another existing
    file only when asked (--overwrite); its default file is its own to replace."""
    path = Path(out) if out else default
    if not path.resolve().parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the folder {path.resolve().parent} does not exist")
    if path.name in RUN_FILES and (path.parent / CHECKPOINT).is_file():
        raise UsageError(
            f"--out {path}: that is a file of the run in {path.parent}; choose another"
        )
    if out and path.exists() and path.resolve() != default.resolve() and not overwrite:
        raise UsageError(f"--out {path} exists; pass --overwrite to replace it")
    return path


def cmd_eval(args: argparse.Namespace) -> int:
    from camlt.metrics import format_table
    from camlt.priors import TEST_PRIORS
    from camlt.trained import evaluate, open_run, split_logits

    loaded = open_run(args.target, args.overrides, args.device)
    run_dir = loaded.run_dir or Path(args.target).parent
    out = _out_path(args.out, run_dir / EVAL_FILE, args.overwrite)
    priors = list(TEST_PRIORS) if "all" in (args.test_prior or []) else args.test_prior or []
    logits, labels = split_logits(loaded, args.split)
    metrics = evaluate(loaded, logits, labels)
    shifted = {name: evaluate(loaded, logits, labels, name) for name in priors}
    print(
        f"{args.split} split, {len(labels)} images; tau {loaded.tau:g}, temperature "
        f"{loaded.temperature:.3f}{' (camlt calibrate)' if loaded.calibration else ''}"
    )
    print(format_table(metrics, loaded.classes, loaded.train_counts))
    if shifted:
        print("\n" + format_prior_table(shifted))
    record = {
        "split": args.split,
        "checkpoint": str(loaded.checkpoint),
        "epoch": loaded.epoch,
        "tau": loaded.tau,
        "temperature": loaded.temperature,
        "metrics": metrics,
        "classes": loaded.classes,
        "train_counts": loaded.train_counts,
        **({"test_priors": shifted} if shifted else {}),
        **({"data_check": loaded.data_check} if loaded.data_check is not None else {}),
    }
    atomic_write_json(out, record)
    print(f"wrote {out}")
    return 0


def format_prior_table(shifted: dict) -> str:
    """Top-1 on each shifted test set: as the model stands, and with that prior known."""
    lines = [f"{'test prior':<12} {'images':>6} {'top-1':>7} {'known':>7} {'ece':>6}"]
    for name, m in shifted.items():
        lines.append(
            f"{name:<12} {m['num_samples']:>6} {100 * m['overall']:7.2f} "
            f"{100 * m['overall_known_prior']:7.2f} {100 * m['ece']:6.2f}"
        )
    lines.append("known: the scores adjusted by the test set's own class prior (post-hoc)")
    return "\n".join(lines)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from camlt import calibration
    from camlt.trained import open_run, split_logits

    loaded = open_run(args.run_dir, args.overrides, args.device)
    if loaded.run_dir is None or not Path(args.run_dir).is_dir():
        raise UsageError(f"{args.run_dir}: camlt calibrate takes a run directory")
    logits, labels = split_logits(loaded, "val")
    fitted_on = {"split": "val", "images": len(labels), "epoch": loaded.epoch}
    cal = calibration.fit(logits, labels, loaded.train_counts, fitted_on)
    path = calibration.save(loaded.run_dir, cal)
    print(
        f"fitted on the val split ({len(labels)} images): tau {cal.tau:g}, "
        f"temperature {cal.temperature:.3f}"
    )
    for key in ("balanced_accuracy", "ece"):
        print(f"  {key:<18} {100 * cal.before[key]:6.2f} -> {100 * cal.after[key]:6.2f}")
    print(f"wrote {path}; camlt eval, predict and export now apply it")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from camlt import adapt
    from camlt.data.inputs import normalise
    from camlt.predict import collect_images
    from camlt.trained import open_run

    loaded = open_run(args.run_dir, args.overrides, args.device)
    if loaded.run_dir is None or not Path(args.run_dir).is_dir():
        raise UsageError(f"{args.run_dir}: camlt adapt takes a run directory")
    adapt.experts_of(loaded.model)  # a single model is refused before any image is read
    if args.images:
        paths, missing = collect_images(args.images)
        for item, reason in missing:
            print(f"camlt: skipped {printable(item)}: {reason}", file=sys.stderr)
        batches, source = adapt.file_batches(paths, loaded.spec), "files"
    else:
        batches, source = adapt.split_batches(loaded.cfg), "test split"
    spec = loaded.spec
    log_probs = adapt.view_log_probs(
        loaded.model, batches, lambda b: normalise(b, spec), loaded.device, args.seed
    )
    weights, before, after = adapt.fit_weights(log_probs)
    fitted_on = {"images": source, "count": log_probs.shape[2], "epoch": loaded.epoch}
    learned = adapt.Aggregation(weights.tolist(), {**fitted_on, "seed": args.seed}, before, after)
    path = adapt.save(loaded.run_dir, learned)
    shown = " ".join(f"{w:.3f}" for w in learned.weights)
    print(f"learned on {log_probs.shape[2]} unlabelled images ({source}): weights {shown}")
    print(f"  views' agreement {before:.4f} (equal weights) -> {after:.4f}")
    print(f"wrote {path}; camlt eval, predict, cam and export now use these weights")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from camlt.export import export
    from camlt.trained import open_run

    loaded = open_run(args.run_dir, device="cpu")
    run_dir = loaded.run_dir or Path(args.run_dir).parent
    suffix = ".onnx" if args.format == "onnx" else ".pt"
    out = _out_path(args.out, run_dir / f"model{suffix}", args.overwrite)
    if args.prior:
        from camlt.priors import parse_prior

        loaded.prior = parse_prior(args.prior, loaded.classes, loaded.train_counts)
    export(loaded, out, args.format)
    print(f"wrote {out} ({args.format}); its metadata states the input and the decision rule")
    return 0


def data_stats(cfg) -> dict:
    """Class counts and shot groups of a config's training set."""
    from camlt.data import build_sets
    from camlt.metrics import frequency_thirds, shot_groups

    sets = build_sets(cfg)
    train_set, test_set = sets.train, sets.test
    counts = train_set.class_counts()
    groups = shot_groups(counts)
    return {
        "dataset": cfg.data.name,
        "num_classes": train_set.num_classes,
        "num_images": len(train_set),
        "num_test_images": len(test_set),
        "classes": train_set.classes,
        "counts": counts,
        "imbalance_factor": max(counts) / min(counts),
        "split_seed": cfg.data.split_seed,
        "subset_rule": getattr(train_set, "meta", {}).get("subset_rule"),
        **{name: len(members) for name, members in groups.items()},
        **{f"{name}_classes": members for name, members in frequency_thirds(counts).items()},
        "test_sha256": test_fingerprint(test_set),
    }


def test_fingerprint(test_set) -> str | None:
    """SHA-256 of an in-memory test set's pixels, labels and boxes: two machines that print the
    same one evaluate on the same images (a drawn set such as the cluttered one included)."""
    import hashlib

    if not hasattr(test_set, "images"):  # image files: their own bytes are the fingerprint
        return None
    digest = hashlib.sha256()
    for part in (test_set.images, test_set.labels, test_set.boxes):
        if part is not None:
            digest.update(part.contiguous().numpy().tobytes())
    return digest.hexdigest()


def cmd_data_stats(args: argparse.Namespace) -> int:
    stats = data_stats(load_config(args.config, args.overrides))
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(
        f"{stats['dataset']}: {stats['num_images']} training images in {stats['num_classes']} classes "
        f"(test {stats['num_test_images']}), imbalance {stats['imbalance_factor']:.1f}, "
        f"split seed {stats['split_seed']}"
        + (f", subset rule {stats['subset_rule']}" if stats["subset_rule"] else "")
    )
    print(f"shot groups: many {stats['many']}, medium {stats['medium']}, few {stats['few']}")
    for name, n in zip(stats["classes"], stats["counts"], strict=True):
        print(f"  {name:<20} {n:>7}")
    if stats["test_sha256"]:
        print(f"test set sha256 {stats['test_sha256']}")
    return 0


DESCRIPTION = (
    "camlt: long-tailed image classification with class activation map calibration. Train and "
    "evaluate a recipe, predict, draw class activation maps, report on a run, check a dataset."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camlt", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"camlt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML recipe with dotted overrides")
    p.add_argument("config", help="recipe file (configs/*.yaml) or a run directory to resume")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=30 data.imbalance=50")
    p.add_argument(
        "--resume", action="store_true", help="continue the run from its last checkpoint"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "submit", help="train on a SLURM cluster (or here, --local) through submitit"
    )
    p.add_argument("config", help="recipe file (configs/*.yaml) or a run directory to resume")
    p.add_argument("overrides", nargs="*", help="key=value, as for camlt train")
    p.add_argument("--resume", action="store_true", help="continue the run from its checkpoint")
    p.add_argument("--local", action="store_true", help="run here (submitit's local executor)")
    p.add_argument("--wait", action="store_true", help="follow the job to its end (--local does)")
    add_resource_arguments(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "tune", help="search a recipe's settings on its val split (Optuna; never the test split)"
    )
    p.add_argument("recipe", help="recipe file (configs/*.yaml); it needs a val split")
    p.add_argument("overrides", nargs="*", help="key=value for every trial, as for camlt train")
    p.add_argument(
        "--space",
        nargs="+",
        required=True,
        metavar="KEY=SPEC",
        help="searched keys: KEY=LOW:HIGH[:log|:int] or KEY=A,B,C, or a YAML file of them",
    )
    p.add_argument("--trials", type=int, default=20, help="trials to run now (default 20)")
    p.add_argument(
        "--out",
        default="runs/tune",
        help="the search's folder: tune.db, the trials' runs, best.yaml",
    )
    p.add_argument("--study", default="camlt", help="the study's name in tune.db")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument(
        "--no-prune", action="store_true", help="run every trial to its end (no median pruning)"
    )
    p.add_argument("--workers", type=int, default=1, help="processes or jobs sharing the trials")
    p.add_argument(
        "--cluster",
        choices=("local", "slurm"),
        help="run the workers as submitit jobs (default: in this process, one after another)",
    )
    add_resource_arguments(p, tasks=False)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("eval", help="evaluate a run directory or checkpoint on the test split")
    p.add_argument("target", help="run directory or checkpoint file")
    p.add_argument(
        "overrides", nargs="*", help="where the data lives now, e.g. data.root=DIR (eval-free keys)"
    )
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="the split to evaluate (val: the run's own, or data.val_per_class=N)",
    )
    p.add_argument(
        "--test-prior",
        action="append",
        metavar="NAME",
        help="also evaluate on a shifted test set drawn from the balanced one: forward50, "
        "forward25, forward10, forward5, forward2, uniform, backward2 .. backward50, or all",
    )
    p.add_argument("--out", help="where to write the metrics JSON (default RUN_DIR/eval.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "calibrate", help="fit post-hoc tau and a temperature on the val split; kept in the run"
    )
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("overrides", nargs="*", help="e.g. data.val_per_class=200 (benchmarks)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "adapt",
        help="learn a multi-expert run's expert weights from unlabelled images (test-time "
        "aggregation); kept in the run",
    )
    p.add_argument("run_dir", help="the run directory (trained with model.experts > 1)")
    p.add_argument("overrides", nargs="*", help="e.g. data.root=DIR (where the data lives now)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--test", action="store_true", help="the run's test split, its labels unread"
    )
    source.add_argument(
        "--images", nargs="+", metavar="PATH", help="image files, folders or globs to adapt to"
    )
    p.add_argument("--seed", type=int, default=0, help="the augmented views' random draw")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("export", help="the model as ONNX or TorchScript, for serving")
    p.add_argument("run_dir", help="run directory or checkpoint file")
    p.add_argument(
        "--format",
        choices=("onnx", "torchscript"),
        default="onnx",
        help="onnx (onnxruntime, any language) or torchscript (PyTorch without camlt)",
    )
    p.add_argument("--out", help="the file to write (default RUN_DIR/model.onnx or model.pt)")
    p.add_argument("--prior", help="bake in a deployment prior: train, uniform or a prior file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_export)

    add_inspection_commands(sub)  # predict, cam, report

    data = sub.add_parser("data", help="inspect datasets").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser("stats", help="class counts and shot groups of a config's training set")
    p.add_argument("config", help="recipe file (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value, as for camlt train")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_data_stats)
    add_data_check(data)
    return parser


def cmd_data_check(args: argparse.Namespace) -> int:
    from camlt.data.check import check, format_report

    report = check(
        args.path,
        args.image_root,
        args.decode,
        args.workers,
        args.path_map,
        args.allow_outside_root,
        args.against or (),
    )
    print(json.dumps(report, indent=1) if args.json else format_report(report, args.per_class))
    bad = report["missing"] + report["corrupt"] + report["outside_root"]
    unsafe = len(report["leaks"]) + len(report["conflicts"]) + len(report["lookalike_classes"])
    if args.strict and (bad or unsafe):
        print(
            f"camlt: error: {bad} missing, undecodable or outside-the-root images; {unsafe} "
            "leaks, label conflicts or look-alike class names (--strict)",
            file=sys.stderr,
        )
        return 1
    return 0


def add_data_check(data: argparse._SubParsersAction) -> None:
    p = data.add_parser(
        "check", help="classes, counts, shot groups, missing and undecodable images of a list"
    )
    p.add_argument("path", help="a split file (path label lines), a CSV (path,label) or a folder")
    p.add_argument("--image-root", help="folder the paths are relative to: stat every file")
    p.add_argument("--decode", action="store_true", help="also open every image (slower)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode processes")
    p.add_argument("--path-map", default="auto", help="auto | exact | suffix | OLD->NEW")
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read paths that climb out of the image root with '..' (refused by default)",
    )
    p.add_argument(
        "--against",
        nargs="+",
        metavar="LIST",
        help="other split files or CSVs (e.g. the test split): report images of theirs that "
        "are byte-identical to this list's (a leak)",
    )
    p.add_argument("--per-class", action="store_true", help="print every class's count")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 on missing or undecodable images, leaks, conflicts or look-alike classes",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_data_check)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BrokenPipeError:  # `camlt predict ... | head` closed the pipe: nothing more is wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except EXPECTED_ERRORS as err:
        if os.environ.get("CAMLT_DEBUG"):
            raise
        shown = "\n".join(printable(line) for line in str(err).splitlines())
        print(f"camlt: error: {shown}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("camlt: interrupted; the last complete checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
