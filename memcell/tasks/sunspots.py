"""Forecasting yearly sunspot numbers (1700-2008, shipped with statsmodels): one-step and
multi-step errors against the naive (persistence) and linear autoregressive forecasts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from memcell.tasks._base import Task, check_split

__all__ = ["load_sunspots", "sunspots"]


def load_sunspots() -> tuple[np.ndarray, np.ndarray]:
    """``(years, values)`` of the yearly sunspot activity, 309 years."""
    try:
        from statsmodels.datasets import sunspots as _data  # not statsmodels.api: 3x slower to import
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the sunspots task needs statsmodels, in memcell's 'data' extra: pip install "
                          "'memcell[data]' (in a checkout, `make install` or `make test` install it with the dev extra)") from e
    df = _data.load_pandas().data
    return df["YEAR"].to_numpy(np.int32), df["SUNACTIVITY"].to_numpy(np.float64)


def _windows(z: np.ndarray, starts: np.ndarray, window: int, horizon: int):
    x = np.stack([z[s : s + window] for s in starts])
    y = np.stack([z[s + window : s + window + horizon] for s in starts])
    return x, y


def sunspots(window: int = 24, horizon: int = 5, *, test_fraction: float = 0.25, valid_fraction: float = 0.0,
             split: str = "test") -> Task:
    """Forecast the next ``horizon`` yearly sunspot numbers from the last ``window``.

    The series is split in time: the last ``test_fraction`` of the years are test targets
    (their input windows may reach back into the training years, as in any rolling forecast).
    Values are standardised with training statistics; the model reads ``[b, window, 1]`` and
    outputs ``[b, horizon]`` at once. Metrics, in sunspot units: ``rmse_1`` (one step ahead)
    and ``rmse`` (all ``horizon`` steps, the stated metric). Baselines: naive (repeat the last
    value) and linear (least-squares autoregression on the window, one per horizon, fitted on
    training windows).

    Args:
      window: input years (>= 2).
      horizon: years forecast (>= 1).
      test_fraction: share of the years held out at the end.
      valid_fraction: share of the training years, at their end, held out for validation
        (their windows' targets); the model, the standardisation and the linear baseline are
        fitted on the years before.
      split: which held-out set is ``task.test`` (and scores the baselines): ``"test"`` or
        ``"valid"`` (needs ``valid_fraction > 0``).
    """
    valid_fraction = check_split(valid_fraction, split)
    for name, v, low in (("window", window, 2), ("horizon", horizon, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    years, v = load_sunspots()
    train_end = int(round(len(v) * (1.0 - test_fraction)))
    if train_end < window + horizon + 1 or len(v) - train_end < horizon:
        raise ValueError(f"window={window} and horizon={horizon} leave no windows in {train_end} / {len(v) - train_end} years")
    fit_end = int(round(train_end * (1.0 - valid_fraction)))
    if fit_end < window + horizon + 1 or (valid_fraction and train_end - fit_end < horizon):
        raise ValueError(f"valid_fraction={valid_fraction} leaves no windows in {fit_end} / {train_end - fit_end} "
                         f"training / validation years (window={window}, horizon={horizon})")
    mu, sd = v[:fit_end].mean(), v[:fit_end].std()
    z = ((v - mu) / sd).astype(np.float32)
    train_starts = np.arange(0, fit_end - window - horizon + 1)
    if split == "valid":
        test_starts = np.arange(fit_end - window, train_end - window - horizon + 1)
    else:
        test_starts = np.arange(train_end - window, len(v) - window - horizon + 1)
    x_tr, y_tr = _windows(z, train_starts, window, horizon)
    x_te, y_te = _windows(z, test_starts, window, horizon)

    def rmse(pred, y):  # in sunspot units
        err = (pred - y) * sd
        return float(np.sqrt(np.mean(err[:, 0] ** 2))), float(np.sqrt(np.mean(err**2)))

    naive = rmse(np.repeat(x_te[:, -1:], horizon, axis=1), y_te)
    design = lambda x: np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1)
    coef, *_ = np.linalg.lstsq(design(x_tr).astype(np.float64), y_tr.astype(np.float64), rcond=None)
    linear = rmse(design(x_te) @ coef, y_te)

    train_x, train_y = jnp.asarray(x_tr[..., None]), jnp.asarray(y_tr)

    def sample(key, batch_size: int) -> dict:
        idx = jax.random.randint(key, (batch_size,), 0, train_x.shape[0])
        return {"xs": train_x[idx], "ys": train_y[idx]}

    def loss(outputs, batch):
        err = outputs.astype(jnp.float32) - batch["ys"]
        mse = jnp.mean(jnp.square(err))
        return mse, {"mse": mse, "rmse_1": jnp.sqrt(jnp.mean(jnp.square(err[:, 0]))) * sd,
                     "rmse": jnp.sqrt(mse) * sd}

    return Task(
        name="sunspots", input_size=1, output_size=horizon, readout="last", sample=sample,
        test={"xs": x_te[..., None], "ys": y_te}, loss=loss, metric="rmse", mode="min",
        baselines={"naive": {"rmse_1": naive[0], "rmse": naive[1]},
                   "linear": {"rmse_1": linear[0], "rmse": linear[1]}},
        solved=None,
        info={"window": window, "horizon": horizon, "train_years": f"{years[0]}-{years[fit_end - 1]}",
              "test_target_years": (f"{years[fit_end]}-{years[train_end - 1]}" if split == "valid"
                                    else f"{years[train_end]}-{years[-1]}"),
              "split": split, "n_train": len(x_tr), "n_test": len(x_te),
              "mean": float(mu), "std": float(sd), "units": "sunspot number (yearly)",
              "source": "statsmodels.datasets.sunspots"},
    )
