"""``gap``: global average pooling of feature maps, then the ``logreg`` model on the pooled vectors."""

from __future__ import annotations

import numpy as np

from classifiers.base import heads
from classifiers.logreg import LogRegHead


@heads.register("gap")
class GAPHead(LogRegHead):
    """Average (n, C, H, W) maps over H and W to (n, C), then softmax regression (see ``logreg``).

    Needs spatial maps: features extracted with ``--pool none``. ``n_features_in_`` is C*H*W and
    ``spatial_shape_`` is (C, H, W). Same parameters as ``logreg``.
    """

    _state_scalars = LogRegHead._state_scalars + ("spatial_shape_",)

    def _check_input(self, X: np.ndarray) -> np.ndarray:
        if X.ndim == 2:
            raise ValueError(
                f"the gap head needs spatial feature maps (n, C, H, W), got vectors of shape {X.shape}: "
                "extract with --pool none, or use the logreg head"
            )
        if X.ndim != 4:
            raise ValueError(f"the gap head needs spatial feature maps (n, C, H, W), got an array of shape {X.shape}")
        return X

    def _features(self, X: np.ndarray, *, fit: bool) -> np.ndarray:
        if fit:
            self.spatial_shape_ = tuple(int(s) for s in X.shape[1:])
        elif X.shape[1:] != self.spatial_shape_:
            raise ValueError(
                f"X has feature maps of shape {X.shape[1:]}, but this gap head was fitted on {self.spatial_shape_}"
            )
        return X.mean(axis=(2, 3), dtype=np.float32)

    def _restore(self, arrays, config) -> None:
        self.spatial_shape_ = tuple(self.spatial_shape_)
