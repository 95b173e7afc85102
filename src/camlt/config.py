"""Typed run configuration: YAML recipes in ``configs/`` plus dotted command-line overrides.

The schema below is the single list of valid keys; an unknown key or a wrong type is refused
with the key's name and the valid alternatives, before any data is read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import BooleanNode

from camlt.errors import UserError


class ConfigError(UserError, ValueError):
    """A recipe or override that does not fit the schema."""


@dataclass
class ClutterConfig:
    """data.name=fmnist_lt_clutter: the construction's sizes (camlt.data.clutter, docs/clutter.md)."""

    fragments: int = 4  # clutter pieces per image, 0..16
    fragment_size: int = 8  # their side, cropped from other images: 1..28
    min_size: int = 16  # the garment's side S is drawn from min_size..max_size, within 1..28
    max_size: int = 24


@dataclass
class DataConfig:
    name: str = "fmnist_lt"  # fmnist_lt | fmnist_lt_clutter | cifar10_lt | cifar100_lt
    root: str | None = None  # a directory holding the dataset files; searched first
    profile: str = "exp"  # exp | step
    imbalance: float = 100.0  # n_max / n_min; 1 keeps every class at n_max
    n_max: int | None = None  # per-class maximum; default: the dataset's balanced size
    balanced: bool = False  # the full balanced training set (the ceiling row)
    order: str = "standard"  # Fashion-MNIST class order: standard | hard
    split_seed: int = 0  # the seeded shuffle that picks each class's images
    download: bool = False  # let torchvision download when nothing is found locally
    sampler: str = "instance"  # instance | class | sqrt | progressive (camlt.data.samplers)
    # Image files (data/files.py): imagenet_lt | places_lt | inat2018 | split_files | image_folder | csv
    image_root: str | None = None  # where split-file / CSV paths point; default: data.root
    train_file: str | None = None  # split files, relative to data.root; default: the benchmark's
    val_file: str | None = None  # the split that selects the model (best.pt); never the test split
    test_file: str | None = None
    csv_file: str | None = None  # data.name=csv: rows path,label (integer or class name)
    path_map: str = (
        "auto"  # auto | exact | suffix | OLD->NEW (split-file prefixes, docs/datasets.md)
    )
    allow_outside_root: bool = False  # split-file paths with '..' above the image root: refused
    labels: str = "strict"  # strict: labels 0..K-1 all present | remap: renumber, table saved
    bad_images: str = "error"  # missing / undecodable images: error | skip (named and counted)
    # file data: an evaluation image that is also a training image, an image under two labels,
    # class names that print alike (camlt.data.leaks): error | warn (train, record) | off
    leaks: str = "error"
    max_pixels: int = 50_000_000  # an image claiming more pixels is refused before decoding
    # in-memory benchmarks: a balanced val split of this many images a class, drawn from the
    # training images the long-tailed subset leaves out (0: none); for camlt calibrate / eval
    val_per_class: int = 0
    val_fraction: float = 0.0  # image_folder / csv: seeded per-class split fractions
    test_fraction: float = 0.2
    subsample: bool = False  # image_folder / csv: cut the training split to profile/imbalance
    # training augmentation, '+'-joined steps (camlt.data.augment): none | crop_flip |
    # autoaugment | randaugment | trivialaugment | cutout | erasing; true/false mean crop_flip/none
    augment: str = "crop_flip"
    randaugment_ops: int = 2  # RandAugment's N
    randaugment_magnitude: int = 9  # RandAugment's M, 0..30
    cutout_size: int | None = None  # cutout's square side in pixels; default half the image side
    erasing_prob: float = 0.5  # random erasing's probability per image
    # in-memory benchmarks: the per-channel normalisation; default the dataset's own statistics
    # (a source's recipe may use others: LDAM-DRW's CIFAR std is 0.2023, 0.1994, 0.2010)
    mean: list[float] | None = None
    std: list[float] | None = None
    image_size: int = 224  # file datasets: crop size; evaluation resizes to resize_size first
    resize_size: int = 256
    clutter: ClutterConfig = field(default_factory=ClutterConfig)


@dataclass
class ModelConfig:
    backbone: str = "resnet32"
    head: str = (
        "normalized"  # linear | normalized | camc | proco; its settings under its name (model.camc)
    )
    scale: float = 16.0  # s of the normalized classifier
    learn_scale: bool = False
    # weights file (timm, torchvision, efficientnet_pytorch), hub, or packaged (camlt[pretrained])
    pretrained: str | None = None
    # which backbone weights train (camlt.finetune): full | bn_head | probe | last:N | lp_ft:K
    finetune: str = "full"
    # camlt: each backbone's own (CIFAR ResNets: kaiming normal, fan_out) and torch's defaults;
    # fan_in: kaiming normal (fan_in) on every conv and linear weight, as LDAM-DRW's CIFAR code
    init: str = "camlt"
    init_from: str | None = None  # a finished stage-1 run directory (with stage2.method)
    # N > 1: N experts share every backbone stage but the last; each has its own last stage and
    # head (camlt.models.experts), each its own loss (loss.name=balpoe | sade, or any loss)
    experts: int = 1
    # resize every input to this side inside the model (pretrained backbones: the size of their
    # pretraining, 224 for ImageNet weights; None: the data's own size)
    input_size: int | None = None


@dataclass
class LossConfig:
    """The loss by name, and what applies to any loss. A loss's own settings sit under its name
    (``loss.focal.gamma``, ``loss.cb.beta``): each loss declares them beside its class
    (camlt.losses), and camlt.preflight checks them and fills their defaults."""

    name: str = "ce"  # a registered loss: ce | focal | cb | ldam | balanced_softmax | logit_adjust
    drw_epoch: int | None = None  # deferred re-weighting from this 0-based epoch (None: off)
    drw_beta: float = 0.9999  # DRW: effective-number beta of the deferred weights
    posthoc_tau: float = 0.0  # test time: z - posthoc_tau * log prior (0: off)
    # model.experts > 1: RIDE's diversity term, each expert's KL to the experts' mean at this
    # temperature, subtracted with this weight (0: off; RIDE's CIFAR configs: 0.2)
    diversity: float = 0.0
    diversity_temperature: float = 1.0


# Settings once kept flat beside the key that names their part, now under the part's name:
# section -> (the key naming its part, {old key: ((part, key), ...)}). Old recipes, saved configs
# and checkpoints read as they always did. focal_gamma served cb's focal base too.
LEGACY_KEYS = {
    "loss": (
        "name",
        {
            "focal_gamma": (("focal", "gamma"), ("cb", "gamma")),
            "cb_beta": (("cb", "beta"),),
            "cb_base": (("cb", "base"),),
            "ldam_max_margin": (("ldam", "max_margin"),),
            "ldam_scale": (("ldam", "scale"),),
            "la_tau": (("logit_adjust", "tau"),),
        },
    ),
    "stage2": ("method", {"tau": (("taunorm", "tau"),), "tau_sweep": (("taunorm", "tau_sweep"),)}),
    "train": ("mix", {"remix_kappa": (("remix", "kappa"),), "remix_tau": (("remix", "tau"),)}),
}


def legacy_keys(tree: Any) -> Any:
    """A parsed recipe, override set or saved config with its flat settings moved under their
    part's name: only the named part's, where the tree names it (a saved config holds every flat
    key, and only its own part's settings belong to the run). A saved config also held
    ``model.camc`` whatever the head: only a CAMC head's is kept."""
    if not isinstance(tree, dict):
        return tree
    tree = dict(tree)
    model = tree.get("model")
    if isinstance(model, dict) and model.get("head") not in (None, "camc") and "camc" in model:
        tree["model"] = {k: v for k, v in model.items() if k != "camc"}
    for name, (chooser, moved) in LEGACY_KEYS.items():
        if isinstance(tree.get(name), dict) and moved.keys() & tree[name].keys():
            tree[name] = _moved_under_parts(dict(tree[name]), chooser, moved)
    return tree


def _moved_under_parts(section: dict, chooser: str, moved: dict) -> dict:
    chosen = section.get(chooser)
    for old, places in moved.items():
        if old not in section:
            continue
        value = section.pop(old)
        for part, key in places:
            if chosen is None or part == chosen:
                section.setdefault(part, {})
                if isinstance(section[part], dict):
                    section[part].setdefault(key, value)
    return section


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    warmup_epochs: int = 5
    # step: the lr rises linearly every step of the warm-up; epoch: lr x (e + 1) / warmup_epochs
    # through 0-based epoch e, as LDAM-DRW's and RIDE's CIFAR code does
    warmup: str = "step"
    schedule: str = "multistep"  # multistep | cosine
    milestones: list[int] = field(default_factory=lambda: [160, 180])
    lr_decay: float = 0.1
    backbone_lr: float = 1.0  # the backbone's learning rate, as a multiple of train.lr
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto | bf16 | fp16 | off
    channels_last: bool = True
    # torch.compile the training step's model: off | default | reduce-overhead (CUDA graphs,
    # for launch-bound GPUs) | max-autotune. Evaluation stays eager; checkpoints are unchanged.
    compile: str = "off"
    deterministic: bool = True
    threads: int = 0  # CPU threads; 0 leaves torch's default
    # model.finetune=probe: the frozen backbone's features computed once (training images without
    # augmentation) and the head trained on them (camlt.probe); false runs the backbone each step
    probe_cache: bool = True
    # batch mixing (camlt.mixing): none | mixup | cutmix | remix, l ~ Beta(mix_alpha, mix_alpha);
    # a mix's own settings under its name (train.remix.kappa)
    mix: str = "none"
    mix_alpha: float = 1.0
    mix_prob: float = 1.0  # share of batches mixed
    mix_stop_epoch: int | None = None  # 0-based epoch from which no batch is mixed (None: never)
    # MaxNorm (camlt.regularize): after each step or epoch every class weight vector of a linear
    # classifier is projected into the ball of radius maxnorm_threshold (None: weight balancing's
    # rule, min + 0.1 (max - min) of the per-class norms when training starts)
    maxnorm: str = "off"  # off | step | epoch
    maxnorm_threshold: float | None = None
    # sharpness-aware minimisation (camlt.sam): off | sam | imbsam (the tail classes only); a
    # second forward and backward each step
    sam: str = "off"
    sam_rho: float = 0.05  # the radius of the weight perturbation
    sam_tail_max: int = 100  # imbsam: classes with at most this many training images are the tail
    eval_every: int = 1  # evaluate on the test split every N epochs (and always at the end)
    progress: bool = True
    tensorboard: bool = False  # log scalars and CAM images to RUN_DIR/tensorboard (camlt.tblog)
    out_dir: str = "runs"
    run_dir: str | None = None  # default: out_dir/<recipe>[-<overrides>]
    # batch_size is the GLOBAL batch: under torchrun each of W processes takes batch_size / W.
    lr_scaling: str = "none"  # none: lr as given | linear: lr * batch_size / lr_base_batch
    lr_base_batch: int = 256
    sync_bn: bool = False  # under torchrun on GPUs: BatchNorm statistics over the global batch
    workers: int = 4  # DataLoader worker processes (file datasets)
    persistent_workers: bool = True
    pin_memory: bool = True
    prefetch_factor: int = 2


@dataclass
class Stage2Config:
    """Decoupled stage 2 on a frozen stage-1 backbone (camlt.stage2); needs model.init_from."""

    method: str = "none"  # none | crt | taunorm | lws | posthoc | wb; its settings under its name


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema, for error messages."""
    keys = []
    for name, value in node.items():
        path = f"{prefix}{name}"
        keys += _valid_keys(value, path + ".") if isinstance(value, DictConfig) else [path]
    return keys


def _explain(err: OmegaConfBaseException, source: str) -> ConfigError:
    """Turn an OmegaConf error into one that names the key and lists the valid ones."""
    key = getattr(err, "full_key", None) or "?"
    schema = OmegaConf.structured(Config)
    section = key.rsplit(".", 1)[0] if "." in key else ""
    node = OmegaConf.select(schema, section, default=None) if section else schema
    # a key below a value (train.weight_decay.x) has no section of its own: list them all
    valid = _valid_keys(node, section + ".") if isinstance(node, DictConfig) and section else []
    if not valid:
        valid = _valid_keys(schema)
    reason = str(err).splitlines()[0]
    return ConfigError(
        f"{source}: bad config key '{key}': {reason}. Valid keys: {', '.join(valid)}"
    )


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with 1.2's booleans: only true/false. PyYAML's 1.1 reads ``off`` as False, so
    ``train.amp=off`` failed; bool fields still take yes/no/on/off (OmegaConf converts them)."""


_BOOL = "tag:yaml.org,2002:bool"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


# The most nodes a YAML document may stand for once its aliases are expanded. A recipe is a few
# hundred; a "billion laughs" of nested aliases is 316 bytes that stand for 10^9 and hang OmegaConf.
MAX_YAML_NODES = 20_000


def load_yaml(text: str) -> Any:
    """Parse YAML text the way recipes, overrides and saved configs are read; refuse a document
    whose aliases expand beyond MAX_YAML_NODES nodes (counted on the graph, without expanding)."""
    loader = _Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise ConfigError(
                f"YAML whose aliases (*name) expand to {size:,} values, above the limit of "
                f"{MAX_YAML_NODES:,}; write the values out instead of nesting aliases"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes ``node`` stands for with every alias written out (memoised per node, so
    the count costs the graph's size, not the expansion's). An alias inside its own anchor
    (``&a [*a]``) stands for an endless value and is refused."""
    key = id(node)
    if memo.get(key) == -1:
        raise ConfigError("YAML with an alias inside its own anchor (&a [*a]): an endless value")
    if key not in memo:
        memo[key] = -1  # on the current path
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(_expanded_size(child, memo) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        memo[key] = size
    return memo[key]


def _read_yaml(path: Path) -> dict:
    """Parse a recipe file, naming the file and line on a syntax error."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from None
    try:
        loaded = load_yaml(text)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(err, 'problem', err)}") from None
    except (ValueError, TypeError, RecursionError) as err:  # e.g. a date 2020-13-45, deep nesting
        raise ConfigError(f"{path}: invalid YAML value: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        sections = ", ".join(f.name for f in fields(Config))
        raise ConfigError(f"{path}: expected a mapping of sections ({sections})")
    return loaded


def parse_overrides(overrides: list[str]) -> dict:
    """Dotted ``key=value`` pairs, values parsed as YAML scalars or lists."""
    result: dict = {}
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}': expected key=value, e.g. train.epochs=30")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw) if raw != "" else ""
        except ConfigError as err:
            raise ConfigError(f"override '{key}': {err}") from None
        except yaml.YAMLError as err:  # refused, not kept as text: '!tag x' once named a run
            reason = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(
                f"override '{item}': the value is not valid YAML ({reason}); quote it to pass "
                f"it as text, e.g. {key}='\"{raw}\"'"
            ) from None
        except ValueError:  # a YAML date that is no date (2020-13-45): the text as written
            value = raw
        except RecursionError:
            raise ConfigError(f"override '{key}': value nested too deeply") from None
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is both a value and a section")
        node[parts[-1]] = value
    return result


def _check_sections(tree: Any, schema: DictConfig, source: str, prefix: str = "") -> None:
    """A value where the schema has a section (``train=5``) is named with the section's keys;
    OmegaConf's own message names no key."""
    if not isinstance(tree, dict):
        return
    for name, value in tree.items():
        node = schema.get(name) if isinstance(name, str) and name in schema else None
        if not isinstance(node, DictConfig):
            continue
        key = f"{prefix}{name}"
        if value is None:  # an empty section header ("train:" and nothing under it)
            tree[name] = {}
            continue
        if not isinstance(value, dict):
            raise ConfigError(
                f"{source}: '{key}' is a section, not a value ({key}={value!r}); set its keys, "
                f"e.g. {_valid_keys(node, key + '.')[0]}=..., of {', '.join(_valid_keys(node, key + '.'))}"
            )
        _check_sections(value, node, source, key + ".")


# The sections that hold parts' own settings under the part's name (loss.focal, model.camc):
# open below their own keys; camlt.preflight checks each part's section against its registry.
OPEN_SECTIONS = ("loss", "model", "stage2", "train")


def schema() -> DictConfig:
    """The config's structure, its open sections open."""
    structure = OmegaConf.structured(Config)
    for name in OPEN_SECTIONS:
        OmegaConf.set_struct(structure[name], False)
    return structure


BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "y", "n", "1", "0")


def _check_bools(tree: Any, node: DictConfig, source: str, prefix: str = "") -> None:
    """A text where the schema has a yes/no setting is taken only as a yes/no word: OmegaConf
    would read any number-like text ('30') as true without a word."""
    if not isinstance(tree, dict):
        return
    for name, value in tree.items():
        if not isinstance(name, str) or name not in node:
            continue
        child = node._get_node(name)
        key = f"{prefix}{name}"
        if isinstance(child, DictConfig):
            _check_bools(value, child, source, key + ".")
        elif (
            isinstance(child, BooleanNode)
            and isinstance(value, str)
            and (value.strip().lower() not in BOOL_WORDS)
        ):
            raise ConfigError(f"{source}: {key}={value!r}: expected true or false")


def merge(base: dict, source: str) -> DictConfig:
    """Validate a nested dict against the schema."""
    base = legacy_keys(base)
    schema_ = schema()
    _check_sections(base, schema_, source)
    _check_bools(base, schema_, source)
    try:
        merged = OmegaConf.merge(schema_, OmegaConf.create(base))
    except OmegaConfBaseException as err:
        raise _explain(err, source) from None
    except (TypeError, ValueError, RecursionError) as err:  # e.g. a list where a section goes
        raise ConfigError(f"{source}: does not fit the config schema: {err}") from None
    return normalize(merged)


def _resolve(cfg: DictConfig, source: str) -> DictConfig:
    """Resolve ``${...}`` now: a bad reference is a ConfigError here, and saved configs hold values."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise _explain(err, source) from None
    # An escaped \${...} resolves to a text that OmegaConf would read as a reference again
    # (at the next access, or from the saved config.yaml): refuse it rather than change it.
    for key, value in _leaves(OmegaConf.to_container(cfg, resolve=False)):
        if isinstance(value, str) and "${" in value:
            raise ConfigError(f"{source}: {key}={value!r}: a literal '${{' is not supported")
    return cfg


def _leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested dict/list."""
    if isinstance(tree, dict):
        return [kv for k, v in tree.items() for kv in _leaves(v, f"{prefix}{k}.")]
    if isinstance(tree, list):
        return [kv for i, v in enumerate(tree) for kv in _leaves(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), tree)]


MAX_BASE_DEPTH = 8  # recipes on recipes: deeper than this is a mistake, not a design


def read_recipe(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A recipe with its ``base:`` recipes under it: ``base: ../cifar10_lt.yaml`` (relative to
    the file) loads that recipe first and lays this one's keys over it, section by section, so
    a recipe states only what differs. A base may have a base; a circle is refused."""
    real = path.resolve()
    if real in chain:
        names = " -> ".join(str(p) for p in (*chain, real))
        raise ConfigError(f"{path}: its base recipes form a circle: {names}")
    if len(chain) >= MAX_BASE_DEPTH:
        raise ConfigError(f"{path}: more than {MAX_BASE_DEPTH} base recipes deep")
    recipe = _read_yaml(path)
    base = recipe.pop("base", None)
    if base is None:
        return recipe
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base={base!r}: expected the path of another recipe")
    base_path = (path.parent / base).expanduser()
    if not base_path.is_file():
        raise ConfigError(f"{path}: base recipe {base} not found (looked for {base_path})")
    under = read_recipe(base_path, (*chain, real))
    return _lay_over(under, recipe)


def _lay_over(under: dict, over: dict) -> dict:
    """``over``'s keys on ``under``'s: sections merge key by key, values (lists too) replace."""
    out = dict(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _lay_over(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """The resolved configuration of a recipe (with its base recipes) and its overrides."""
    path = Path(path)
    recipe = read_recipe(path)
    cfg = merge(recipe, str(path))
    if overrides:
        parsed = legacy_keys(parse_overrides(overrides))
        _check_sections(parsed, schema(), "command line")
        _check_bools(parsed, schema(), "command line")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(parsed))
        except OmegaConfBaseException as err:
            raise _explain(err, "command line") from None
        except (TypeError, ValueError, RecursionError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"command line: overrides do not fit the schema: {err}") from None
    _resolve(cfg, f"{path} with overrides" if overrides else str(path))
    validate(cfg)
    return cfg


COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")  # train.compile
_CHOICES = {
    "data.profile": ("exp", "step"),
    "data.order": ("standard", "hard"),
    "data.labels": ("strict", "remap"),
    "data.bad_images": ("error", "skip"),
    "data.leaks": ("error", "warn", "off"),
    "train.lr_scaling": ("none", "linear"),
    "train.schedule": ("multistep", "cosine"),
    "train.warmup": ("step", "epoch"),
    "model.init": ("camlt", "fan_in"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "train.compile": COMPILE_MODES,
    "train.device": ("auto", "cpu", "cuda"),
    "train.maxnorm": ("off", "step", "epoch"),
    "train.sam": ("off", "sam", "imbsam"),
}
_TRUE, _FALSE = ("true", "on", "yes"), ("false", "off", "no")


def normalize(cfg: DictConfig) -> DictConfig:
    """Spell legacy values the current way: ``data.augment`` true/false (a bool before the strong
    policies) is crop_flip/none, so old recipes and run directories read as they always did."""
    value = str(cfg.data.augment).strip()
    if value.lower() in _TRUE:
        cfg.data.augment = "crop_flip"
    elif value.lower() in _FALSE:
        cfg.data.augment = "none"
    return cfg


def _check_finite(cfg: DictConfig) -> None:
    """NaN and infinity fit a float field's type but no setting means them."""
    for key, value in _leaves(OmegaConf.to_container(cfg, resolve=True)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value}: must be a finite number")


def validate(cfg: DictConfig) -> None:
    """Range and choice checks that a type alone cannot express."""
    normalize(cfg)
    _check_finite(cfg)
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(choices)}")
    if cfg.data.imbalance < 1:
        raise ConfigError(f"data.imbalance={cfg.data.imbalance}: must be >= 1 (n_max / n_min)")
    if cfg.data.n_max is not None and cfg.data.n_max < 1:
        raise ConfigError(f"data.n_max={cfg.data.n_max}: must be a positive image count")
    _validate_baselines(cfg)
    positive = {
        "train.batch_size": cfg.train.batch_size,
        "train.eval_every": cfg.train.eval_every,
        "model.scale": cfg.model.scale,
        "data.max_pixels": cfg.data.max_pixels,
        "train.backbone_lr": cfg.train.backbone_lr,
    }
    for key in ("mean", "std"):
        values = cfg.data[key]
        if values is not None and (not values or (key == "std" and min(values) <= 0)):
            raise ConfigError(f"data.{key}={list(values)}: one number a channel (std above 0)")
    if not 1 <= cfg.model.experts <= MAX_EXPERTS:
        raise ConfigError(
            f"model.experts={cfg.model.experts}: must be 1 (one model) to {MAX_EXPERTS} experts"
        )
    size = cfg.model.input_size
    if size is not None and not 8 <= size <= 1024:
        raise ConfigError(f"model.input_size={size}: a side of 8 to 1024 pixels, or null")
    if cfg.loss.diversity < 0 or cfg.loss.diversity_temperature <= 0:
        raise ConfigError(
            f"loss.diversity={cfg.loss.diversity} must be >= 0 and loss.diversity_temperature="
            f"{cfg.loss.diversity_temperature} above 0"
        )
    if cfg.data.val_per_class < 0:
        raise ConfigError(f"data.val_per_class={cfg.data.val_per_class}: must be >= 0 images")
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}={value}: must be positive")
    if cfg.train.warmup_epochs < 0 or cfg.train.lr <= 0:
        raise ConfigError("train.warmup_epochs must be >= 0 and train.lr > 0")
    for key in ("train.seed", "data.split_seed"):
        value = OmegaConf.select(cfg, key)
        if not 0 <= value <= MAX_SEED:
            raise ConfigError(f"{key}={value}: must be a whole number in [0, {MAX_SEED}]")
    _validate_recipe_levers(cfg)


MAX_EXPERTS = 8  # RIDE, SADE and BalPoE use 2 to 4; more is a mistake, not a method
MAX_SEED = 2**32 - 1  # numpy's seed range; every generator of a run is derived from these


def _in_range(key: str, value: float, low: float, high: float, closed: bool = True) -> None:
    ok = low <= value <= high if closed else low < value <= high
    if ok:
        return
    if math.isinf(high):
        raise ConfigError(f"{key}={value}: must be {'>=' if closed else '>'} {low:g}")
    interval = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g}]"
    raise ConfigError(f"{key}={value}: must be in {interval}")


def _validate_clutter(clutter: DictConfig) -> None:
    """Sizes the 28-pixel garments and the 32-pixel canvas can hold."""
    _in_range("data.clutter.fragments", clutter.fragments, 0, 16)
    _in_range("data.clutter.fragment_size", clutter.fragment_size, 1, 28)
    _in_range("data.clutter.min_size", clutter.min_size, 1, 28)
    _in_range("data.clutter.max_size", clutter.max_size, 1, 28)
    if clutter.min_size > clutter.max_size:
        raise ConfigError(
            f"data.clutter.min_size={clutter.min_size} is above data.clutter.max_size="
            f"{clutter.max_size}: the garment's side is drawn from min_size..max_size"
        )


def _validate_recipe_levers(cfg: DictConfig) -> None:
    """Mixing, strong augmentation, SAM and MaxNorm: their ranges (which parts they may go with
    is camlt.preflight's, beside the registries of those parts)."""
    data, train = cfg.data, cfg.train
    _validate_clutter(data.clutter)
    _in_range("train.mix_alpha", train.mix_alpha, 0, math.inf, closed=False)
    _in_range("train.mix_prob", train.mix_prob, 0, 1)
    _in_range("data.erasing_prob", data.erasing_prob, 0, 1)
    _in_range("data.randaugment_magnitude", data.randaugment_magnitude, 0, 30)
    _in_range("data.randaugment_ops", data.randaugment_ops, 1, 16)
    if data.cutout_size is not None and data.cutout_size < 1:
        raise ConfigError(f"data.cutout_size={data.cutout_size}: must be >= 1 pixel (or null)")
    _in_range("train.sam_rho", train.sam_rho, 0, math.inf, closed=False)
    if train.sam_tail_max < 0:
        raise ConfigError(f"train.sam_tail_max={train.sam_tail_max}: must be >= 0 images")
    if train.sam != "off" and train.amp == "fp16":
        raise ConfigError(
            f"train.sam={train.sam} with train.amp=fp16: the loss scaler cannot follow SAM's two "
            "passes; use train.amp=bf16, auto or off"
        )
    if train.mix_stop_epoch is not None and train.mix_stop_epoch < 0:
        raise ConfigError(f"train.mix_stop_epoch={train.mix_stop_epoch}: must be a 0-based epoch")
    if train.maxnorm_threshold is not None and train.maxnorm_threshold <= 0:
        raise ConfigError(f"train.maxnorm_threshold={train.maxnorm_threshold}: must be positive")


def _validate_baselines(cfg: DictConfig) -> None:
    """Loss, sampler and stage-2 checks: ranges, and init_from and stage2.method go together."""
    loss, stage2 = cfg.loss, cfg.stage2
    if cfg.train.epochs < 0:  # 0 only where stage 2 trains nothing (camlt.preflight)
        raise ConfigError(f"train.epochs={cfg.train.epochs}: must be >= 0")
    if not 0 <= loss.drw_beta < 1:
        raise ConfigError(f"loss.drw_beta={loss.drw_beta}: must be in [0, 1)")
    if loss.drw_epoch is not None and loss.drw_epoch < 0:
        raise ConfigError(f"loss.drw_epoch={loss.drw_epoch}: must be a 0-based epoch >= 0")
    if stage2.method != "none" and not cfg.model.init_from:
        raise ConfigError(
            f"stage2.method={stage2.method} needs model.init_from=RUN_DIR, a finished stage-1 run"
        )
    if cfg.model.init_from and stage2.method == "none":
        raise ConfigError(
            "model.init_from is set but stage2.method=none; name the stage-2 method "
            "(camlt.stage2: crt, taunorm, lws, posthoc, wb)"
        )


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, the form saved beside every checkpoint."""
    return OmegaConf.to_yaml(cfg)


def from_yaml_file(path: str | Path) -> DictConfig:
    """A saved, resolved config (as written in a run directory)."""
    path = Path(path)
    cfg = _resolve(merge(_read_yaml(path), str(path)), str(path))
    validate(cfg)
    return cfg


def diff(a: DictConfig, b: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs."""
    out = []
    for key in sorted(set(a.keys()) | set(b.keys())):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, DictConfig) and isinstance(vb, DictConfig):
            out += diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} != {vb!r}")
    return out
