"""The training loop: build a run from its config, then the step and the epoch, evaluated as it goes.

One plain loop (after torchvision's reference ``train.py``): the method lives in the head (and
its loss rule in ``HeadOutput.loss``), the re-weighting in the loss, the class-aware sampling in
the loader. Anything that changes with the epoch (DRW, progressive sampling, LP-FT) exposes
``set_epoch`` and is called at the start of each epoch. The run's life on disk (directory,
checkpoint, resume, RNG) is ``camlt.lifecycle``'s; opening a finished run to evaluate or use it is
``camlt.trained``'s; what is refused before anything starts is ``camlt.preflight``'s.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from camlt import distributed, probe
from camlt.checkpoint import (
    RunLock,
    append_jsonl,
    atomic_write_json,
    load_checkpoint,
    read_jsonl,
    save_checkpoint,
)
from camlt.data import BatchLoader, TensorImageSet, build_loaders
from camlt.data.loaders import unaugmented_train_loader
from camlt.data.samplers import build_sampler
from camlt.distributed import resolve_device
from camlt.errors import UsageError, UserError
from camlt.finetune import FineTune
from camlt.heads import logit_scale
from camlt.heads.base import NoWeightDecay
from camlt.lifecycle import (
    abandon_fresh_dir,
    checkpoint_state,
    claim_run_dir,
    prepare_run_dir,
    resume_or_start,
    write_run_notes,
    write_start_files,
)
from camlt.losses import MixedTargets, Targets, build_loss, posthoc_adjust
from camlt.metrics import evaluate_predictions, format_table
from camlt.mixing import MIX_FUNCTIONS, BatchMixer, MixSettings
from camlt.models import LongTailClassifier, build_model
from camlt.preflight import check_run, warnings_of
from camlt.registry import Describes, EpochAware
from camlt.regularize import MaxNorm, build_maxnorm
from camlt.rundir import (
    BEST_CHECKPOINT,
    CHECKPOINT,
    CONFIG_FILE,
    FINAL_FILE,
    METRICS_FILE,
)
from camlt.sam import SharpnessAware, imbsam_gradients, sam_gradients, tail_classes
from camlt.stage2 import adapt_model
from camlt.tblog import open_logger
from camlt.trained import loader_logits


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------- setup helpers
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively; on AVX2-only CPUs bf16 autocast is ~10x slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 where the hardware has it, fp16 on older GPUs, else fp32 (None)."""
    if setting == "off":
        return None
    if setting in ("fp16", "bf16"):
        return torch.float16 if setting == "fp16" else torch.bfloat16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """What ``train.amp=auto`` resolved to, for results that must say how they were computed."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # NaN-filling every new tensor costs ~8% of a CPU step and changes no result
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False


def no_decay_names(model: torch.nn.Module) -> set[str]:
    """The parameters that modules declare free of weight decay (``no_weight_decay()``)."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, NoWeightDecay):
            names |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    return names


def build_optimizer(model: torch.nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """SGD with momentum; weight decay on every trained parameter but those declared free of it;
    the backbone at ``train.backbone_lr`` times the rate (its own groups only when it differs,
    so a checkpoint's optimiser state keeps fitting)."""
    free = no_decay_names(model)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    split = OmegaConf.select(cfg, "backbone_lr", default=1.0) != 1.0
    groups = []
    for in_backbone in (True, False) if split else (None,):
        part = [
            (n, p)
            for n, p in trained
            if in_backbone is None or n.startswith("backbone.") == in_backbone
        ]
        lr = cfg.lr * (cfg.backbone_lr if in_backbone else 1.0)
        for decay in (True, False):
            params = [p for n, p in part if (n not in free) == decay]
            if params or (decay and not groups):
                groups.append(
                    {"params": params, "lr": lr, "weight_decay": cfg.weight_decay * decay}
                )
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_factor(step: int, steps_per_epoch: int, cfg: DictConfig) -> float:
    """Linear warm-up over ``warmup_epochs`` (per step, or per epoch with ``warmup=epoch``), then
    multistep or cosine decay (per step)."""
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        if OmegaConf.select(cfg, "warmup", default="step") == "epoch":
            return (step // steps_per_epoch + 1) / cfg.warmup_epochs
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        total = max(1, cfg.epochs * steps_per_epoch - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / total)))
    epoch = step // steps_per_epoch
    return cfg.lr_decay ** sum(epoch >= m for m in cfg.milestones)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, cfg)
    )


def call_epoch_hooks(epoch: int, *objects: object) -> None:
    """Tell every epoch-dependent part (loss, sampler, head) which epoch starts."""
    for obj in objects:
        if isinstance(obj, EpochAware):
            obj.set_epoch(epoch)


# ----------------------------------------------------------------------------- the run
@dataclass
class Run:
    """Everything a training run holds, built from one resolved config."""

    cfg: DictConfig
    run_dir: Path
    device: torch.device
    model: LongTailClassifier
    train_set: TensorImageSet
    test_set: TensorImageSet
    train_loader: BatchLoader
    test_loader: BatchLoader
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    start_epoch: int = 0
    val_loader: object | None = None  # selects best.pt where the data has a val split
    dist: distributed.DistInfo = field(default_factory=distributed.DistInfo)
    ddp: torch.nn.Module | None = None  # the DDP wrapper that training steps go through
    compiled: torch.nn.Module | None = None  # train.compile: what training steps go through
    label_map: dict | None = None  # class index -> original label (data.labels=remap)
    mixer: BatchMixer | None = None  # train.mix
    maxnorm: MaxNorm | None = None  # train.maxnorm
    sam: SharpnessAware | None = None  # train.sam
    sam_tail: torch.Tensor | None = None  # train.sam=imbsam: (K,) bool, the tail classes
    data_check: dict | None = None  # camlt.data.leaks' findings (file data)
    finetune: FineTune | None = None  # model.finetune other than full: which weights train
    run_id: str | None = None  # the run directory's marker's: ties a checkpoint to its run
    head_only: torch.nn.Module | None = None  # a cached probe's steps (camlt.probe)

    @property
    def train_counts(self) -> list[int]:
        return self.train_set.class_counts()


def compile_for_training(module: torch.nn.Module, mode: str) -> torch.nn.Module | None:
    """The training step's compiled module (sharing ``module``'s weights), or None when off.

    Compilation happens at the first step. Training batches all have one shape (the loader drops
    the last partial batch), so shapes are static, as CUDA graphs need; a graph break (e.g. CAMC's
    prototype warm-up test) falls back to eager for that part.
    """
    if mode == "off":
        return None
    return torch.compile(module, mode=None if mode == "default" else mode, dynamic=False)


def build_run(cfg: DictConfig, run_dir: Path) -> Run:
    """Data, model, loss and optimiser for a config; nothing is trained yet."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    dist = distributed.setup(resolve_device(cfg.train.device))
    device = distributed.local_device(resolve_device(cfg.train.device), dist)
    data = build_loaders(
        cfg,
        dist.rank,
        dist.world,
        device,
        lambda train_set: build_sampler(
            cfg.data.sampler, train_set.labels, cfg.train.epochs, train_set.num_classes
        ),
    )
    train_set, test_set = data.train_set, data.test_set
    counts = train_set.class_counts()
    model = build_model(cfg.model, train_set.num_classes, data.in_channels, counts)
    note = getattr(model.backbone, "pretrained_note", None)
    if note and dist.is_main and not cfg.model.init_from:
        print(note, flush=True)
    model = adapt_model(model, cfg, train_set.num_classes)  # stage 2: frozen backbone (no-op else)
    memory = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory)
    model = distributed.sync_batchnorm(model, dist, cfg.train.sync_bn, device)
    tuning = fine_tuning(cfg, model, dist)
    train_loader, val_loader, test_loader = data.train, data.val, data.test
    dtype = amp_dtype(cfg.train.amp, device)
    head_only = None
    if probe.uses_cache(cfg, dist.world):
        tuning.set_epoch(0)  # the backbone frozen, its batch norms in eval mode
        plain = unaugmented_train_loader(cfg, data, device)
        sampler = getattr(data.train, "sampler", None)
        train_loader, val_loader, test_loader = probe.cached_loaders(
            cfg, model, plain, data.val, data.test, sampler, device, dtype
        )
        head_only = probe.HeadOnly(model)
    optimizer = build_optimizer(model, cfg.train)
    for group in optimizer.param_groups:  # train.lr_scaling (distributed.effective_lr)
        group["lr"] *= distributed.effective_lr(cfg.train) / cfg.train.lr
    if tuning is not None:
        tuning.set_epoch(0)
    ddp = distributed.wrap(model, dist, device)
    return Run(
        cfg=cfg,
        run_dir=run_dir,
        device=device,
        model=model,
        train_set=train_set,
        test_set=test_set,
        train_loader=train_loader,
        test_loader=test_loader,
        criterion=build_loss(cfg.loss, counts, logit_scale(cfg.model), cfg.model.experts).to(
            device
        ),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.train, len(train_loader)),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        dtype=dtype,
        val_loader=val_loader,
        dist=dist,
        ddp=ddp,
        compiled=compile_for_training(ddp or model, cfg.train.compile),
        label_map=data.label_map,
        data_check=data.check,
        finetune=tuning,
        mixer=build_mixer(cfg.train, counts),
        maxnorm=build_maxnorm(model.head, cfg.train.maxnorm, cfg.train.maxnorm_threshold),
        sam=build_sam(model, cfg.train, dtype),
        sam_tail=sam_tail(cfg.train, counts, device, dist.world),
        head_only=head_only,
    )


def fine_tuning(
    cfg: DictConfig, model: LongTailClassifier, dist: distributed.DistInfo
) -> FineTune | None:
    """model.finetune's part. The optimiser is built before it freezes anything (LP-FT's
    backbone joins later), and it freezes before DDP wraps the model: DDP fixes which weights
    train when it wraps them, so a change mid-run (LP-FT) is single-process."""
    if cfg.model.finetune == "full":
        return None
    tuning = FineTune(model.backbone, cfg.model.finetune)
    if tuning.changes and dist.distributed:
        raise UsageError(
            f"model.finetune={cfg.model.finetune} changes which weights train mid-run, which "
            "DistributedDataParallel cannot follow: train it in one process"
        )
    return tuning


def build_sam(
    model: torch.nn.Module, cfg: DictConfig, dtype: torch.dtype | None
) -> SharpnessAware | None:
    """The ascent of ``train.sam`` over the trained parameters, or None when off."""
    if cfg.sam == "off":
        return None
    if dtype == torch.float16:
        raise UsageError(
            f"train.sam={cfg.sam} trains without a loss scaler, and train.amp={cfg.amp} picked "
            "fp16 here: pass train.amp=bf16 or off"
        )
    return SharpnessAware(list(model.parameters()), cfg.sam_rho)


def sam_tail(
    cfg: DictConfig, counts: list[int], device: torch.device, world: int
) -> torch.Tensor | None:
    """ImbSAM's tail classes; refused when no class is that rare (nothing would get SAM)."""
    if cfg.sam != "imbsam":
        return None
    if world > 1:  # two gradients from one forward pass: DDP reduces once per forward
        raise UsageError(
            "train.sam=imbsam runs in one process only (DDP reduces one gradient per forward "
            "pass, ImbSAM takes two); train.sam=sam works under torchrun"
        )
    tail = tail_classes(counts, cfg.sam_tail_max)
    if not tail.any():
        raise UsageError(
            f"train.sam=imbsam: no class has at most train.sam_tail_max={cfg.sam_tail_max} "
            f"training images (the rarest has {min(counts)}); raise train.sam_tail_max"
        )
    return tail.to(device)


def build_mixer(cfg: DictConfig, counts: list[int]) -> BatchMixer | None:
    """The batch mixing of ``train.mix``, or None when off."""
    if cfg.mix == "none":
        return None
    given = cfg.get(cfg.mix)  # the mix's own settings, under its name (train.remix)
    own = MIX_FUNCTIONS.settings(cfg.mix, OmegaConf.to_container(given) if given else None)
    settings = MixSettings(cfg.mix, cfg.mix_alpha, cfg.mix_prob, cfg.mix_stop_epoch, own)
    return BatchMixer(settings, counts, cfg.seed)


def autocast(run: Run):
    if run.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(run.device.type, dtype=run.dtype)


def step_module(run: Run) -> torch.nn.Module:
    """What a training step calls: the head alone on cached features (a probe), else the
    compiled module, else the DDP wrapper, else the model."""
    for module in (run.head_only, run.compiled, run.ddp):
        if module is not None:  # not ``or``: a compiled module refuses bool() (len)
            return module
    return run.model


def compute_loss(run: Run, images: torch.Tensor, labels: Targets) -> torch.Tensor:
    """The head's loss: the criterion on its logits, plus its weighted auxiliary term if any.

    With mixed targets the head is given each image's larger-weight label (CAMC's guide and
    prototypes take one label per image); both losses mix the two labels.
    """
    head_labels = labels.major() if isinstance(labels, MixedTargets) else labels
    with autocast(run):
        out = step_module(run)(images, head_labels)
    return out.loss(labels, run.criterion)


def split_loss(
    run: Run, images: torch.Tensor, labels: Targets, tail: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ImbSAM's two parts of ``compute_loss`` from one forward pass: the head classes' and the
    tail classes' losses, each weighted by its share of the batch (a mixed image counts where
    its larger-weight label is)."""
    head_labels = labels.major() if isinstance(labels, MixedTargets) else labels
    with autocast(run):
        out = step_module(run)(images, head_labels)
    parts = []
    for members in (~tail[head_labels], tail[head_labels]):
        idx = members.nonzero().flatten()
        if len(idx) == 0:
            parts.append(out.logits.sum() * 0.0)  # keeps the graph: every parameter gets a grad
            continue
        loss = out.loss(select(labels, idx), run.criterion, rows=idx)
        parts.append(loss * (len(idx) / len(head_labels)))
    return parts[0], parts[1]


def select(labels: Targets, idx: torch.Tensor) -> Targets:
    """The targets of some images of the batch."""
    if isinstance(labels, MixedTargets):
        return MixedTargets(labels.a[idx], labels.b[idx], labels.lam[idx])
    return labels[idx]


def sam_step(run: Run, images: torch.Tensor, labels: Targets, check) -> torch.Tensor:
    """SAM's or ImbSAM's gradients of one batch in ``.grad``, the weights back at ``w``; returns
    the loss at ``w``. ``check`` refuses a non-finite loss before anything moves."""
    run.optimizer.zero_grad(set_to_none=True)
    if run.sam_tail is None:
        return sam_gradients(run.sam, run.model, partial(compute_loss, run, images, labels), check)
    parts_at = partial(split_loss, run, images, labels, run.sam_tail)
    return imbsam_gradients(run.sam, run.model, parts_at, check)


def _kept(run: Run, epoch: int) -> str:
    """What a diverged run leaves behind, for its error message."""
    if epoch:
        return f"the last good checkpoint (end of epoch {epoch}) is kept in {run.run_dir}"
    return "no checkpoint had been written yet"


def check_finite_weights(run: Run, epoch: int) -> None:
    """Refuse to checkpoint non-finite weights (a last step can blow up after its finite loss)."""
    bad = [
        name
        for name, value in run.model.state_dict().items()
        if value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if bad:
        raise TrainingDiverged(
            f"epoch {epoch + 1}, after step {len(run.train_loader)}: non-finite weights in "
            f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; {_kept(run, epoch)}"
        )


def train_step(
    run: Run, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int
) -> torch.Tensor:
    """One optimiser step on a batch (mixed, sharpness-aware, norm-capped as configured), before
    the scheduler's; returns the batch's loss. Refuses a non-finite loss before anything moves."""
    images, labels = images.to(run.device, non_blocking=True), labels.to(run.device)
    targets = run.mixer(images, labels, epoch, step) if run.mixer else (images, labels)

    def check(loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"epoch {epoch + 1}, step {step + 1}: loss is {loss.item()}; {_kept(run, epoch)}"
            )

    if run.sam is not None:
        loss = sam_step(run, *targets, check)
        run.optimizer.step()
    else:
        loss = compute_loss(run, *targets)
        check(loss)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    if run.maxnorm is not None:
        run.maxnorm.after_step()
    return loss


def train_one_epoch(run: Run, epoch: int) -> dict:
    """One pass over the training loader; stops at once if the loss stops being finite."""
    run.model.train()
    call_epoch_hooks(epoch, run.train_loader, run.criterion, run.model.head, run.finetune)
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(
        run.train_loader,
        desc=f"epoch {epoch + 1}/{run.cfg.train.epochs}",
        unit="batch",
        disable=not (run.cfg.train.progress and run.dist.is_main),
        leave=False,
        dynamic_ncols=True,
    )
    for step, (images, labels) in enumerate(bar):
        loss = train_step(run, images, labels, epoch, step)
        run.scheduler.step()
        total_loss += loss.item() * len(labels)
        seen += len(labels)
        rate = seen / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", img_s=f"{rate:.0f}")
    seconds = time.perf_counter() - start
    total_loss, seen = distributed.sum_across([total_loss, seen], run.dist)
    return {"loss": total_loss / max(seen, 1), "images_per_s": seen / seconds, "epoch_s": seconds}


def evaluate(run: Run, loader: object | None = None) -> dict:
    """Metrics on the test split (or ``loader``), gathered over every process."""
    model = run.head_only or run.model  # a cached probe's loaders hold feature maps
    logits, labels = loader_logits(model, loader or run.test_loader, run.device, run.dtype)
    logits, labels = (
        distributed.gather_cat(logits, run.dist),
        distributed.gather_cat(labels, run.dist),
    )
    logits = posthoc_adjust(logits, run.train_counts, run.cfg.loss.posthoc_tau)
    metrics = evaluate_predictions(logits, labels, run.train_counts)
    if isinstance(run.model.head, Describes):  # e.g. tau-norm states its tau
        metrics.update(run.model.head.describe())
    return metrics


# ----------------------------------------------------------------------------- entry points
ValHook = Callable[[int, dict], None]  # (epoch, val metrics): a search's pruning (camlt.tune)


def train(
    cfg: DictConfig, run_dir: str | Path, resume: bool = False, on_val: ValHook | None = None
) -> dict:
    """Train (or continue) the run in ``run_dir``; returns the final test metrics.

    Under torchrun every process trains its shard; only rank 0 touches the run directory.
    ``on_val`` is told each val evaluation; an exception it raises stops the run there.
    """
    dist = distributed.setup(resolve_device(cfg.train.device))
    try:
        return _train(cfg, Path(run_dir), resume, dist, on_val)
    finally:
        distributed.cleanup(dist)


def _train(
    cfg: DictConfig,
    run_dir: Path,
    resume: bool,
    dist: distributed.DistInfo,
    on_val: ValHook | None = None,
) -> dict:
    check_run(cfg)  # every name and data key, before the directory or any data file is touched
    main = dist.is_main  # rank 0 alone writes the directory; the others would see its first files
    for warning in warnings_of(cfg) if main else ():
        print(f"camlt: warning: {warning}", file=sys.stderr, flush=True)
    fresh = claim_run_dir(cfg, run_dir, main)
    try:
        with RunLock(run_dir) if main else contextlib.nullcontext():  # a second run is told
            if main:
                prepare_run_dir(cfg, run_dir, resume)
            resume = resume and (run_dir / CONFIG_FILE).is_file()
            distributed.barrier(dist)  # every rank saw the same config.yaml (or none)
            if main:
                write_start_files(cfg, run_dir, resume)
            run = build_run(cfg, run_dir)
            if main:
                write_run_notes(run)
            resume_or_start(run, resume, main)
            distributed.barrier(dist)
            return fit(run, on_val)
    except BaseException:
        if main and fresh:
            abandon_fresh_dir(run_dir)  # a refused start leaves no folder behind
        raise


def select_on_val(run: Run, epoch: int, record: dict, best: float) -> float:
    """Evaluate the val split; keep best.pt when its top-1 beats ``best`` (never the test split)."""
    val = evaluate(run, run.val_loader)
    record["val"] = val
    if val["overall"] <= best:
        return best
    if run.dist.is_main:
        save_checkpoint(run.run_dir / BEST_CHECKPOINT, checkpoint_state(run, epoch + 1))
    return val["overall"]


def selected_test_metrics(run: Run) -> dict:
    """Test metrics of the val-selected weights (best.pt), after training."""
    distributed.barrier(run.dist)  # rank 0 has finished writing best.pt
    state = load_checkpoint(run.run_dir / BEST_CHECKPOINT)
    run.model.load_state_dict(state["model"])
    return {"epoch": state["epoch"], "test": evaluate(run)}


def fit(run: Run, on_val: ValHook | None = None) -> dict:
    """Epochs from ``run.start_epoch``: train, evaluate, log a JSONL line, checkpoint."""
    epochs = run.cfg.train.epochs
    metrics: dict = {}
    main = run.dist.is_main  # only rank 0 writes files and prints
    history = read_jsonl(run.run_dir / METRICS_FILE)
    best_val = max((r["val"]["overall"] for r in history if "val" in r), default=-1.0)
    tb = open_logger(run, enabled=main)  # TensorBoard when train.tensorboard, else a no-op
    if run.maxnorm is not None:
        run.maxnorm.start()  # the rule's threshold, from the weights training starts from
    for epoch in range(run.start_epoch, epochs):
        record = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"]}
        record.update(train_one_epoch(run, epoch))
        if run.maxnorm is not None:
            run.maxnorm.after_epoch()
        check_finite_weights(run, epoch)
        last = epoch + 1 == epochs
        if last or (epoch + 1) % run.cfg.train.eval_every == 0:
            if run.val_loader is not None:
                best_val = select_on_val(run, epoch, record, best_val)
                if on_val is not None:
                    on_val(epoch + 1, record["val"])
            metrics = evaluate(run)
            record["test"] = metrics
        if main:
            append_jsonl(run.run_dir / METRICS_FILE, record)
            save_checkpoint(run.run_dir / CHECKPOINT, checkpoint_state(run, epoch + 1))
            tb.log_epoch(record, run)
        run.start_epoch = epoch + 1
        summary = f"epoch {epoch + 1}/{epochs} loss {record['loss']:.4f} {record['images_per_s']:.0f} img/s"
        if "val" in record:
            summary += f" | val top-1 {100 * record['val']['overall']:.2f}"
        if "test" in record:
            summary += f" | test top-1 {100 * metrics['overall']:.2f} tail {100 * (metrics['tail'] or 0):.2f}"
        if main:
            print(summary, flush=True)
    tb.close()
    # train.epochs=0 (tau-norm, post-hoc stage 2) still leaves a checkpoint to evaluate
    if main and not (run.run_dir / CHECKPOINT).exists():
        save_checkpoint(run.run_dir / CHECKPOINT, checkpoint_state(run, epochs))
    if not metrics:  # resumed after the last epoch: evaluate the final model
        metrics = evaluate(run)
    final = {
        "metrics": metrics,
        "classes": run.train_set.classes,
        "train_counts": run.train_counts,
        "epochs": epochs,
        "precision": precision_name(run.dtype),
        "config": OmegaConf.to_container(run.cfg),
    }
    if run.val_loader is not None and best_val >= 0:
        final["selected_on_val"] = {"val_overall": best_val, **selected_test_metrics(run)}
    if main:
        atomic_write_json(run.run_dir / FINAL_FILE, final)
        print(format_table(metrics, run.train_set.classes, run.train_counts), flush=True)
    return metrics
