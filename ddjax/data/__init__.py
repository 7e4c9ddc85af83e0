"""Datasets (host arrays in [0, 1]), invertible preprocessing and seeded sampling."""

from ddjax.data.datasets import (DatasetError, ImageDataset, load_mnist5k, load_npz, load_tfds,
                                 subset)
from ddjax.data.loading import load_dataset
from ddjax.data.preprocess import (NORMALIZATION_CONSTANTS, PREPROCESS_KINDS, Preprocessor,
                                   fit_preprocessor)
from ddjax.data.sampling import class_balanced_indices, init_synthetic, sample_class_balanced

__all__ = [
    "DatasetError", "ImageDataset", "NORMALIZATION_CONSTANTS", "PREPROCESS_KINDS",
    "Preprocessor", "class_balanced_indices", "fit_preprocessor", "init_synthetic",
    "load_dataset", "load_mnist5k", "load_npz", "load_tfds", "sample_class_balanced", "subset",
]
