"""``camlt export``: a trained run as one ONNX or TorchScript file a server can load without camlt.

The exported graph is the model and the run's decision rule (``camlt.priors.adjust_logits``: the
fitted tau and temperature, and a deployment prior if one is baked in), so its probabilities
are the ones ``camlt predict`` prints. Its input is a float batch (N, C, H, W) of any N, scaled to
[0, 1] and normalised with the mean and std stated in the file's metadata (key ``camlt``, JSON),
with the class names, the input size and channels, and the decision rule's values.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from camlt import __version__
from camlt.checkpoint import atomic_write_bytes
from camlt.errors import UsageError
from camlt.trained import LoadedModel

FORMATS = ("onnx", "torchscript")
METADATA_KEY = "camlt"
OPSET = 18


class Deployable(nn.Module):
    """Normalised images -> (probabilities, scores) under the run's decision rule."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.model = loaded.model
        k = len(loaded.classes)
        # adjust_logits is affine in the logits: z / T + bias, bias = (-tau log p) / T + log q
        bias = loaded.adjust(torch.zeros(1, k))
        self.register_buffer("bias", bias.float())
        self.inv_temperature = 1.0 / loaded.temperature

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.model(images).logits.float() * self.inv_temperature + self.bias
        return scores.softmax(dim=1), scores


def metadata(loaded: LoadedModel) -> dict:
    """What a server needs to feed the file and read its outputs."""
    spec = loaded.spec
    return {
        "camlt_version": __version__,
        "classes": loaded.classes,
        "input": {
            "shape": ["N", *spec.shape],
            "channels": spec.channels,
            "range": "float32, pixels / 255, then (x - mean) / std per channel",
            "mean": list(spec.mean),
            "std": list(spec.std),
            "pad": spec.pad,
        },
        "outputs": ["probabilities (N, K)", "scores (N, K): the adjusted logits"],
        "decision_rule": {
            "tau": loaded.tau,
            "temperature": loaded.temperature,
            "prior": None if loaded.prior is None else loaded.prior.tolist(),
            "train_counts": loaded.train_counts,
        },
        "checkpoint_epoch": loaded.epoch,
    }


def example_input(loaded: LoadedModel, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *loaded.spec.shape)


def to_torchscript(module: Deployable, example: torch.Tensor, meta: dict) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic; checked by the tests
        traced = torch.jit.trace(module, example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})
    return buffer.getvalue()


def to_onnx(module: Deployable, example: torch.Tensor, meta: dict) -> bytes:
    try:
        import onnx
    except ImportError:
        raise UsageError(
            "ONNX export needs the onnx package: pip install 'camlt[export]'"
        ) from None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=["images"],
            output_names=["probabilities", "scores"],
            dynamic_axes={name: {0: "batch"} for name in ("images", "probabilities", "scores")},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    return proto.SerializeToString()


def export(loaded: LoadedModel, out: Path, fmt: str) -> None:
    """Write ``out`` atomically: a failed export leaves no half-written file."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    loaded.model.to("cpu").eval()
    module = Deployable(loaded).eval()
    example = example_input(loaded)
    meta = metadata(loaded)
    write = to_onnx if fmt == "onnx" else to_torchscript
    with torch.no_grad():
        data = write(module, example, meta)
    atomic_write_bytes(out, data)
