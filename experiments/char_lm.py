"""The char LM target of issue 14: a stacked LSTM on the shipped Shakespeare, at most 2.2 bpc on validation.

Protocol (the fair-comparison one, adapted to one long text):
- training: truncated BPTT (``memcell.train.make_stream_train_step``): 32 contiguous rows of the
  training text, windows of 100 characters, the carry kept from window to window (restarted
  where a play begins); dropout between the layers and before the readout (Zaremba et al.
  2014's non-recurrent dropout), Adam with clipping and cosine decay; every learning rate x
  seed trained together, vmapped in one jit;
- the held-out text (the last 10%, the task's validation split) is read as one stream, the
  carry kept, and cut in two: the first ``valid_chars`` characters select (the best evaluation
  of each model is kept, and the learning rate with the best mean over seeds is chosen), the
  rest reports (measured at every evaluation for the curves, it never enters a choice). The bpc
  of the whole held-out text at those params is given too (the issue's "validation split").

    python experiments/char_lm.py                         # the recorded run (docs/tasks.md)
    python experiments/char_lm.py --steps 40 --hidden 32 --eval-every 20 --warmup 5 --out /tmp/x   # a quick look

Writes results/char_lm/report.md and results.json (``experiments/fair_data.py`` reads the
latter into its table when present).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import parse_config, plot_curves  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    cell: str = "lstm"
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.25  # between the layers and before the readout, training only
    length: int = 100  # the truncated-BPTT window
    batch_size: int = 32
    steps: int = 6000
    lrs: tuple[float, ...] = (3e-3,)
    seeds: int = 1
    warmup: int = 100
    eval_every: int = 500
    valid_chars: int = 20000  # the held-out text's first characters select, the rest report
    max_minutes: float = 0.0  # wall-time cap of the training loop (0: none)
    backend: str = "auto"
    out: str = "results"


def output_dropout(lyr, rate: float):
    """``lyr`` (a ``memcell.Layer``) with dropout on its outputs when ``apply`` gets a key."""
    import jax
    import jax.numpy as jnp

    from memcell.types import Layer

    def apply(params, xs, carry=None, *, lengths=None, resets=None, key=None):
        k_in, k_out = (None, None) if key is None else tuple(jax.random.split(key))
        carry, ys = lyr.apply(params, xs, carry, lengths=lengths, resets=resets, key=k_in)
        if k_out is not None and rate > 0.0:
            keep = jax.random.bernoulli(k_out, 1.0 - rate, ys.shape)
            ys = jnp.where(keep, ys / (1.0 - rate), jnp.zeros_like(ys))
        return carry, ys

    return Layer(lyr.init, apply)


def build_model(config: Config, task):
    import memcell
    from memcell import tasks

    cells = [memcell.layer(tasks.make_cell(config.cell, config.hidden), backend=config.backend)
             for _ in range(config.layers)]
    lyr = memcell.stack(cells, dropout=config.dropout) if config.layers > 1 else cells[0]
    return tasks.sequence_model(output_dropout(lyr, config.dropout), task.output_size, "all")


def stream_bits(task, model):
    """``params -> bits [m]``: each held-out character's cross-entropy in bits, the text read in
    order with the carry kept (restarted where a play begins)."""
    import jax
    import jax.numpy as jnp

    s = task.stream
    V = task.input_size
    cuts = [0, *(int(j) for j in s.valid_starts), len(s.valid_xs)]
    pieces = [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]

    def bits(params):
        out = []
        for lo, hi in pieces:
            xs = jax.nn.one_hot(jnp.asarray(s.valid_xs[None, lo:hi]), V, dtype=jnp.float32)
            _, ys = model.layers.apply(params.rnn, xs)
            logp = jax.nn.log_softmax(model.head(params, ys)[0], axis=-1)
            out.append(-jnp.take_along_axis(logp, jnp.asarray(s.valid_ys[lo:hi])[:, None], axis=-1)[:, 0])
        return jnp.concatenate(out) / math.log(2.0)

    return bits


def train(config: Config, task, model) -> dict:
    """Every (lr, seed) pair trained together; each model's best params on the selection part kept."""
    import jax
    import jax.numpy as jnp

    from memcell import tasks, train as mtrain

    if not 1 <= config.eval_every <= config.steps:
        raise ValueError(f"eval_every must lie in [1, steps={config.steps}], got {config.eval_every}")
    if config.seeds < 1 or not config.lrs:
        raise ValueError(f"seeds must be >= 1 and lrs non-empty, got seeds={config.seeds}, lrs={config.lrs}")
    if not 0 < config.valid_chars < len(task.stream.valid_xs):
        raise ValueError(f"valid_chars must lie in (0, {len(task.stream.valid_xs)}) (the held-out characters), "
                         f"got {config.valid_chars}")
    seeds = list(range(config.seeds))
    keys = [s for _ in config.lrs for s in seeds]
    lr_of = [lr for lr in config.lrs for _ in seeds]
    n = len(keys)
    warmup = min(config.warmup, config.steps // 2)  # a short run (a quick look) keeps room to decay
    tx = mtrain.optimizer(config.lrs[0], clip_norm=1.0, warmup_steps=warmup, decay_steps=config.steps)
    states = mtrain.init_states(keys, lambda k: model.init(k, task.input_size), tx, learning_rates=lr_of)
    states = tasks.with_stream(task, model, states, config.batch_size)
    sample, _ = tasks.stream_sampler(task.stream, config.batch_size, config.length)
    step = mtrain.make_stream_train_step(tasks.stream_loss_fn(task, model), tx)
    bits = jax.vmap(stream_bits(task, model))
    sel = config.valid_chars

    def one(s, _):
        batch, cursor = sample(None, s.stream.cursor)
        s = s._replace(stream=s.stream._replace(cursor=cursor))
        s, m = step(s, batch)
        return s, (m["loss"], m["tokens"])

    @jax.jit
    def chunk(states, best_params, best_sel):
        states, (losses, tokens) = jax.vmap(lambda s: jax.lax.scan(one, s, None, length=config.eval_every))(states)
        b = bits(states.params)
        v_sel, v_rest, v_all = b[:, :sel].mean(1), b[:, sel:].mean(1), b.mean(1)
        better = jnp.isfinite(v_sel) & (v_sel < best_sel)
        pick = lambda old, new: jnp.where(better.reshape((n,) + (1,) * (new.ndim - 1)), new, old)
        train_bpc = (losses * tokens).sum(1) / tokens.sum(1) / math.log(2.0)
        return (states, jax.tree.map(pick, best_params, states.params), jnp.where(better, v_sel, best_sel),
                better, {"train_bpc": train_bpc, "select_bpc": v_sel, "report_bpc": v_rest, "valid_bpc": v_all})

    t0, c0 = time.perf_counter(), time.process_time()
    best_params, best_sel = states.params, jnp.full((n,), jnp.inf)
    best_step, history = np.zeros(n, np.int64), []
    for i in range(1, config.steps // config.eval_every + 1):
        states, best_params, best_sel, better, m = chunk(states, best_params, best_sel)
        best_step[np.asarray(better)] = i * config.eval_every
        history.append({"step": i * config.eval_every, **{k: np.asarray(v).tolist() for k, v in m.items()}})
        print(f"step {i * config.eval_every}: " + ", ".join(
            f"{k} {np.array2string(np.asarray(v), precision=3)}" for k, v in m.items())
            + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        if config.max_minutes and time.perf_counter() - t0 > 60 * config.max_minutes:
            break
    k = int(np.argmin(np.asarray(best_sel).reshape(len(config.lrs), len(seeds)).mean(1)))
    chosen = jax.tree.map(lambda x: x[k * len(seeds):(k + 1) * len(seeds)], best_params)
    final = np.asarray(bits(chosen))  # at the chosen params: the reporting part and the whole held-out text
    return {
        "chosen_lr": config.lrs[k], "best_step": best_step[k * len(seeds):(k + 1) * len(seeds)].tolist(),
        "select_bpc": np.asarray(best_sel)[k * len(seeds):(k + 1) * len(seeds)].tolist(),
        "select_by_lr": {str(lr): np.asarray(best_sel).reshape(len(config.lrs), len(seeds))[i].tolist()
                         for i, lr in enumerate(config.lrs)},
        "report_bpc": final[:, sel:].mean(1).tolist(), "valid_bpc": final.mean(1).tolist(),
        "history": history, "steps_run": history[-1]["step"],
        "wall_time": time.perf_counter() - t0, "cpu_minutes": (time.process_time() - c0) / 60,
        "params": int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(jax.tree.map(lambda x: x[0], chosen)))),
    }


def main(config: Config) -> dict:
    from memcell import tasks

    task = tasks.char_lm(config.length)
    model = build_model(config, task)
    r = train(config, task, model)
    info = {"train_chars": int(len(task.stream.train)), "valid_chars": int(len(task.stream.valid_xs)),
            "baselines": task.baselines}
    result = {"config": dataclasses.asdict(config), "info": info, **r}
    out = pathlib.Path(config.out) / "char_lm"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    label = f"{config.cell} {config.layers}x{config.hidden}, dropout {config.dropout}"
    k = config.lrs.index(r["chosen_lr"]) * config.seeds
    curve = lambda key: [{"step": h["step"], "bpc": h[key][k:k + config.seeds]} for h in r["history"]]
    plot_curves(out / "curves.png", {f"char LM, {label}": {"validation split": curve("valid_bpc"),
                                                            "training windows": curve("train_bpc")}}, "bpc")
    fmt = lambda v: f"{np.mean(v):.3f}" + (f" ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else "")
    text = [f"# char LM, {label}", "",
            f"- params {r['params']:,}; lr {r['chosen_lr']:g} (of {list(config.lrs)}); seeds {config.seeds}; "
            f"{r['steps_run']} updates of {config.batch_size} windows of {config.length} (truncated BPTT)",
            f"- held-out bpc at each model's best selection-part evaluation (step {r['best_step']}): "
            f"selection part {fmt(r['select_bpc'])}, reporting part {fmt(r['report_bpc'])}, "
            f"whole validation split {fmt(r['valid_bpc'])}",
            f"- {r['wall_time'] / 60:.1f} wall minutes, {r['cpu_minutes']:.1f} CPU minutes",
            "", "![validation bpc against updates](curves.png)"]
    (out / "report.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return result


if __name__ == "__main__":
    main(parse_config(Config))
