"""camlt: long-tailed image classification with CAM calibration and scaled normalized classifiers.

The CAMC head in your own training loop, on a torchvision ResNet-50 (see ``CAMCHead``)::

    import torch, torchvision
    from camlt import CAMCHead

    net = torchvision.models.resnet50(weights=None)
    body = torch.nn.Sequential(*list(net.children())[:-2])  # feature map, no pooling
    head = CAMCHead(2048, num_classes=1000, scale=16.0)     # model.camc defaults
    out = head(body(images), labels)                          # train mode: updates prototypes
    loss = out.loss(labels)  # CE(z, y) + gamma * CE(z0, y): the head's own rule
"""

__version__ = "0.1.0"

# The public API, imported on first use so that ``import camlt`` (and the CLI) stays light.
_EXPORTS = {
    "CAMCHead": "camlt.heads.camc",
    "HeadOutput": "camlt.heads.base",
    "NormalizedClassifier": "camlt.heads.normalized",
    "build_model": "camlt.models",
    "load": "camlt.api",
    "Predictor": "camlt.api",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """``from camlt import CAMCHead``: import the defining module only when asked."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'camlt' has no attribute {name!r}")
