"""TensorBoard logging of a training run (``train.tensorboard=true``): scalars and CAM overlays.

Events go to ``RUN_DIR/tensorboard``. Each epoch logs the training loss, learning rate and
throughput; each evaluated epoch logs the test metrics and, for a few test images of the rarest
classes, strips of [image | raw CAM | calibrated CAM | correlation | importance] for the
predicted class. Logging reads the model in eval mode and draws no random numbers, so a run
logs the same results with it on or off.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from camlt.errors import UsageError
from camlt.losses import posthoc_adjust
from camlt.metrics import GROUP_COLUMNS

TB_DIR = "tensorboard"
CAM_SAMPLES = 8  # test images whose CAM strips are logged


class NullLogger:
    """What ``open_logger`` returns when TensorBoard is off: every call does nothing."""

    def log_epoch(self, record: dict, run) -> None:
        pass

    def close(self) -> None:
        pass


def cam_strips(
    model: torch.nn.Module, images: torch.Tensor, batch: torch.Tensor, adjust=None
) -> np.ndarray:
    """(N, H, 5W, 3) float overlays: the image, then each map for the predicted class."""
    from camlt.viz import MAP_NAMES, compute_maps, image_rgb, overlay_rgb

    result = compute_maps(model, batch, adjust=adjust)
    strips = []
    for i, image in enumerate(images):
        panels = [image_rgb(image)]
        for name in MAP_NAMES:
            cam = result.maps[name]
            panels.append(overlay_rgb(image, None if cam is None else cam[i]))
        strips.append(np.concatenate(panels, axis=1))
    return np.clip(np.stack(strips), 0, 1).astype(np.float32)


class TensorBoardLogger:
    """Writes one run's scalars and CAM images; resuming drops events past the checkpoint."""

    def __init__(self, run) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError(
                "train.tensorboard=true needs the tensorboard package: pip install 'camlt[viz]'"
            ) from None

        from camlt.data.inputs import set_images
        from camlt.viz import tail_samples

        self.writer = SummaryWriter(
            log_dir=str(run.run_dir / TB_DIR),
            purge_step=run.start_epoch + 1 if run.start_epoch else None,
        )
        test = run.test_set
        wanted = tail_samples(test.labels, run.train_counts, CAM_SAMPLES)
        self.images, _ = set_images(test, wanted)  # uint8 inputs, tensors or decoded files
        self.mean, self.std = test.mean, test.std

    def log_epoch(self, record: dict, run) -> None:
        step = record["epoch"]
        for key in ("loss", "lr", "images_per_s", "epoch_s"):
            if key in record:
                self.writer.add_scalar(f"train/{key}", record[key], step)
        test = record.get("test")
        if test:
            for key in GROUP_COLUMNS:
                if test.get(key) is not None:
                    self.writer.add_scalar(f"test/{key}", test[key], step)
            if len(self.images):
                mean = torch.tensor(self.mean).view(1, -1, 1, 1) * 255
                batch = (self.images.float() - mean) / (
                    torch.tensor(self.std).view(1, -1, 1, 1) * 255
                )
                adjust = partial(
                    posthoc_adjust, class_counts=run.train_counts, tau=run.cfg.loss.posthoc_tau
                )
                strips = cam_strips(run.model, self.images, batch.to(run.device), adjust)
                # one picture, a row per image: image, raw CAM, calibrated CAM, correlation, importance
                grid = np.concatenate(list(strips), axis=0)
                self.writer.add_image("cam/tail_test_images", grid, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_logger(run, enabled: bool = True) -> TensorBoardLogger | NullLogger:
    """The run's logger: TensorBoard when ``train.tensorboard`` is on (and ``enabled``: the
    process that writes files), else a no-op."""
    if not (enabled and run.cfg.train.get("tensorboard", False)):
        return NullLogger()
    return TensorBoardLogger(run)
