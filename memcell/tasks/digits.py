"""Sequential and permuted digits: scikit-learn's bundled 8x8 handwritten digits read one
pixel a step (64 steps), the small-scale cousin of sequential MNIST (Le et al. 2015)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from memcell.tasks._base import Task, check_split, classification_loss, holdout

__all__ = ["digits", "load_digits"]

_PERMUTATION_SEED = 1234  # one fixed pixel order for every permuted run (as for pMNIST)


def load_digits(test_fraction: float = 0.2, seed: int = 0):
    """The 1797 digits as ``(x_train, y_train, x_test, y_test)``, pixels scaled to [0, 1],
    ``x: [n, 64]``; a stratified-free random split fixed by ``seed``."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits task needs scikit-learn, in memcell's 'data' extra: pip install "
                          "'memcell[data]' (in a checkout, `make install` or `make test` install it with the dev extra)") from e
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    d = _load()
    x = (d.images.reshape(len(d.images), 64) / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    order = np.random.RandomState(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    te, tr = order[:n_test], order[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _nearest_neighbour_accuracy(x_train, y_train, x_test, y_test) -> float:
    d = ((x_test[:, None, :] - x_train[None, :, :]) ** 2).sum(-1)
    return float(np.mean(y_train[d.argmin(1)] == y_test))


def digits(*, permuted: bool = False, test_fraction: float = 0.2, seed: int = 0, valid_fraction: float = 0.0,
           split: str = "test") -> Task:
    """Pixel-by-pixel classification of 8x8 digits: ``xs: [b, 64, 1]``, ``ys: [b]`` in ``0..9``.

    With ``permuted=True`` the pixels are read in one fixed random order, which spreads the
    dependencies over the whole sequence. Metric: test accuracy (359 test images by default).
    Baselines: the majority class of the training labels (chance) and, for scale, a 1-nearest
    neighbour on the raw pixels (order-free, so the same for both variants).

    Args:
      permuted: read the pixels in a fixed permutation.
      test_fraction: share of the 1797 images held out.
      seed: the split.
      valid_fraction: share of the training images held out for validation (fixed by
        ``seed``); the model trains on the rest.
      split: which held-out set is ``task.test`` (and scores the baselines): ``"test"`` or
        ``"valid"`` (needs ``valid_fraction > 0``).
    """
    valid_fraction = check_split(valid_fraction, split)
    x_tr, y_tr, x_te, y_te = load_digits(test_fraction, seed)
    if valid_fraction:
        fit, valid = holdout(len(y_tr), valid_fraction, seed + 1)
        if split == "valid":
            x_te, y_te = x_tr[valid], y_tr[valid]
        x_tr, y_tr = x_tr[fit], y_tr[fit]
    perm = np.random.RandomState(_PERMUTATION_SEED).permutation(64) if permuted else np.arange(64)
    x_tr, x_te = x_tr[:, perm, None], x_te[:, perm, None]
    train_x, train_y = jnp.asarray(x_tr), jnp.asarray(y_tr)

    def sample(key, batch_size: int) -> dict:
        idx = jax.random.randint(key, (batch_size,), 0, train_x.shape[0])
        return {"xs": train_x[idx], "ys": train_y[idx]}

    majority = int(np.bincount(y_tr, minlength=10).argmax())
    return Task(
        name="permuted_digits" if permuted else "digits", input_size=1, output_size=10, readout="last",
        sample=sample, test={"xs": x_te, "ys": y_te}, loss=classification_loss, metric="accuracy", mode="max",
        baselines={
            "majority": {"accuracy": float(np.mean(y_te == majority))},
            "nearest_neighbour": {"accuracy": _nearest_neighbour_accuracy(x_tr[..., 0], y_tr, x_te[..., 0], y_te)},
        },
        solved=None,
        info={"length": 64, "n_train": len(y_tr), "n_test": len(y_te), "permuted": permuted, "split": split,
              "source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)"},
    )
