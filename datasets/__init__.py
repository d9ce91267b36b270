"""Datasets: hazy/clear pairs for training and testing, plain image folders for prediction."""

from datasets.paired import ImageFolderDataset, PairedDataset
from datasets.synthetic import make_synthetic_dataset

__all__ = ["ImageFolderDataset", "PairedDataset", "make_synthetic_dataset"]
