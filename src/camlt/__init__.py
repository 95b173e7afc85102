"""camlt: long-tailed image classification with CAM calibration and scaled normalized classifiers."""

__version__ = "0.1.0"
