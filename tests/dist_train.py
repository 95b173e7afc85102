"""Trains one run; tests/test_distributed.py starts it under torchrun and as one process.

The backbone has no BatchNorm, and the test turns augmentation off, so two processes with half
the batch each compute exactly the gradients of one process with the whole batch (up to float
summation order): the comparison can be tight.
"""

import sys

from torch import nn

from camlt import engine
from camlt.config import load_config
from camlt.models.registry import register_backbone


@register_backbone("plainconv")
def plainconv(in_channels: int = 1, pretrained: str | None = None) -> nn.Module:
    """Two strided convolutions, no normalisation layer."""
    net = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU()
    )
    net.out_channels = 32
    return net


if __name__ == "__main__":
    config, run_dir, *overrides = sys.argv[1:]
    engine.train(load_config(config, overrides), run_dir)
