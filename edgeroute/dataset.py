"""The digits data set, split once and the same way for model builds and load generation.

scikit-learn's ``load_digits`` (1,797 8x8 images, pixels 0..16) split 75/25,
stratified by label, with ``random_state=seed``: the models train on
``x_train`` and the load generator replays ``x_test``, so the accuracy a
load test measures is held-out accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEST_SIZE = 0.25


@dataclass(frozen=True)
class Split:
    """Pixels as float32 ``[N, 64]`` on the 0..16 scale; labels as int64 ``[N]``."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def digits_split(seed: int = 0) -> Split:
    # scikit-learn takes over a second to import: only what reads the data pays for it,
    # not every CLI command.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=seed, stratify=y
    )
    return Split(
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_train=np.asarray(y_train, dtype=np.int64),
        y_test=np.asarray(y_test, dtype=np.int64),
    )
