"""Property-based tests of the config parsers: recipe YAML files and dotted overrides.

Whatever the bytes, ``load_config`` either returns a config that holds exactly what the user
wrote (up to OmegaConf's documented conversions, e.g. "30" -> 30 for an int key) and that
survives the config.yaml round trip of a run directory, or raises ConfigError. Any other
exception, or a value that changed on the way, fails the test.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from fuzz_settings import examples
from hypothesis import example, given
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from camlt.config import (
    Config,
    ConfigError,
    _read_yaml,
    diff,
    from_yaml_file,
    load_config,
    parse_overrides,
    to_yaml,
)

# Parsing alone is fast (200 examples); a full load builds the OmegaConf schema (~0.15 s), so
# the end-to-end properties try fewer. CAMLT_FUZZ_EXAMPLES=N raises both for a deeper search.
FAST = examples(200)
SLOW = examples(20)


def _leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for name, value in node.items():
        key = f"{prefix}{name}"
        out += _leaf_keys(value, key + ".") if isinstance(value, DictConfig) else [key]
    return out


KEYS = _leaf_keys(OmegaConf.structured(Config))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["30", "1e-3", "yes", "off", "${train.seed}", "${nope}", "\\${x}", "[1, 2]"])
)
values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=5), scalars)
keys = st.sampled_from(KEYS) | st.text(max_size=15)
BOOL_WORDS = {"true": True, "yes": True, "on": True, "y": True, "1": True}
BOOL_WORDS |= {"false": False, "no": False, "off": False, "n": False, "0": False}


def agrees(given: object, got: object) -> bool:
    """Whether ``got`` is ``given``, or what OmegaConf's documented conversion makes of it."""
    if isinstance(got, list) or OmegaConf.is_list(got):
        return isinstance(given, list) and len(given) == len(got) and all(map(agrees, given, got))
    if given is None or got is None:
        return given is None and got is None
    if isinstance(got, bool):
        if isinstance(given, str):
            return BOOL_WORDS.get(given.strip().lower()) is got
        return not isinstance(given, float) and bool(given) is got
    if isinstance(got, int):
        if isinstance(given, str):
            return int(given.replace("_", "")) == got
        return not isinstance(given, bool | float) and given == got
    if isinstance(got, float):
        number = float(given) if isinstance(given, str | int) else given
        if isinstance(given, bool) or not isinstance(number, float):
            return False
        return number == got or (math.isnan(number) and math.isnan(got))
    if isinstance(got, str):
        return got == (given if isinstance(given, str) else str(given))
    return False


def nested(flat: dict[str, object]) -> dict:
    """{'train.lr': 1} -> {'train': {'lr': 1}}; later keys that clash with a value are skipped."""
    out: dict = {}
    for key, value in flat.items():
        node, parts = out, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = value
    return out


def flatten(tree: object, prefix: str = "") -> dict[str, object]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}."""
    if not isinstance(tree, dict) or not tree:
        return {prefix.rstrip("."): tree} if prefix else {}
    out: dict[str, object] = {}
    for key, value in tree.items():
        out |= flatten(value, f"{prefix}{key}.")
    return out


def check_loaded(cfg: DictConfig, expected: dict[str, object], tmp: Path) -> None:
    """A config that loaded holds what was written and survives a run directory's config.yaml."""
    for key, value in expected.items():
        if key == "data.augment" and isinstance(value, bool):  # the documented legacy spelling
            value = "crop_flip" if value else "none"
        if key in KEYS and not (isinstance(value, str) and "$" in value):
            assert agrees(value, OmegaConf.select(cfg, key)), (key, value)
    saved = tmp / "config.yaml"
    saved.write_text(to_yaml(cfg), encoding="utf-8")
    assert diff(cfg, from_yaml_file(saved)) == []


def load_or_config_error(path: Path, overrides: list[str] | None = None) -> DictConfig | None:
    try:
        return load_config(path, overrides)
    except ConfigError as err:
        assert str(err)  # a message, never an empty one
        return None


@FAST
@given(raw=st.binary(max_size=300))
@example(raw=b"train:\n  lr: 2020-99-99\n")  # a date that is not one
@example(raw=b"[" * 3000)  # nesting deeper than the parser's recursion
@example(raw=b"a: &x [*x]")  # a self-referencing alias
@example(raw=b"train: !!python/object/apply:os.system [echo pwned]")
@example(raw=b"\xff\xfe\x00")  # not UTF-8
def test_arbitrary_recipe_bytes_give_a_config_or_config_error(raw, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(raw)
    try:
        loaded = _read_yaml(path)
    except ConfigError as err:
        assert str(path) in str(err)  # the message names the file
        return
    assert isinstance(loaded, dict)
    cfg = load_or_config_error(path)
    if cfg is not None:
        check_loaded(cfg, flatten(loaded), tmp_path)


@FAST
@given(items=st.lists(st.text(max_size=30), max_size=6))
@example(items=["train.lr=2020-99-99", "train.lr=" + "[" * 3000, "=1", "a.b=1", "a.b.c=2"])
def test_arbitrary_override_text_is_parsed_or_refused(items):
    try:
        tree = parse_overrides(items)
    except ConfigError as err:
        assert "override" in str(err)
        return
    assert isinstance(tree, dict)
    for item in items:  # each key=value landed where its dots say (the last one wins)
        key, _, raw = item.partition("=")
        node = tree
        for part in key.strip().split("."):
            assert isinstance(node, dict) and part in node
            node = node[part]


@SLOW
@given(flat=st.dictionaries(keys, values, max_size=6))
@example(flat={"train.milestones": {"a": 1}})
@example(flat={"train.epochs": "${train.seed}"})
@example(flat={"data.root": "\\${x}"})
@example(flat={"data.balanced": "30"})  # found by the deep fuzz: read as true
@example(flat={"train.weight_decay.x": "${"})  # found by the deep fuzz: a traceback
@example(flat={"data.augment": False})  # the legacy boolean, read as "none" (config.normalize)
def test_recipe_mappings_are_loaded_exactly_or_refused(flat, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(nested(flat)), encoding="utf-8")
    cfg = load_or_config_error(path)
    if cfg is not None:
        check_loaded(cfg, flat, tmp_path)


@SLOW
@given(
    items=st.lists(
        st.tuples(keys, st.text(max_size=20) | values.map(lambda v: yaml.safe_dump(v).strip())),
        max_size=5,
    ),
    junk=st.lists(st.text(max_size=20), max_size=2),
)
@example(items=[("train.lr", "2020-99-99")], junk=[])
@example(items=[("train.lr", "[" * 3000)], junk=[])
@example(items=[("train.run_dir", "${nope}")], junk=[])
@example(items=[("train.epochs.x", "1")], junk=[])
@example(items=[], junk=["=1", "train.epochs", ".=", "a..b=1"])
def test_overrides_are_applied_exactly_or_refused(items, junk, tmp_path):
    recipe = tmp_path / "empty.yaml"
    recipe.write_text("", encoding="utf-8")
    overrides = [f"{k}={v}" for k, v in items] + junk
    cfg = load_or_config_error(recipe, overrides)
    if cfg is not None:  # every value the parser read from the command line reached the config
        check_loaded(cfg, flatten(parse_overrides(overrides)), tmp_path)


def test_off_and_no_stay_words_where_a_choice_is_expected(tmp_path):
    """YAML 1.1 reads ``off`` as False; ``train.amp=off`` must mean the choice "off"."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  amp: off\n  deterministic: no\n", encoding="utf-8")
    cfg = load_config(recipe, ["data.balanced=off", "data.augment=off", "train.progress=false"])
    assert cfg.train.amp == "off" and cfg.train.deterministic is False
    assert cfg.data.balanced is False and cfg.train.progress is False
    assert cfg.data.augment == "none"  # a bool once: off still means no augmentation
    assert load_config(recipe, ["train.amp=bf16"]).train.amp == "bf16"
    assert parse_overrides(["train.amp=off", "a.b=true"]) == {
        "train": {"amp": "off"},
        "a": {"b": True},
    }
