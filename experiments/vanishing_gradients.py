"""Vanishing and exploding gradients through time, measured with memcell.jacobian.

For plain tanh RNNs of several recurrent spectral radii (Bengio et al. 1994, Pascanu et al.
2013), LSTMs with forget bias 0 and 1, chrono init (Tallec and Ollivier 2018) and no forget gate,
a GRU, and the modern minGRU, LRU and sLSTM: the norm of d h_T / d h_{T-k} against the lag k, up to k = 1000, at initialisation and
after training on a small adding problem (Hochreiter and Schmidhuber 1997; memcell.tasks.adding,
trained with memcell.train.fit). Every number comes
from memcell.jacobian (gradient_norms_through_time, decay_rate, lyapunov_exponent, product_norms
of the LSTM's cell-path Jacobians, carry_gates for its forget gates) and memcell.tasks
(gradient_norms_by_lag: the training loss's gradient by lag); the figures are memcell.plot's.

Writes under ``out_dir`` only (results/ by default): report.md, results.json (the raw numbers),
and PNG figures. Refreshing the docs page from a run is a separate, explicit step:
``--docs-dir docs`` (``make demo-docs``) copies the report (as docs/vanishing_gradients.md) and
the figures (docs/figures/) there.

    python experiments/vanishing_gradients.py                       # CPU-sized defaults (make demo)
    python experiments/vanishing_gradients.py --docs-dir docs       # the same, and refresh the docs page
    python experiments/vanishing_gradients.py --hidden-size 64 --train-steps 2000
"""

import dataclasses
import json
import math
import pathlib
import re
import shutil
import sys
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

import memcell
from memcell import jacobian as J
from memcell import plot as figures
from memcell import tasks, train

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import parse_config, provenance, provenance_line, recorded_marker  # noqa: E402


@dataclass(frozen=True)
class Config:
    """Gradient norm through time of tanh RNNs, LSTMs and a GRU, at init and after training on the adding problem."""

    hidden_size: int = 32
    eval_len: int = 1001  # steps of the measured sequences: lags 0 .. 1000
    eval_seqs: int = 4  # sequences the log-norms are averaged over (a geometric mean of the norms)
    train_len: int = 50  # adding-problem length for training (small: this is not the task suite)
    train_steps: int = 400  # 0 skips training
    batch_size: int = 64
    learning_rate: float = 3e-3
    clip_norm: float = 1.0
    chrono_max_timescale: float = 1000.0
    cells: str = "rnn_0.5,rnn_0.9,rnn_1.0,rnn_1.5,lstm_fb0,lstm_fb1,lstm_chrono,lstm_nfg,gru,mingru,lru,slstm"
    seed: int = 0
    out_dir: str = "results/vanishing_gradients"
    docs_dir: str = ""  # "docs" copies the report and figures there (the explicit refresh of the docs page)
    dpi: int = 100


# ----------------------------------------------------------------------------- cells and task


def make_cell(name: str, cfg: Config) -> tuple[memcell.Cell, str]:
    """The cell for a name of ``cfg.cells``, and its label on the plots."""
    H = cfg.hidden_size
    if name.startswith("rnn_"):
        radius = float(name[4:])
        return memcell.rnn(H, recurrent_scale=radius), f"tanh RNN, radius {radius:g}"
    table = {  # name -> (factory of the cell, label): only the named cell is built
        "lstm_fb0": (lambda: memcell.lstm(H, forget_bias=0.0), "LSTM, forget bias 0"),
        "lstm_fb1": (lambda: memcell.lstm(H, forget_bias=1.0), "LSTM, forget bias 1"),
        "lstm_chrono": (
            lambda: memcell.lstm(H, init="chrono", max_timescale=cfg.chrono_max_timescale),
            f"LSTM, chrono init ({cfg.chrono_max_timescale:g})",
        ),
        "lstm_nfg": (lambda: memcell.lstm(H, forget_gate=False), "LSTM, no forget gate"),
        "gru": (lambda: memcell.gru(H), "GRU"),
        "mingru": (lambda: memcell.mingru(H), "minGRU"),
        "minlstm": (lambda: memcell.minlstm(H), "minLSTM"),
        "lru": (lambda: memcell.lru(H), "LRU"),
        "rglru": (lambda: memcell.rglru(H), "RG-LRU"),
        "slstm": (lambda: memcell.slstm(H, num_heads=4), "sLSTM, 4 heads"),
        "mlstm": (lambda: memcell.mlstm(H, num_heads=4), "mLSTM, 4 heads"),
    }
    if name not in table:
        raise ValueError(f"cells: unknown cell {name!r}; use rnn_<radius> or one of {sorted(table)}")
    factory, label = table[name]
    return factory(), label


BASELINE_MSE = 1.0 / 6.0  # predicting the mean target of the adding problem: the target's variance


def loss_profile_fn(task, model):
    """``params -> ||dL/dh||`` at every lag before the readout, averaged over the task's test
    sequences (``memcell.tasks.gradient_norms_by_lag``), compiled once for all the params it gets."""
    profile = jax.jit(lambda params: tasks.gradient_norms_by_lag(task, model, params, n=len(task.test["xs"])))
    return lambda params: np.asarray(profile(params))


def train_model(task, model, state, cfg: Config, log_path: pathlib.Path):
    """``cfg.train_steps`` updates of ``memcell.train.fit`` (Adam, clipping) on ``task``, a linear
    readout of h_T. Returns the trained params, the training MSE of every step (read back from
    the JSONL log) and ||dL/dh|| by lag on the test sequences before and after training."""
    tx = train.optimizer(cfg.learning_rate, clip_norm=cfg.clip_norm)
    step = train.make_train_step(tasks.loss_fn(task, model), tx)
    result = train.fit(step, state, lambda key: task.sample(key, cfg.batch_size), steps=cfg.train_steps,
                       log_path=log_path, progress=False)
    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    profile = loss_profile_fn(task, model)
    profiles = {"first": profile(state.params), "last": profile(result.state.params)}
    return result.state.params, losses, profiles


# ----------------------------------------------------------------------------- measurements


def measure(name: str, cell, params, xs) -> dict:
    """Gradient flow of one cell on the evaluation sequences, all from memcell.jacobian."""
    log_g = J.gradient_norms_through_time(cell, params, xs, log=True)  # [n, T]
    mean_log = np.asarray(jnp.mean(log_g, axis=0), np.float64)  # the log of the geometric-mean norm
    out = {
        "log_norms": mean_log,
        "rate": float(J.decay_rate(jnp.asarray(mean_log), log=True)),
        "lyapunov": float(jnp.mean(J.lyapunov_exponent(cell, params, xs, transient=50))),
    }
    if name.startswith("lstm") and name != "lstm_nfg":
        # The memory-cell path alone, d c_T / d c_{T-k} = prod diag(f), on the first sequence,
        # against the forget gates read off the LSTM equations.
        jac = J.state_jacobians(cell, params, xs[0])
        log_cell = J.product_norms(jac.c.c, log=True)
        out["cell_path_rate"] = float(J.decay_rate(log_cell, log=True))
        out["cell_path_log_norms"] = np.asarray(log_cell, np.float64)
        log_f = np.log(np.asarray(J.carry_gates(cell, params, xs[0], field="c"), np.float64))  # the forget gates
        out["mean_log_f_best_unit"] = float(np.max(np.mean(log_f[1:], axis=0)))
        H = params.w_h.shape[0]
        out["mean_forget_bias"] = float(jnp.mean(params.b[H : 2 * H]))
    if isinstance(cell.spec, memcell.LinearSpec):
        # The step Jacobian of a linear recurrence is diag(a_t), exactly: the gradient norm at lag k
        # is max over units of prod |a_t|, so the coefficients predict the decay rate.
        a, _ = cell.spec.coefficients(params, xs)
        log_abs_a = np.asarray(a if cell.spec.log_space else jnp.log(jnp.abs(a)), np.float64)  # [n, T, h]
        out["predicted_rate"] = float(np.max(np.mean(log_abs_a, axis=(0, 1))))
        out["max_modulus"] = float(np.exp(np.max(log_abs_a)))
    return out


def at_lag(log_norms: np.ndarray, k: int) -> float | None:
    return float(log_norms[k]) if k < len(log_norms) else None


def fmt_norm(log_norm: float | None) -> str:
    """A norm given by its natural log, printed without under- or overflow (1e-434 is fine)."""
    if log_norm is None:
        return "n/a"
    if not math.isfinite(log_norm):
        return "0" if log_norm < 0 else "inf"
    e10 = log_norm / math.log(10)
    exponent = math.floor(e10)
    return f"{10 ** (e10 - exponent):.1f}e{exponent:+d}"


# ----------------------------------------------------------------------------- outputs


def plot(results: dict, phase: str, labels: dict, path: pathlib.Path, cfg: Config) -> None:
    """log10 of ``||d h_T / d h_(T-k)||`` against the lag, one colour a cell, the tanh RNNs dashed."""
    series = {f"{labels[n]}: rate {r[phase]['rate']:+.4f}/step": r[phase]["log_norms"] for n, r in results.items()
              if phase in r}
    dashed = {f"{labels[n]}: rate {r[phase]['rate']:+.4f}/step": "--" for n, r in results.items()
              if phase in r and n.startswith("rnn")}
    when = "at initialisation" if phase == "init" else f"after {cfg.train_steps} steps on the adding problem (T={cfg.train_len})"
    figures.norms_by_lag(path, {f"Gradient norm vs lag, {when}": series}, log_norms=True, ylim=(-30, 8),
                      xlabel="lag k (steps back)", ylabel=r"$\log_{10}\ \|\partial h_T / \partial h_{T-k}\|_2$",
                      linestyles=dashed, legend_loc="lower left", dpi=cfg.dpi)


def plot_loss_profiles(results: dict, labels: dict, path: pathlib.Path, cfg: Config) -> None:
    """``||dL/dh||`` by lag before the readout, at initialisation and after training, one colour a cell."""
    panels = {}
    for which, when in (("first", "at initialisation"), ("last", f"after {cfg.train_steps} steps")):
        panels[f"{when} ({cfg.batch_size} test sequences)"] = {
            labels[n]: r["profiles"][which] for n, r in results.items() if "profiles" in r}
    dashed = {labels[n]: "--" for n in results if n.startswith("rnn")}
    figures.norms_by_lag(path, panels, xlabel="lag k (steps before the readout)", linestyles=dashed,
                      ylabel=r"$\|\partial L / \partial h_{T-k}\|$ (batch mean)", legend_loc="lower left", dpi=cfg.dpi)


def table_rows(results: dict, labels: dict) -> list[list[str]]:
    rows = []
    for name, res in results.items():
        for phase in ("init", "trained"):
            if phase not in res:
                continue
            r = res[phase]
            mse = res.get("final_mse") if phase == "trained" else None
            rows.append([
                labels[name], phase, f"{r['rate']:+.4f}", f"{math.exp(r['rate']):.4f}",
                fmt_norm(at_lag(r["log_norms"], 10)), fmt_norm(at_lag(r["log_norms"], 100)),
                fmt_norm(at_lag(r["log_norms"], 1000)), f"{r['lyapunov']:+.4f}",
                "" if mse is None else f"{mse:.4f}",
            ])
    return rows


HEADER = ["cell", "phase", "rate/step", "factor/step", "norm@10", "norm@100", "norm@1000", "Lyapunov", "train MSE"]


def markdown_table(rows) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def radius_order(results: dict) -> str:
    """How the tanh RNNs' rates at init order by radius, as measured (one seed: not always monotone)."""
    rates = sorted((float(n[4:]), r["init"]["rate"]) for n, r in results.items() if n.startswith("rnn_"))
    if len(rates) < 2:
        return ""
    if all(a[1] <= b[1] for a, b in zip(rates, rates[1:])):
        return ", steeper for smaller radii"
    swaps = [f"radius {b[0]:g} ({b[1]:+.4f}) decays faster than radius {a[0]:g} ({a[1]:+.4f})"
             for a, b in zip(rates, rates[1:]) if b[1] < a[1]]
    return ", mostly steeper for smaller radii; in this run (one seed) " + ", ".join(swaps)


def story(results: dict, labels: dict, cfg: Config) -> str:
    """Sentences read off the measured numbers (so they stay true when the numbers change)."""
    out = []
    for name, res in results.items():
        init, trained = res["init"], res.get("trained")
        g100 = fmt_norm(at_lag(init["log_norms"], 100))
        if name.startswith("rnn"):
            radius = float(name[4:])
            line = (
                f"- **{labels[name]}**: a factor {math.exp(init['rate']):.3f} per step at init (rate "
                f"{init['rate']:+.4f}, against {math.log(radius):+.4f} for log(radius) alone: tanh' < 1 "
                f"takes the rest), so {g100} at lag 100."
            )
        elif "cell_path_rate" in init:
            line = (
                f"- **{labels[name]}**: the memory-cell path alone decays at {init['cell_path_rate']:+.4f}/step "
                f"at init, and the mean log forget gate of the unit that keeps the most is "
                f"{init['mean_log_f_best_unit']:+.4f}; d h_T/d h_(T-k) is {g100} at lag 100."
            )
        elif "predicted_rate" in init:
            line = (
                f"- **{labels[name]}**: its step Jacobian is diag(a_t) exactly, so its coefficients predict the "
                f"rate max over units of mean log|a_t| = {init['predicted_rate']:+.4f}/step (largest |a| "
                f"{init['max_modulus']:.4f}); measured {init['rate']:+.4f}/step at init, {g100} at lag 100."
            )
        else:
            line = f"- **{labels[name]}**: rate {init['rate']:+.4f}/step at init, {g100} at lag 100."
        out.append(line)
        if trained is not None:
            extra = ""
            if "predicted_rate" in trained:
                extra = f" (predicted by its coefficients: {trained['predicted_rate']:+.4f}/step)"
            if "cell_path_rate" in trained:
                extra = (
                    f"; cell path {init['cell_path_rate']:+.4f} -> {trained['cell_path_rate']:+.4f}/step "
                    f"(mean log f of the best unit {trained['mean_log_f_best_unit']:+.4f}, mean forget "
                    f"bias {init['mean_forget_bias']:+.3f} -> {trained['mean_forget_bias']:+.3f})"
                )
            out.append(
                f"  After training (MSE {res['final_mse']:.4f}; the mean predictor gets {BASELINE_MSE:.4f}): "
                f"rate {trained['rate']:+.4f}/step, {fmt_norm(at_lag(trained['log_norms'], 100))} at lag 100{extra}."
            )
    ranked = sorted(results, key=lambda n: -results[n]["init"]["rate"])
    out.append(
        "\nRanked by how well they keep the gradient at init (slowest decay first): "
        + ", ".join(f"{labels[n]} ({results[n]['init']['rate']:+.4f})" for n in ranked)
        + "."
    )
    if all("trained" in r for r in results.values()):
        ranked = sorted(results, key=lambda n: -results[n]["trained"]["rate"])
        out.append(
            "After training: "
            + ", ".join(f"{labels[n]} ({results[n]['trained']['rate']:+.4f})" for n in ranked)
            + "."
        )
    gated = [n for n, r in results.items() if "trained" in r and "cell_path_rate" in r["trained"]]
    if gated:
        elsewhere = [
            n for n in gated
            if results[n]["trained"]["rate"] > results[n]["trained"]["cell_path_rate"] + 0.02
            and abs(results[n]["trained"]["mean_forget_bias"] - results[n]["init"]["mean_forget_bias"]) < 0.25
        ]
        if elsewhere:
            out.append(
                "\nWhere the gradient travels after training: for "
                + ", ".join(labels[n] for n in elsewhere)
                + ", the whole-carry path d h_T/d h_(T-k) decays more slowly than the memory-cell path alone "
                "(compare the rates above) while the mean forget bias moved by less than 0.25: this short "
                f"training on {cfg.train_len}-step sequences kept the gradient through the gated h-to-c-to-h loop "
                "rather than by opening the forget gates. Chrono init has the slow cell path from the start."
            )
    return "\n".join(out)


GUIDE = """# Vanishing gradients through time

Why the LSTM exists, measured. The gradient that reaches a recurrent net's hidden state from
`k` steps later is a product of `k` step Jacobians,

    d h_T / d h_(T-k) = J_T J_(T-1) ... J_(T-k+1),    J_t = d carry_t / d carry_(t-1),

and a product of `k` matrices grows or shrinks geometrically in `k`. For a plain tanh RNN,
`J_t = diag(1 - h_t^2) U^T`, so its norm is at most `rho(U)^k` when `U` is a scaled orthogonal
matrix of spectral radius `rho`: the gradient vanishes at a rate set by the recurrent weights
(faster still where tanh saturates), or explodes when the weights are large enough to make the
dynamics chaotic (Bengio et al. 1994, Pascanu et al. 2013). The LSTM's memory cell adds a path
along which `d c_t / d c_(t-1) = diag(f_t)`: no weight matrix and no squashing, only the forget
gates, so the gradient along it decays at the rate `mean log f` set by the gates, and not at all
where `f = 1` (the constant error carousel of Hochreiter and Schmidhuber 1997, with the forget
gate of Gers et al. 2000). With forget bias 0 the gates start near `sigmoid(0) = 0.5`, and the
cell path loses about a factor 2 a step, as fast as a contracting RNN; a larger forget bias, or
chrono init (which spreads `1 / (1 - f)` up to a chosen timescale), starts them nearer 1.
Training can also open a slow path elsewhere (see the results). The GRU's update gate plays the
same part: `h' = (1 - z) n + z h` keeps `diag(z)` of the gradient each step.

The modern recurrent cells keep the lesson and drop the rest. minGRU (Feng et al. 2024) computes
its gates from the input alone, `h_t = (1 - z_t) h_(t-1) + z_t h~_t`, and the LRU (Orvieto et al.
2023) is a complex diagonal linear recurrence `x_t = lambda x_(t-1) + gamma B u_t`: for both, the
step Jacobian is exactly `diag(a_t)` (`1 - z_t`, or `lambda`), with no recurrent matrix and no
squashing, so the gradient at lag `k` is the largest product of `|a_t|` over the `k` steps and its
decay rate is read off the coefficients before any Jacobian is taken. The table below puts that
prediction beside the measurement. sLSTM (Beck et al. 2024) keeps the LSTM's memory cell with an
exponential input gate, a normaliser and head-wise recurrent weights: it is measured like the LSTM.

## The toolkit: `memcell.jacobian`

Pure functions, for any `Cell` (user-defined ones too), batched, under `jit` and `vmap`:

| function | what it gives |
|---|---|
| `gradient_norms_through_time(cell, params, xs, *, carry=None, norm="spectral", hidden="h", log=False)` | `[*b, T]`: `||d h_T / d h_(T-k)||` for every lag `k`, in one reverse scan of batched vjps |
| `input_gradient_norms(...)` | `[*b, T]`: `||d h_T / d x_t||`, how far back the last output can see |
| `singular_value_spectra(...)` | `[*b, T, h]`: the singular values of every product |
| `state_jacobians(cell, params, xs, *, flat=False)` | the step Jacobians `d carry_t / d carry_(t-1)` by block (the LSTM's `jac.c.c` is the cell path alone) |
| `product_norms(jacobians, *, norm, log)` | norms of the backward products of any stack of step Jacobians |
| `lyapunov_exponent(cell, params, xs, *, key, transient)` | the largest Lyapunov exponent of the carry dynamics |
| `decay_rate(norms, *, log, start, stop)` | the slope of log-norm vs lag: "vanishes at rate r per step" |
| `unroll_with_probes`, `loss_gradient_norms` | `||dL / dh_t||` for every `t` in the training backward pass (zero probes) |
| `carry_gates(cell, params, xs, *, field="c")` | each unit's gate on its own past, the diagonal of `d c_t / d c_(t-1)`: the LSTM's forget gates, a linear cell's `a_t` |

The hidden part of a carry is its field named `hidden` (default `"h"`; a one-leaf carry is its
own), and derivatives with respect to `h_t` hold the carry's other parts (the LSTM's `c`) fixed
at step `t`. `log=True` returns log-norms that stay exact where the norms under- or overflow.
On a run of your own, `memcell flow RUN_DIR` applies them to a `memcell train --out RUN_DIR`
run: the loss gradient against the lag on the task's test sequences, for the initial and the
trained params of every seed, with its decay rate per step (see
[the command line](tasks.md#seeing-a-run-learning-curves-and-memcell-flow)).

```python
import jax, memcell
from memcell.jacobian import gradient_norms_through_time, decay_rate

cell = memcell.rnn(32, recurrent_scale=0.9)
params = cell.init(jax.random.key(0), input_size=1)
xs = jax.random.normal(jax.random.key(1), (300, 1))
log_g = gradient_norms_through_time(cell, params, xs, log=True)
print(float(decay_rate(log_g, log=True)))   # about -0.5: a factor 0.6 lost per step
```

## The experiment

`make demo` runs `experiments/vanishing_gradients.py`, which writes its report and figures into
`results/vanishing_gradients/`: the numbers below come from a recorded run of it (its command,
commit, config and wall time close this page; `make demo-docs` reruns it and refreshes this page
and its figures). Every cell
has {hidden} hidden units and one seed; the norms are geometric means over the {seqs} test
sequences of an adding problem of {T} steps (lags 0 to {maxlag}); "rate" is the fitted slope
of the natural log of the norm against the lag (`decay_rate`), "factor" its exponential, and
"Lyapunov" the largest Lyapunov exponent of the whole carry along the same sequences.
Training: {steps} Adam steps (learning rate {lr}, clipping at {clip}; `memcell.train.fit`) on
the adding problem with {train_len} steps (`memcell.tasks.adding`), batch {batch}, a linear
readout of the last hidden state (`memcell.tasks.sequence_model`, its bias started at the mean
target, 1); predicting the mean gives an MSE of {baseline:.4f}.
"""


def write_report(results: dict, labels: dict, cfg: Config, out: pathlib.Path, seconds: float) -> str:
    guide = GUIDE.format(
        hidden=cfg.hidden_size, seqs=cfg.eval_seqs, T=cfg.eval_len, maxlag=cfg.eval_len - 1,
        steps=cfg.train_steps, lr=cfg.learning_rate, clip=cfg.clip_norm, train_len=cfg.train_len,
        batch=cfg.batch_size, baseline=BASELINE_MSE,
    )
    figs = ["![gradient norm vs lag at initialisation](figures/vanishing_gradients_init.png)"]
    if cfg.train_steps > 0:
        figs += [
            "![gradient norm vs lag after training](figures/vanishing_gradients_trained.png)",
            "![dL/dh by lag before the readout, at init and after training](figures/vanishing_gradients_loss_profile.png)",
        ]
    prov = provenance()
    text = f"""{guide}
{recorded_marker(prov)}
Recorded with `{prov["command"]}` at commit `{prov["commit"]}` ({prov["machine"]}):

{markdown_table(table_rows(results, labels))}
<!-- end -->

{figs[0]}

The dashed lines (plain tanh RNNs) fall as straight lines on this log scale: geometric decay
at a rate set by the recurrent radius{radius_order(results)}. The solid lines are the gated
cells: they keep the gradient exactly as far as their gates are open. The values below are read
off the measurements by the script:

{story(results, labels, cfg)}

{chr(10).join(figs[1:])}

{f"The second figure repeats the first after training; the third shows the gradient of the training loss with respect to the hidden state k steps before the readout, ||dL/dh_(T-k)||, averaged over {cfg.batch_size} test sequences of the training task, at initialisation and after training (`memcell.tasks.gradient_norms_by_lag`, from `loss_gradient_norms`' zero probes through `unroll_with_probes`): the loss sits at the last step, so its gradient reaches early steps only through the product above." if cfg.train_steps > 0 else ""}

{provenance_line(prov)} Config: `{json.dumps(dataclasses.asdict(cfg))}`; {seconds:.0f} s on this machine
(jax {jax.__version__}, {jax.default_backend()}).
"""
    (out / "report.md").write_text(text)
    return text


def to_json(results: dict) -> dict:
    def conv(v):
        if isinstance(v, np.ndarray):
            return [x if math.isfinite(x) else None for x in v.astype(float).tolist()]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return conv(results)


# ----------------------------------------------------------------------------- main


def copy_to_docs(out: pathlib.Path, docs: pathlib.Path) -> None:
    """A run's report and figures over the docs page (``docs/vanishing_gradients.md``, ``docs/figures/``):
    the explicit refresh of the page, never part of ``make demo``."""
    text = (out / "report.md").read_text()
    (docs / "figures").mkdir(parents=True, exist_ok=True)
    for name in re.findall(r"\]\(figures/([\w.-]+\.png)\)", text):  # the figures the report shows
        shutil.copy(out / "figures" / name, docs / "figures" / name)
    (docs / "vanishing_gradients.md").write_text(text)


def run_cell(name: str, cell, index: int, train_task, xs_eval, cfg: Config, out: pathlib.Path) -> dict:
    """The measurements of one cell at init and, with ``cfg.train_steps``, after training."""
    model = tasks.sequence_model(cell, train_task.output_size, train_task.readout)
    tx = train.optimizer(cfg.learning_rate, clip_norm=cfg.clip_norm)
    key = jax.random.fold_in(jax.random.key(cfg.seed), index)
    # The readout's bias starts at the mean target, 1, so training starts at the mean predictor.
    init = lambda k: model.init(k, train_task.input_size)._replace(b=jnp.ones((train_task.output_size,)))
    state = train.init_state(key, init, tx)
    res = {"init": measure(name, cell, state.params.rnn, xs_eval)}
    if cfg.train_steps > 0:
        params, losses, profiles = train_model(train_task, model, state, cfg, out / "logs" / f"{name}.jsonl")
        res["trained"] = measure(name, cell, params.rnn, xs_eval)
        res["final_mse"] = float(np.mean(losses[-20:]))
        res["losses"] = np.asarray(losses)
        res["profiles"] = profiles
    return res


def main(cfg: Config) -> dict:
    t0 = time.time()
    out = pathlib.Path(cfg.out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    # The measured sequences: the test set of a long adding problem; training draws its own batches.
    xs_eval = jnp.asarray(tasks.adding(cfg.eval_len, n_test=cfg.eval_seqs, seed=cfg.seed).test["xs"])
    train_task = tasks.adding(cfg.train_len, n_test=cfg.batch_size, seed=cfg.seed)
    names = [n.strip() for n in cfg.cells.split(",") if n.strip()]
    labels, results = {}, {}
    for i, name in enumerate(names):
        cell, labels[name] = make_cell(name, cfg)
        t = time.time()
        res = results[name] = run_cell(name, cell, i, train_task, xs_eval, cfg, out)
        trained = f", trained {res['trained']['rate']:+.4f}, MSE {res['final_mse']:.4f}" if "trained" in res else ""
        print(f"[{time.time() - t0:6.1f}s] {labels[name]:32s} rate init {res['init']['rate']:+.4f}{trained} ({time.time() - t:.1f}s)", flush=True)

    pngs = {"init": out / "figures" / "vanishing_gradients_init.png"}
    plot(results, "init", labels, pngs["init"], cfg)
    if cfg.train_steps > 0:
        pngs["trained"] = out / "figures" / "vanishing_gradients_trained.png"
        pngs["loss_profile"] = out / "figures" / "vanishing_gradients_loss_profile.png"
        plot(results, "trained", labels, pngs["trained"], cfg)
        plot_loss_profiles(results, labels, pngs["loss_profile"], cfg)
    seconds = time.time() - t0
    text = write_report(results, labels, cfg, out, seconds)
    (out / "results.json").write_text(json.dumps(
        {"config": dataclasses.asdict(cfg), "labels": labels, "results": to_json(results), "seconds": seconds}
    ))
    if cfg.docs_dir:
        copy_to_docs(out, pathlib.Path(cfg.docs_dir))

    rows = table_rows(results, labels)
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(HEADER)]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(HEADER, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"\nwrote {out}/report.md, results.json, figures/" + (f"; copied to {cfg.docs_dir}/" if cfg.docs_dir else "")
          + f" ({seconds:.0f} s)")
    return results


if __name__ == "__main__":
    main(parse_config(Config))
