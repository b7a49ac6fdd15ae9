"""Speaker classification on the Japanese Vowels data (Kudo et al. 1999), shipped with memcell.

9 male speakers uttering /ae/; each utterance is 7 to 29 frames of 12 LPC cepstral
coefficients; 270 training and 370 test utterances. Variable lengths go through ``lengths``.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from memcell.tasks._base import Task, check_split, classification_loss, holdout

__all__ = ["japanese_vowels", "read_ts"]

DATA = pathlib.Path(__file__).parent / "data"


def read_ts(path) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Reads a multivariate, variable-length sktime/aeon ``.ts`` file.

    Args:
      path: the file.

    Returns:
      ``(series, labels, classes)``: one ``[t_i, d]`` float array a case, the label strings'
      indices into ``classes`` (as declared by ``@classLabel``).

    Raises:
      ValueError: naming the file and line on anything malformed.
    """
    path = pathlib.Path(path)
    classes, series, labels, in_data = None, [], [], False
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            low = line.lower()
            if low.startswith("@classlabel"):
                parts = line.split()
                if len(parts) < 3 or parts[1].lower() != "true":
                    raise ValueError(f"{path}:{lineno}: expected '@classLabel true <labels...>', got {line!r}")
                classes = parts[2:]
            elif low.startswith("@data"):
                in_data = True
            continue
        if classes is None:
            raise ValueError(f"{path}:{lineno}: data before any '@classLabel true ...' header")
        *dims, label = line.split(":")
        if label not in classes:
            raise ValueError(f"{path}:{lineno}: label {label!r} is not among the declared classes {classes}")
        try:
            cols = [np.array([float(v) for v in d.split(",")], np.float32) for d in dims]
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: a value is not a number ({e})") from None
        if len({len(c) for c in cols}) != 1:
            raise ValueError(f"{path}:{lineno}: dimensions have different lengths {[len(c) for c in cols]}")
        series.append(np.stack(cols, axis=-1))
        labels.append(classes.index(label))
    if not in_data or not series:
        raise ValueError(f"{path}: no '@data' section or no cases")
    if len({s.shape[1] for s in series}) != 1:
        raise ValueError(f"{path}: cases have different numbers of dimensions")
    return series, np.asarray(labels, np.int32), classes


def _pad(series, T):
    out = np.zeros((len(series), T, series[0].shape[1]), np.float32)
    for i, s in enumerate(series):
        out[i, : len(s)] = s
    return out, np.asarray([len(s) for s in series], np.int32)


def _resample(s: np.ndarray, n: int) -> np.ndarray:
    src = np.linspace(0.0, 1.0, len(s))
    dst = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(dst, src, s[:, j]) for j in range(s.shape[1])], axis=-1)


def japanese_vowels(*, data_dir=None, valid_fraction: float = 0.0, split: str = "test", seed: int = 0) -> Task:
    """Speaker classification (9 classes) from utterances of 7 to 29 frames of 12 coefficients.

    Inputs are standardised per coefficient with training statistics, padded to 29 frames,
    with ``lengths``. Metric: test accuracy on the 370 test utterances. Baselines: majority
    class; 1-nearest neighbour (Euclidean) on utterances linearly resampled to 29 frames.

    Args:
      data_dir: a directory holding ``JapaneseVowels_{TRAIN,TEST}.ts`` (default: the copy
        shipped with memcell).
      valid_fraction: share of the training utterances held out for validation (fixed by
        ``seed``); the model trains, and the standardisation is fitted, on the rest.
      split: which held-out set is ``task.test`` (and scores the baselines): ``"test"`` or
        ``"valid"`` (needs ``valid_fraction > 0``).
      seed: the validation split.
    """
    valid_fraction = check_split(valid_fraction, split)
    d = DATA if data_dir is None else pathlib.Path(data_dir)
    tr, y_tr, classes = read_ts(d / "JapaneseVowels_TRAIN.ts")
    te, y_te, classes_te = read_ts(d / "JapaneseVowels_TEST.ts")
    if classes != classes_te:
        raise ValueError(f"train and test files declare different classes: {classes} vs {classes_te}")
    if valid_fraction:
        fit, valid = holdout(len(y_tr), valid_fraction, seed)
        if split == "valid":
            te, y_te = [tr[i] for i in valid], y_tr[valid]
        tr, y_tr = [tr[i] for i in fit], y_tr[fit]
    frames = np.concatenate(tr)
    mu, sd = frames.mean(0), frames.std(0) + 1e-6
    tr = [(s - mu) / sd for s in tr]
    te = [(s - mu) / sd for s in te]
    T = max(max(len(s) for s in tr), max(len(s) for s in te))
    x_tr, l_tr = _pad(tr, T)
    x_te, l_te = _pad(te, T)

    r_tr = np.stack([_resample(s, T).reshape(-1) for s in tr])
    r_te = np.stack([_resample(s, T).reshape(-1) for s in te])
    dist = ((r_te[:, None] - r_tr[None]) ** 2).sum(-1)
    nn_acc = float(np.mean(y_tr[dist.argmin(1)] == y_te))
    majority = int(np.bincount(y_tr).argmax())

    train_x, train_l, train_y = jnp.asarray(x_tr), jnp.asarray(l_tr), jnp.asarray(y_tr)

    def sample(key, batch_size: int) -> dict:
        idx = jax.random.randint(key, (batch_size,), 0, train_x.shape[0])
        return {"xs": train_x[idx], "ys": train_y[idx], "lengths": train_l[idx]}

    return Task(
        name="vowels", input_size=x_tr.shape[-1], output_size=len(classes), readout="last", sample=sample,
        test={"xs": x_te, "ys": y_te, "lengths": l_te}, loss=classification_loss, metric="accuracy", mode="max",
        baselines={"majority": {"accuracy": float(np.mean(y_te == majority))},
                   "nearest_neighbour": {"accuracy": nn_acc}},
        solved=None,
        info={"n_train": len(y_tr), "n_test": len(y_te), "max_length": T,
              "min_length": int(min(l_tr.min(), l_te.min())), "classes": classes, "split": split,
              "source": "UCI Japanese Vowels (Kudo et al. 1999), .ts files from the aeon 1.6.0 wheel"},
    )
