"""Datasets: hazy/clear pairs for training and testing, plain image folders for prediction.

The synthetic data generator lives in `datasets.synthetic` (also a command-line tool).
"""

from datasets.paired import PairedDataset, input_images

__all__ = ["PairedDataset", "input_images"]
