"""The report of benchmarks/gpu.py: the targets, the measured tuning, and docs/benchmarks.md's GPU section."""

import datetime
import json
import time

import jax
import jax.numpy as jnp

START, END = "<!-- gpu:start -->", "<!-- gpu:end -->"


def _max_err(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _ms(v) -> str:
    return f"{1e3 * v:.2f}" if isinstance(v, float) else "n/a"


def _t(row, impl, what="train"):
    r = row["impls"].get(impl) if isinstance(row["impls"], dict) else None
    return r[what] if isinstance(r, dict) else None


def bf16_errors(rows) -> dict:
    """Max |ys_bf16 - ys_f32| of the pallas and fused paths, same params and inputs, per (section, shape)."""
    out = {}
    f32 = {(r["section"], r["shape"]): r for r in rows if r["dtype"] == "float32" and isinstance(r["impls"], dict)}
    for r in rows:
        ref = f32.get((r["section"], r["shape"]))
        if r["dtype"] != "bfloat16" or ref is None or not isinstance(r["impls"], dict) or r["shape"][1] > 4096:
            continue
        for impl in ("memcell pallas", "memcell fused", "memcell reference"):  # the reference: the cell's own bf16 error
            a, b = (x["impls"].get(impl) for x in (r, ref))
            if isinstance(a, dict) and isinstance(b, dict) and a["fwd"] and b["fwd"]:  # same params and inputs
                out[(r["section"], r["shape"], impl)] = _max_err(a["fwd"](), b["fwd"]())
    return out


# The GPU targets: (what, rows, time ratio numerator / denominator, whether a ratio meets it).
TARGETS = [
    ("pallas linear scan >= 10x the reference (train, T >= 4096)", "long", "memcell reference", "memcell pallas",
     lambda v: v >= 10),
    ("pallas linear scan >= 3x the parallel path (train, T >= 4096)", "long", "memcell parallel", "memcell pallas",
     lambda v: v >= 3),
    ("pallas LSTM <= 1.2x cuDNN's time (train)", "lstm", "memcell pallas", "memcell cuDNN", lambda v: v <= 1.2),
    ("pallas LSTM >= 2x faster than fused (train)", "lstm", "memcell fused", "memcell pallas", lambda v: v >= 2),
    ("pallas GRU >= 3x faster than the reference (train)", "gru", "memcell reference", "memcell pallas",
     lambda v: v >= 3),
    ("pallas GRU >= 3x faster than Flax GRUCell (train)", "gru", "flax GRUCell", "memcell pallas", lambda v: v >= 3),
]


def _verdict(name, pairs, ok) -> tuple[str, str]:
    pairs = [(k, v) for k, v in pairs if v is not None]
    if not pairs:
        return name, "unmeasured"
    met = "met" if all(ok(v) for _, v in pairs) else "not met"
    return name, f"{met}: " + ", ".join(f"{k} {v:.2f}" for k, v in pairs)


def targets(rows, errs) -> list[tuple[str, str]]:
    """Each target 'met', 'not met' or 'unmeasured', with the ratios (same run) behind it."""
    def ratio(row, num, den):
        a, b = _t(row, num), _t(row, den)
        return None if a is None or b is None else a / b

    f32 = [r for r in rows if r["dtype"] == "float32" and isinstance(r["impls"], dict)]
    groups = {"long": [r for r in f32 if r["section"] in ("mingru", "lru") and r["shape"][1] >= 4096],
              "lstm": [r for r in f32 if r["section"] == "lstm"], "gru": [r for r in f32 if r["section"] == "gru"]}
    label = lambda r: f"{r['section']} T={r['shape'][1]}" if r["section"] in ("mingru", "lru") else str(r["shape"])
    out = [_verdict(name, [(label(r), ratio(r, num, den)) for r in groups[group]], ok)
           for name, group, num, den, ok in TARGETS]
    out.append(_verdict("bf16 outputs within 1e-2 of float32 (pallas)",
                        [(f"{s} {sh}", v) for (s, sh, i), v in errs.items() if i == "memcell pallas"], lambda v: v <= 1e-2))
    speed = []
    for r in rows:
        f = next((x for x in f32 if x["section"] == r["section"] and x["shape"] == r["shape"]), None)
        if r["dtype"] == "bfloat16" and isinstance(r["impls"], dict) and f is not None:
            speed.append((label(r), ratio({"impls": {"a": r["impls"].get("memcell pallas"),
                                                     "b": f["impls"].get("memcell pallas")}}, "a", "b")))
    out.append(_verdict("bf16 step time <= 0.7x float32 (pallas, train)", speed, lambda v: v <= 0.7))
    return out


def tuning_json(rows, swept, device: str) -> dict:
    """What the run measured, in the form the tuning tables take (filled into them by hand)."""
    def best(cell, shape):
        done = [s for s in swept if s["cell"] == cell and s["shape"] == shape and isinstance(s["train"], float)]
        return min(done, key=lambda s: s["train"]) if done else None

    f32 = [r for r in rows if r["dtype"] == "float32" and isinstance(r["impls"], dict)]
    faster = {}  # cell -> whether pallas beat every other memcell path at every measured size (what auto needs)
    for r in f32:
        others = [_t(r, k) for k in r["impls"] if k.startswith("memcell") and k != "memcell pallas" and _t(r, k)]
        mine = _t(r, "memcell pallas")
        if mine is not None and others:
            faster[r["section"]] = faster.get(r["section"], True) and mine < min(others)
    parallel = {}
    for r in f32:
        if r["section"] in ("mingru", "lru") and _t(r, "memcell parallel") and _t(r, "memcell reference"):
            parallel.setdefault(r["section"], {})[r["shape"][1]] = _t(r, "memcell reference") / _t(r, "memcell parallel")
    blocks = {f"{c} {shape}": best(c, shape) for c, shape in sorted({(s["cell"], s["shape"]) for s in swept})}
    return {
        "device": device, "jax": jax.__version__, "date": datetime.date.today().isoformat(),
        "pallas": {"block_sweep_best": {c: (b and {"tuning": b["tuning"], "train_ms": 1e3 * b["train"]})
                                        for c, b in blocks.items()},
                   "faster_than_every_other_path": faster},
        "parallel": {"speedup_over_reference_by_T": parallel},
    }


def render(rows, errs, tests, checks, swept, tj, device, clock, smoke) -> str:
    lines = [START, "## GPU", ""]
    if smoke:
        lines += ["CPU smoke run (`--cpu-smoke`, Pallas interpret mode, tiny sizes): shows the script runs; "
                  "these are not GPU numbers.", ""]
    lines += [f"Device: {device}; jax {jax.__version__}; {datetime.date.today().isoformat()}; "
              f"`make bench-gpu` ran {time.time() - clock.start:.0f} s. Times are the minimum over interleaved "
              "rounds (ms); `x fused` is the fused path's time over this one (above 1: faster).", "", "### Tests", ""]
    lines += [f"- {k}: {v}" for k, v in tests.items()]
    lines += [f"- {name}: outputs {e:.1e}, gradients {g:.1e} (relative): {'ok' if ok else 'FAILED'}"
              for name, e, g, ok in checks]
    lines += ["", "### Targets", ""] + [f"- {name}: {verdict}" for name, verdict in targets(rows, errs)]
    for section in ("lstm", "gru", "mingru", "lru"):
        mine = [r for r in rows if r["section"] == section]
        if not mine:
            continue
        lines += ["", f"### {section}", "", "| B, T, D, H | dtype | implementation | train (ms) | x fused | forward (ms) |",
                  "|---|---|---|---|---|---|"]
        for r in mine:
            if not isinstance(r["impls"], dict):
                lines.append(f"| {r['shape']} | {r['dtype']} | {r['impls']} | | | |")
                continue
            fused = _t(r, "memcell fused") or _t(r, "fused LSTM")
            for name, v in r["impls"].items():
                if isinstance(v, dict):
                    x = f"{fused / v['train']:.2f}" if fused else "n/a"
                    lines.append(f"| {r['shape']} | {r['dtype']} | {name} | {_ms(v['train'])} | {x} | {_ms(v['forward'])} |")
                else:
                    lines.append(f"| {r['shape']} | {r['dtype']} | {name} | {v} | | |")
    if errs:
        lines += ["", "bf16 against float32, max |ys difference| (same params and inputs): " +
                  ", ".join(f"{s} {sh} {i}: {v:.1e}" for (s, sh, i), v in errs.items())]
    if swept:
        lines += ["", "### Pallas block sizes (training step, ms)", ""]
        for s in swept:
            blocks = " ".join(f"{k}={v}" for k, v in s["tuning"].items() if k != "resident_bytes")
            took = _ms(s["train"]) if isinstance(s["train"], float) else s["train"]
            lines.append(f"- {s['cell']} {s['shape']} {blocks}: {took}")
    lines += ["", "Measured tuning (fill memcell/pallas/tuning.py and memcell/parallel/tuning.py from it by hand):", "",
              "```json", json.dumps(tj, indent=1, default=str), "```", END]
    return "\n".join(lines) + "\n"
