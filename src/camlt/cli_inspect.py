"""The ``predict``, ``cam`` and ``report`` subcommands: using and inspecting a trained run.

Kept apart from ``camlt.cli`` so that the training commands never import matplotlib or PIL.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from camlt.errors import UsageError, printable
from camlt.rundir import claim_out_dir


def _require_matplotlib() -> None:
    """Name the missing optional dependency instead of failing mid-way with an ImportError."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "this command draws with matplotlib, which is not installed: "
            "pip install 'camlt[viz]' (or pip install matplotlib)"
        ) from None


def _warn(message: str) -> None:
    print(printable(f"camlt: skipped {message}"), file=sys.stderr)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a batch size of 0 or -1 is a typo)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _load(args: argparse.Namespace):
    from camlt.trained import open_run

    loaded = open_run(args.checkpoint, device=args.device)
    if getattr(args, "max_pixels", None):
        loaded.spec = dataclasses.replace(loaded.spec, max_pixels=args.max_pixels)
    for warning in loaded.warnings:
        print(printable(f"camlt: warning: {warning}"), file=sys.stderr)
    return loaded


def _images(items: list[str]) -> tuple[list[Path], int]:
    """Image paths of the arguments, and how many arguments matched nothing (named on stderr)."""
    from camlt.predict import collect_images

    paths, missing = collect_images(items)
    for item, reason in missing:
        _warn(f"{item}: {reason}")
    if not paths:
        raise FileNotFoundError("no image to read among: " + " ".join(items))
    return paths, len(missing)


def cmd_predict(args: argparse.Namespace) -> int:
    from camlt.predict import format_predictions, predict_files
    from camlt.priors import parse_prior

    loaded = _load(args)
    loaded.prior = parse_prior(args.prior, loaded.classes, loaded.train_counts)
    if loaded.prior is not None and loaded.tau == 0 and loaded.cfg.loss.name in ("ce", "focal"):
        print(
            "camlt: warning: --prior assumes scores for a uniform prior, and this run's "
            f"(loss.name={loaded.cfg.loss.name}, no fitted tau) still carry the training prior: "
            "run camlt calibrate first",
            file=sys.stderr,
        )
    paths, missing = _images(args.images)
    results = predict_files(loaded, paths, args.topk, args.batch_size, _warn)
    print(format_predictions(results, args.format))
    return 0 if len(results) == len(paths) and not missing else 1  # 1: something was skipped


def cmd_cam(args: argparse.Namespace) -> int:
    from camlt.viz import write_cam_images

    _require_matplotlib()
    if not args.images and not args.test:
        raise UsageError("camlt cam: give image files, or --test N for the run's own test images")
    loaded = _load(args)
    if args.test:
        return _test_cams(loaded, args)
    paths, missing = _images(args.images)
    labels = [loaded.class_index(label) for label in args.label or []]
    if len(labels) not in (0, 1, len(paths)):
        raise UsageError(
            f"--label given {len(labels)} times for {len(paths)} images: give it once (for every "
            "image) or once per image, in order"
        )
    if len(labels) == 1:
        labels = labels * len(paths)
    claim_out_dir(Path(args.out), args.overwrite)
    written = write_cam_images(loaded, paths, args.out, labels or None, _warn)
    for path in written:
        print(path)
    return 0 if len(written) == len(paths) and not missing else 1


def _test_cams(loaded, args: argparse.Namespace) -> int:
    """``--test N``: maps of the run's own test images of its rarest classes, boxes drawn where
    the data set has them (the cluttered benchmark)."""
    from camlt.data import build_sets
    from camlt.viz import write_test_cams

    if args.images or args.label:
        raise UsageError("--test draws the run's own test images: give no images and no --label")
    test_set = build_sets(loaded.cfg, verbose=False).test
    claim_out_dir(Path(args.out), args.overwrite)
    for path in write_test_cams(loaded, test_set, args.test, args.out):
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from camlt.report import build_report

    _require_matplotlib()
    out = claim_out_dir(
        Path(args.out or Path(args.run_dir) / "report"), args.overwrite, not args.out
    )
    page = build_report(
        args.run_dir, args.baseline, out, device=args.device, cam_images=args.cam_images
    )
    print(f"wrote {page}")
    return 0


def _device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if present"
    )


def _overwrite_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --out folder that holds files camlt did not write",
    )


def _max_pixels_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        help="refuse images of more pixels, before decoding (default: the run's data.max_pixels)",
    )


def add_inspection_commands(sub) -> None:
    """Register predict, cam and report on the ``camlt`` subcommand parser."""
    p = sub.add_parser("predict", help="top-k classes of image files with a trained model")
    p.add_argument("checkpoint", help="run directory or checkpoint file")
    p.add_argument("images", nargs="+", help="image files, folders (recursive) or globs")
    p.add_argument("--topk", type=positive_int, default=5, help="classes per image (default 5)")
    p.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="table: aligned, one line an image; csv: one row an image and rank; json",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=256, help="images a forward pass (default 256)"
    )
    p.add_argument(
        "--prior",
        default="uniform",
        help="class frequencies expected where the model is used: uniform (default), train (as "
        "in training), or a file (JSON list or {class: number}, or one number a class a line)",
    )
    _max_pixels_option(p)
    _device_option(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("cam", help="PNG of each image with its class activation maps overlaid")
    p.add_argument("checkpoint", help="run directory or checkpoint file")
    p.add_argument("images", nargs="*", help="image files, folders (recursive) or globs")
    p.add_argument("--out", required=True, help="directory for the PNG files")
    _overwrite_option(p)
    p.add_argument(
        "--test",
        type=positive_int,
        metavar="N",
        help="instead of files: N of the run's test images, rarest classes first, with the "
        "object's box and each map's share inside it where the data set has boxes",
    )
    p.add_argument(
        "--label",
        action="append",
        help="true class (name or index): once for every image, or once per image in order",
    )
    _max_pixels_option(p)
    _device_option(p)
    p.set_defaults(func=cmd_cam)

    p = sub.add_parser("report", help="HTML report of a run: curves, per-class accuracy, CAMs")
    p.add_argument("run_dir", help="the run directory to report on")
    p.add_argument("--baseline", help="a second run directory to compare against")
    p.add_argument("--out", help="output directory (default RUN_DIR/report)")
    _overwrite_option(p)
    p.add_argument(
        "--cam-images", type=positive_int, default=8, help="tail-class test images in the grid"
    )
    _device_option(p)
    p.set_defaults(func=cmd_report)
