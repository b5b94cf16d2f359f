"""``mlp``: a one-hidden-layer torch network, trained with Adam and early stopping (skorch-like, small).

flatten -> Linear(d, hidden_units) -> ReLU -> Dropout -> Linear(hidden_units, n_classes), softmax
cross-entropy. torch is imported inside methods so ``import classifiers`` stays light.
The training loop is a few small methods (``build_module``, ``build_optimizer``, ``train_epoch``,
``evaluate``) that a subclass can override one at a time.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from sklearn.model_selection import train_test_split

from classifiers.base import Head, ParamError, Rule, _fmt, heads, proba_from_decision

if TYPE_CHECKING:  # pragma: no cover
    import torch

PREDICT_BATCH = 1024  # rows per forward pass at predict time (memory only; results do not depend on it)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _is_device(value: str) -> bool:
    if value == "auto":
        return True
    import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        return False
    return True


@heads.register("mlp")
class MLPHead(Head):
    """A small MLP head. ``history_`` holds one dict per epoch::

        {"epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy"}

    (valid values are None when there is no validation split; the first record then has a
    ``"note"`` saying why). ``train_*`` are running averages over the epoch's batches (dropout on).
    The weights of the epoch with the lowest validation loss are restored at the end
    (``best_epoch_``). ``module_`` is the trained ``torch.nn.Module``, on the CPU after ``fit``.
    Deterministic on CPU for a fixed ``random_state``.
    """

    _param_rules = {
        "hidden_units": Rule(int, ge=1),
        "dropout": Rule(float, ge=0, lt=1),
        "learning_rate": Rule(float, gt=0, le=FLOAT32_MAX),  # torch's optimiser takes them as float32
        "weight_decay": Rule(float, ge=0, le=FLOAT32_MAX),
        "batch_size": Rule(int, ge=1),
        "max_epochs": Rule(int, ge=1),
        "patience": Rule(int, ge=1),
        "validation_fraction": Rule(float, ge=0, lt=1),
        "standardize": Rule(bool),
        "device": Rule(str, check=_is_device, text="'auto' or a torch device string such as 'cpu' or 'cuda:0'"),
        "random_state": Rule(int, ge=0, none=True),
    }
    # Empty on purpose: every candidate is a full training run, early stopping already picks the
    # number of epochs, and Adam at 1e-3 with dropout 0.5 is a robust default for frozen features.
    default_grid = {}
    _state_arrays = ("mean_", "scale_")
    _state_scalars = ("history_", "best_epoch_")

    def __init__(self, hidden_units=256, dropout=0.5, learning_rate=1e-3, weight_decay=0.0, batch_size=64,
                 max_epochs=100, patience=10, validation_fraction=0.1, standardize=True, device="auto",
                 random_state=0):
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.standardize = standardize
        self.device = device
        self.random_state = random_state

    # ---- overridable steps
    def build_module(self, n_features: int, n_classes: int) -> "torch.nn.Module":
        from torch import nn

        return nn.Sequential(
            nn.Linear(n_features, self.hidden_units),
            nn.ReLU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden_units, n_classes),
        )

    def build_optimizer(self, module: "torch.nn.Module") -> "torch.optim.Optimizer":
        import torch

        return torch.optim.Adam(module.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)

    def train_epoch(self, module, optimizer, Z, y, rows, device) -> tuple[float, float]:
        """One pass over ``rows`` (already shuffled) in mini-batches; returns (mean loss, accuracy)."""
        import torch
        import torch.nn.functional as F

        module.train()
        loss_sum, correct = 0.0, 0
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            xb, yb = self._batch(Z, batch, device), torch.from_numpy(y[batch]).to(device)
            optimizer.zero_grad()
            logits = module(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
            correct += int((logits.argmax(dim=1) == yb).sum())
        return loss_sum / len(rows), correct / len(rows)

    def evaluate(self, module, Z, y, rows, device) -> tuple[float, float]:
        """(mean loss, accuracy) on ``rows`` in eval mode."""
        import torch
        import torch.nn.functional as F

        logits = torch.from_numpy(self._forward(module, Z, rows, device))
        target = torch.from_numpy(y[rows])
        loss = F.cross_entropy(logits, target)
        return float(loss), float((logits.argmax(dim=1) == target).float().mean())

    # ---- helpers
    def _device(self) -> "torch.device":
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ParamError(f"The 'device' parameter of the mlp head is {self.device!r}, but CUDA is not available.")
        return device

    def _batch(self, Z: np.ndarray, rows, device) -> "torch.Tensor":
        import torch

        x = Z[rows]
        if self.mean_ is not None:
            x = (x - self.mean_) / self.scale_
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)

    def _forward(self, module, Z: np.ndarray, rows: np.ndarray, device) -> np.ndarray:
        import torch

        module.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(rows), PREDICT_BATCH):
                out.append(module(self._batch(Z, rows[start:start + PREDICT_BATCH], device)).cpu().numpy())
        return np.concatenate(out)

    def _fit_standardizer(self, Z: np.ndarray, rows: np.ndarray) -> None:
        self.mean_ = self.scale_ = None
        if not self.standardize:
            return
        total = np.zeros(Z.shape[1])
        for start in range(0, len(rows), 1024):  # chunks: no float64 copy of all the features
            total += Z[rows[start:start + 1024]].sum(axis=0, dtype=np.float64)
        mean = (total / len(rows)).astype(np.float32)
        squares = np.zeros(Z.shape[1])
        for start in range(0, len(rows), 1024):
            squares += np.square(Z[rows[start:start + 1024]] - mean).sum(axis=0, dtype=np.float64)
        std = np.sqrt(squares / len(rows))
        std[std == 0] = 1.0
        self.mean_, self.scale_ = mean, std.astype(np.float32)

    def _split(self, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """Stratified (train rows, validation rows); no validation when a class is too small."""
        n, rows = len(y), np.arange(len(y))
        if self.validation_fraction == 0:
            return rows, None, "validation_fraction=0: no validation split, no early stopping"
        counts = np.bincount(y)
        n_valid = math.ceil(self.validation_fraction * n)
        if counts.min() < 2 or n_valid < len(counts) or n - n_valid < len(counts):
            smallest = self.classes_[counts.argmin()]
            return rows, None, (
                f"no validation split: {n} samples in {len(counts)} classes (class {_fmt(smallest)} has "
                f"{counts.min()}) are too few for a stratified validation_fraction={self.validation_fraction}; "
                f"trained all {self.max_epochs} epochs without early stopping"
            )
        train, valid = train_test_split(rows, test_size=self.validation_fraction, stratify=y, random_state=seed)
        return np.sort(train), np.sort(valid), None

    # ---- estimator API
    def fit(self, X, y):
        """Train with Adam on a stratified split, early-stop on validation loss; return self."""
        import torch

        Z, _, y_index = self._validate_fit(X, y)
        device = self._device()
        rng = np.random.default_rng(self.random_state)
        train, valid, note = self._split(y_index, int(rng.integers(2**31 - 1)))
        self._fit_standardizer(Z, train)
        y_index = y_index.astype(np.int64)

        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(int(rng.integers(2**31 - 1)))
            module = self.build_module(Z.shape[1], len(self.classes_)).to(device)
            optimizer = self.build_optimizer(module)
            history, best_loss, best_state, best_epoch, waited = [], math.inf, None, None, 0
            for epoch in range(1, self.max_epochs + 1):
                train_loss, train_acc = self.train_epoch(module, optimizer, Z, y_index, rng.permutation(train), device)
                valid_loss = valid_acc = None
                if valid is not None:
                    valid_loss, valid_acc = self.evaluate(module, Z, y_index, valid, device)
                history.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                                "valid_loss": valid_loss, "valid_accuracy": valid_acc})
                if valid is None:
                    continue
                if valid_loss < best_loss:
                    best_loss, best_epoch, waited = valid_loss, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                else:
                    waited += 1
                    if waited >= self.patience:
                        break
        if best_state is not None:
            module.load_state_dict(best_state)
        if note:
            history[0]["note"] = note
        self.module_ = module.cpu().eval()
        self.history_ = history
        self.best_epoch_ = best_epoch if best_epoch is not None else len(history)
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logits, shape (n, n_classes); for 2 classes the logit difference, shape (n,)."""
        Z = self._validate_X(X)
        logits = self._forward(self.module_, Z, np.arange(len(Z)), "cpu")
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the logits, shape (n, n_classes), columns in ``classes_`` order."""
        return proba_from_decision(self.decision_function(X))

    # ---- saved state
    def _get_state(self):
        arrays, config = super()._get_state()
        for key, value in self.module_.state_dict().items():
            arrays[f"module.{key}"] = value.detach().cpu().numpy().copy()
        return arrays, config

    def _restore(self, arrays, config) -> None:
        import torch

        with torch.random.fork_rng(devices=[]):  # building draws initial weights; keep the global RNG as it was
            module = self.build_module(self.n_features_in_, len(self.classes_))
        prefix = "module."
        module.load_state_dict({k[len(prefix):]: torch.from_numpy(v.copy()) for k, v in arrays.items()
                                if k.startswith(prefix)})
        self.module_ = module.eval()
