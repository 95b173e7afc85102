"""The Python API of a trained run: ``camlt.load(run_dir)`` returns a ``Predictor``.

    import camlt
    model = camlt.load("runs/fmnist_lt")                   # calibration applied when fitted
    top = model.predict(["shirt.png", "coat.png"], topk=3)   # Prediction(path, classes, names, probs)
    probs = model.probabilities(uint8_batch)                 # (N, K), the CLI's numbers
    maps = model.cam(uint8_batch)                            # {map name: (N, h, w) or None}

Inputs are image paths or a uint8 batch (N, C, H, W) already at the model's input size
(``model.input_shape``); the answers are the ones ``camlt predict`` and ``camlt eval`` give.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from camlt.data.inputs import load_images, normalise
from camlt.errors import UsageError
from camlt.predict import Prediction, predict_files
from camlt.priors import parse_prior
from camlt.trained import LoadedModel, open_run

Inputs = torch.Tensor | Sequence[str | Path]


class Predictor:
    """A trained run's model and decision rule, ready to classify and explain images."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    @property
    def classes(self) -> list[str]:
        return self.loaded.classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.loaded.spec.shape

    def _batch(self, inputs: Inputs) -> torch.Tensor:
        if isinstance(inputs, torch.Tensor):
            if inputs.dtype != torch.uint8 or tuple(inputs.shape[1:]) != self.input_shape:
                raise UsageError(
                    f"expected a uint8 batch (N, {', '.join(map(str, self.input_shape))}), got "
                    f"{inputs.dtype} {tuple(inputs.shape)}; or pass image paths"
                )
            return inputs
        _, images = load_images([Path(p) for p in inputs], self.loaded.spec, _raise)
        if images is None:
            raise UsageError("no image given")
        return images

    def logits(self, inputs: Inputs) -> torch.Tensor:
        """Scores (N, K) under the run's decision rule (tau, temperature, prior)."""
        return self.loaded.logits(self._batch(inputs))

    def probabilities(self, inputs: Inputs) -> torch.Tensor:
        return self.logits(inputs).softmax(dim=1)

    def predict(self, inputs: Inputs, topk: int = 5) -> list[Prediction]:
        """Top-k classes of each input, most probable first."""
        if not isinstance(inputs, torch.Tensor):
            return predict_files(self.loaded, [Path(p) for p in inputs], topk, warn=_raise)
        probs = self.probabilities(inputs)
        top_p, top_i = probs.topk(min(topk, len(self.classes)), dim=1)
        return [
            Prediction(f"[{n}]", i, [self.classes[c] for c in i], p)
            for n, (p, i) in enumerate(zip(top_p.tolist(), top_i.tolist(), strict=True))
        ]

    def cam(self, inputs: Inputs, classes: torch.Tensor | None = None) -> dict:
        """Class activation maps (name -> (N, h, w), None where the head has no such map) for
        ``classes`` (default: each image's top prediction)."""
        from camlt.viz import compute_maps

        images = normalise(self._batch(inputs), self.loaded.spec).to(self.loaded.device)
        return compute_maps(self.loaded.model, images, classes, self.loaded.adjust).maps


def _raise(message: str) -> None:
    raise UsageError(message)


def load(
    run_dir: str | Path, device: str = "auto", prior: str = "uniform", **eval_free: str
) -> Predictor:
    """Open a run (or checkpoint) for inference; ``prior`` as ``camlt predict --prior``;
    keyword overrides are eval-free keys, e.g. ``load(run, **{"data.root": "/data"})``."""
    loaded = open_run(run_dir, [f"{k}={v}" for k, v in eval_free.items()], device)
    loaded.prior = parse_prior(prior, loaded.classes, loaded.train_counts)
    return Predictor(loaded)
