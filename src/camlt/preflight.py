"""Refuse a bad run before it touches anything.

``camlt.config`` checks what the schema alone can say (types, ranges, the fixed choices of a
setting). The names of parts (a loss, head, backbone, data set, sampler, stage-2 method, mix,
augmentation step) and each part's own settings (under its name: ``loss.focal.gamma``) are
checked here against the registries that own them, with what a part may go with, and the keys
a data set needs, before a run directory exists or a data file is read: a refused command
leaves nothing on disk. A newly registered part, and its settings, are valid at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from camlt import finetune
from camlt.config import ConfigError, LossConfig, ModelConfig, Stage2Config, TrainConfig
from camlt.data.augment import parse_augment
from camlt.data.loaders import DATA_SETS, check_data_config
from camlt.data.samplers import SAMPLERS
from camlt.errors import UsageError
from camlt.heads import HEADS, UNIT_NORM_HEADS, logit_scale
from camlt.losses import LOSSES, loss_settings
from camlt.mixing import MIX_FUNCTIONS
from camlt.models.pretrained import PACKAGED, PACKAGED_BACKBONE, weights_source
from camlt.models.registry import BACKBONES, list_backbones
from camlt.registry import Registry
from camlt.stage2 import ADAPTERS, NO_CLASS_WEIGHTS, TRAINS_NOTHING


def check_run(cfg: DictConfig) -> None:
    """Every check a training run needs before it starts; raises ConfigError or DataError.
    Completes each chosen part's settings with their defaults, so the saved config holds them."""
    check_names(cfg)
    check_settings(cfg)
    check_combinations(cfg)
    check_data_config(cfg)
    check_weights(cfg.model)


def check_weights(model: DictConfig) -> None:
    """``model.pretrained`` names something that exists, for a backbone it can fit."""
    weights = model.pretrained
    if weights == PACKAGED:
        if model.backbone != PACKAGED_BACKBONE:
            raise ConfigError(
                f"model.pretrained={PACKAGED}: the packaged weights are EfficientNet-Lite0's; "
                f"set model.backbone={PACKAGED_BACKBONE} (model.backbone is {model.backbone})"
            )
        weights_source(weights)  # the package is installed, or a clear UsageError
    elif weights and weights != "hub" and not Path(weights).expanduser().is_file():
        raise ConfigError(
            f"model.pretrained={weights}: no such file (a weights file, hub for timm's own, or "
            f"{PACKAGED} for camlt[pretrained]'s EfficientNet-Lite0)"
        )


def warnings_of(cfg: DictConfig) -> list[str]:
    """Settings that are valid but almost surely not meant: said at the start of training."""
    train, found = cfg.train, []
    late = [m for m in train.milestones if m >= train.epochs]
    if train.schedule == "multistep" and late and train.epochs > 0:
        found.append(
            f"train.milestones={list(train.milestones)}: {late} lie at or beyond the last epoch "
            f"(train.epochs={train.epochs}), so the learning rate never decays there; give "
            "milestones within the run or train.schedule=cosine"
        )
    return found


def _known(registry: Registry, value: str, extra: tuple[str, ...] = ()) -> None:
    if value in extra:
        return
    try:
        registry.factory(value)
    except UsageError as err:
        valid = ", ".join([*extra, *registry.names()])
        raise ConfigError(f"{registry.key}={value!r}: unknown; expected one of {valid}") from err


def check_names(cfg: DictConfig) -> None:
    """Each part the config names is registered."""
    _known(LOSSES, cfg.loss.name)
    _known(HEADS, cfg.model.head)
    _known(DATA_SETS, cfg.data.name)
    _known(SAMPLERS, cfg.data.sampler)
    _known(ADAPTERS, cfg.stage2.method, ("none",))
    _known(MIX_FUNCTIONS, cfg.train.mix, ("none",))
    backbone = cfg.model.backbone
    if not backbone.startswith("timm/") and backbone not in BACKBONES:
        raise ConfigError(
            f"model.backbone={backbone!r}: unknown; expected one of {', '.join(list_backbones())}"
        )
    parse_augment(cfg.data.augment)


def check_sections(
    node: DictConfig, name: str, common: list[str], registry: Registry, fill: Any = None
) -> None:
    """A section that holds parts' own settings under their names (loss, model, stage2, train): every
    other key names a part with settings and holds only its settings; the chosen part's
    (``name``) is completed with its defaults (``fill``, where given), the others left out."""
    section = registry.key.rsplit(".", 1)[0]
    parts = registry.with_settings()
    for key in [k for k in node if k not in common]:
        if key not in parts:
            raise ConfigError(
                f"{section}.{key}: not a setting; expected {', '.join(common)}, or a part's own "
                f"section: {', '.join(f'{section}.{p}.*' for p in parts)}"
            )
        value = node[key]
        if not isinstance(value, DictConfig):
            raise ConfigError(
                f"{section}.{key}={value!r}: a section of settings ({section}.{key}.NAME=...)"
            )
        try:
            registry.settings(key, OmegaConf.to_container(value))
        except UsageError as err:
            raise ConfigError(str(err)) from None
        if key != name:
            del node[key]  # validated, but not part of this run
    try:
        settings = fill() if fill else registry.settings(name, _own(node, name))
    except UsageError as err:
        raise ConfigError(str(err)) from None
    if settings is not None:
        node[name] = dataclasses.asdict(settings)


def _own(node: DictConfig, name: str) -> dict | None:
    value = node.get(name)
    return OmegaConf.to_container(value) if isinstance(value, DictConfig) else None


def check_settings(cfg: DictConfig) -> None:
    """The loss's, the head's, the stage-2 method's and the mix's own settings (camlt.losses,
    camlt.heads, camlt.stage2, camlt.mixing), checked and completed (LDAM's scale with the
    head's)."""
    loss_common = [f.name for f in dataclasses.fields(LossConfig)]
    check_sections(
        cfg.loss,
        cfg.loss.name,
        loss_common,
        LOSSES,
        lambda: loss_settings(cfg.loss, logit_scale(cfg.model), cfg.model.experts),
    )
    model_common = [f.name for f in dataclasses.fields(ModelConfig)]
    check_sections(cfg.model, cfg.model.head, model_common, HEADS)
    stage2_common = [f.name for f in dataclasses.fields(Stage2Config)]
    check_sections(cfg.stage2, cfg.stage2.method, stage2_common, ADAPTERS)
    train_common = [f.name for f in dataclasses.fields(TrainConfig)]
    check_sections(cfg.train, cfg.train.mix, train_common, MIX_FUNCTIONS)


def check_experts(cfg: DictConfig) -> None:
    """What a multi-expert model does not go with (yet): a second stage or partial fine-tuning
    (both act on one backbone and one classifier), MaxNorm (one classifier's norms)."""
    experts = cfg.model.experts
    if experts == 1:
        if cfg.loss.diversity:
            raise ConfigError(
                f"loss.diversity={cfg.loss.diversity}: a term between experts; set model.experts"
            )
        return
    for key, value, alone in (
        ("stage2.method", cfg.stage2.method, "none"),
        ("model.finetune", cfg.model.finetune, "full"),
        ("train.maxnorm", cfg.train.maxnorm, "off"),
    ):
        if value != alone:
            raise ConfigError(
                f"{key}={value} with model.experts={experts}: works on a single model's "
                f"backbone and classifier; leave {key}={alone}, or model.experts=1"
            )


def check_combinations(cfg: DictConfig) -> None:
    """What a stage-2 method, fine-tuning or MaxNorm needs of the rest of the run."""
    method, train = cfg.stage2.method, cfg.train
    try:
        finetune.check(cfg.model.finetune)
    except UsageError as err:
        raise ConfigError(str(err)) from None
    if cfg.model.finetune != "full" and method != "none":
        raise ConfigError(
            f"model.finetune={cfg.model.finetune} with stage2.method={method}: stage 2 freezes "
            "the backbone itself; leave model.finetune=full"
        )
    check_experts(cfg)
    if train.epochs < 1 and method not in TRAINS_NOTHING:
        raise ConfigError(
            f"train.epochs={train.epochs}: must be >= 1 (0 only for stage2.method="
            f"{' or '.join(TRAINS_NOTHING)}, which train nothing)"
        )
    if train.maxnorm == "off":
        return
    if method in NO_CLASS_WEIGHTS:
        raise ConfigError(
            f"train.maxnorm={train.maxnorm} with stage2.method={method}: this stage trains no "
            "class weight vectors; MaxNorm needs a trained linear classifier"
        )
    if cfg.model.head in UNIT_NORM_HEADS:
        raise ConfigError(
            f"train.maxnorm={train.maxnorm} with model.head={cfg.model.head}: its class vectors "
            "are normalised to unit length in the forward, so a norm bound changes nothing; use "
            "model.head=linear, or train.maxnorm=off"
        )
