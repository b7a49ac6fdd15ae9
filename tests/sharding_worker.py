"""The subprocesses of tests/test_sharding.py (jax must start with forced CPU devices, so each
mode runs in a process of its own; tests/test_sharding.py starts them and judges the results).

    python tests/sharding_worker.py devices OUT            # 8 forced devices, one process
    python tests/sharding_worker.py host I PORT OUT        # process I of a two-process run

Each process keeps a persistent compilation cache in OUT (``jax_compilation_cache_dir``), so a
program it runs again (a resumed run) is compiled once.
``devices`` trains through the CLI on one device, on 8 devices and on a 2 x 2 mesh over 4
devices (uninterrupted, and stopped after half the steps and resumed); it runs the bad-input checks of the API and the CLI and compiles the in-jit sampler for a mesh. Its
checkpoints, logs and reports go under OUT; the checks' results go to OUT/checks.json.
``host`` is one process of a two-process run (2 devices each): it trains the 2 x 2 run through
the CLI, killed after half the steps and resumed, into OUT/host.
"""

import contextlib
import io
import json
import os
import re
import sys
import time

# Both modes: CLI runs of one small problem, every seed trained together.
ARGS = ["train", "--task", "adding", "--length", "8", "--cell", "rnn", "--hidden", "8", "--batch-size", "16",
        "--seeds", "4", "--steps-per-call", "4", "--no-progress"]
STEPS, HALF = 8, 4


def _cli(args) -> dict:
    """Runs ``memcell`` in this process: its exit code, stdout and stderr."""
    from memcell import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(args)
        except SystemExit as e:
            code = e.code
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def _train(out_dir, *extra, steps=STEPS, resume=False) -> dict:
    args = ARGS + ["--steps", str(steps), "--out", str(out_dir), *extra]  # a checkpoint at the end of each run
    args += ["--resume"] if resume else []
    r = _cli(args)
    if r["code"] != 0:
        raise SystemExit(f"memcell {' '.join(args)} failed with {r['code']}: {r['stderr'][-3000:]}")
    return r


def _error(fn) -> str:
    try:
        fn()
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def _api_checks() -> dict:
    """Bad meshes given to the API, and what the in-jit sampler computes on each device."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    import memcell
    from memcell import tasks, train
    from memcell.train._mesh import constrain_batch

    task = tasks.adding(8, n_test=16)
    model = tasks.sequence_model(memcell.gru(4), 1, "last")
    tx = train.optimizer(1e-2)
    step = train.make_train_step(tasks.loss_fn(task, model), tx)
    sample = lambda key: task.sample(key, 12)
    one = train.init_state(0, lambda k: model.init(k, 2), tx)
    three = train.init_states([0, 1, 2], lambda k: model.init(k, 2), tx)
    fit = lambda state, mesh: train.fit(step, state, sample, steps=1, progress=False, mesh=mesh)
    checks = {
        "batch": _error(lambda: fit(one, train.make_mesh(data=8))),
        "seeds_divide": _error(lambda: fit(three, train.make_mesh(data=2, seeds=2))),
        "seeds_one_model": _error(lambda: fit(one, train.make_mesh(seeds=2))),
        "axis_names": _error(lambda: fit(one, Mesh(np.asarray(jax.devices()[:2]).reshape(2), ("model",)))),
        "not_a_mesh": _error(lambda: fit(one, "data=2")),
        "too_many": _error(lambda: train.make_mesh(data=4, seeds=4)),
        "devices_mismatch": _error(lambda: train.make_mesh(data=4, devices=jax.devices()[:3])),
        "spec_axis": _error(lambda: train.mesh_from_spec("data=2,model=4")),
        "spec_form": _error(lambda: train.mesh_from_spec("data:2")),
    }
    # The batch the jit draws, under memcell's own constraint (train._mesh.constrain_batch, what
    # fit's loop applies): each device's program holds only its own 12 / 4 = 3 rows.
    mesh = train.make_mesh(data=4)
    draw = jax.jit(lambda k: constrain_batch(sample(k), mesh))
    hlo = draw.lower(jax.random.key(0)).compile().as_text()
    checks["sampler_shapes"] = sorted(set(re.findall(r"f32\[(\d+),8,2\]", hlo)))
    # And end to end: the layout of the batch the train step receives inside fit on that mesh.
    checks["step_batch_shard"] = _batch_shard_in_fit(step, one, sample, mesh, lambda b: b["xs"], (12, 8, 2))
    checks["tbptt"] = _tbptt_checks()
    return checks


def _batch_shard_in_fit(step, state, sample, mesh, pick, shape) -> list:
    """The per-device shape of the batch leaf ``pick(batch)`` as ``fit(..., mesh=mesh)`` hands it to
    the train step (``jax.debug.inspect_array_sharding``, read when the step compiles); ``shape`` is
    its global shape, with the models' axis first for vmapped models (the sharding seen is theirs)."""
    import jax

    from memcell import train

    seen = []

    def spy(s, batch):
        jax.debug.inspect_array_sharding(pick(batch), callback=lambda sh: seen.append(list(sh.shard_shape(shape))))
        return step(s, batch)

    train.fit(spy, state, sample, steps=1, progress=False, mesh=mesh)
    return seen[0]


def _tbptt_checks() -> dict:
    """Truncated BPTT on a data mesh of 2: the same states as on one device, the batch split."""
    import jax
    import numpy as np

    import memcell
    from memcell import tasks, train

    tokens = np.random.default_rng(0).integers(0, 5, 200).astype(np.int32)
    streams = tasks.TokenStreams(train=tokens, train_starts=np.array([15], np.int32), valid_xs=tokens[:50],
                                 valid_ys=tokens[1:51], valid_starts=np.zeros(0, np.int32))
    task = tasks.char_lm(length=6, max_valid_chars=50)._replace(input_size=5, output_size=5, stream=streams)
    model = tasks.sequence_model(memcell.lstm(4), 5, "all")
    tx = train.optimizer(1e-2)
    step = train.make_stream_train_step(tasks.stream_loss_fn(task, model), tx)
    sample, cursor = tasks.stream_sampler(streams, 4, 6)
    states = train.init_states([0, 1], lambda k: model.init(k, 5), tx)
    states = tasks.with_stream(task, model, states, 4, cursor=cursor)
    run = lambda mesh: train.fit(step, states, sample, steps=4, progress=False, mesh=mesh, steps_per_call=2).state
    one, two = run(None), run(train.make_mesh(data=2))
    leaves = lambda s: [np.asarray(x, np.float64) for x in jax.tree.leaves((s.params, s.opt_state, s.stream))]
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(one), leaves(two)))
    return {"max_diff": diff, "cursor": np.asarray(two.stream.cursor).tolist(),
            "batch_shard": _batch_shard_in_fit(step, states, sample, train.make_mesh(data=2), lambda b: b["xs"],
                                               (2, 4, 6))}


def devices(out: str) -> None:
    import jax

    assert jax.device_count() == 8, jax.devices()
    t0 = time.process_time()
    results = {"api": _api_checks(), "cli_errors": {}, "cpu_s": {}}
    results["cpu_s"]["api"] = time.process_time() - t0
    runs = {
        "one": [],
        "dev8": ["--devices", "8"],
        "mesh22": ["--mesh", "data=2,seeds=2"],
    }
    for name, extra in runs.items():
        results[name] = _train(os.path.join(out, name), *extra)["stdout"]
        results["cpu_s"][name] = time.process_time() - t0
    resumed = os.path.join(out, "resumed")  # a 2 x 2 run stopped after HALF steps, then resumed
    _train(resumed, "--mesh", "data=2,seeds=2", steps=HALF)
    results["resumed"] = _train(resumed, "--mesh", "data=2,seeds=2", resume=True)["stdout"]
    results["cpu_s"]["resumed"] = time.process_time() - t0
    bad = {
        "batch": ["--devices", "3"],
        "too_many": ["--devices", "16"],
        "seeds_divide": ["--mesh", "data=2,seeds=3"],
        "axis_names": ["--mesh", "data=2,model=2"],
        "both": ["--devices", "2", "--mesh", "data=2"],
        "partial_hosts": ["--coordinator", "localhost:1"],
    }
    for name, extra in bad.items():
        results["cli_errors"][name] = _cli(ARGS + ["--steps", "1", *extra])
    # --tbptt reaches the mesh check with its stateful sampler (a traceback there before)
    results["cli_errors"]["tbptt_batch"] = _cli(["train", "--task", "char_lm", "--tbptt", "--length", "8", "--hidden",
                                                 "4", "--batch-size", "3", "--steps", "1", "--no-progress",
                                                 "--mesh", "data=2"])
    results["cpu_s"]["errors"] = time.process_time() - t0
    with open(os.path.join(out, "checks.json"), "w") as f:
        json.dump(results, f)


def host(process_id: int, port: int, out: str) -> None:
    flags = ["--mesh", "data=2,seeds=2", "--coordinator", f"localhost:{port}", "--num-processes", "2",
             "--process-id", str(process_id)]
    d = os.path.join(out, "host")
    first = _train(d, *flags, steps=HALF)  # joins the run (jax.distributed), then stops half way
    import jax

    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    second = _train(d, *flags, resume=True)  # resumes from the checkpoint written by both processes
    with open(os.path.join(out, f"host{process_id}.json"), "w") as f:
        json.dump({"first": first["stdout"], "second": second["stdout"]}, f)


def _compilation_cache(out: str, name: str) -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(out, f"jax-cache-{name}"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


if __name__ == "__main__":
    mode = sys.argv[1]
    _compilation_cache(sys.argv[-1], mode + (sys.argv[2] if mode == "host" else ""))
    if mode == "devices":
        devices(sys.argv[2])
    elif mode == "host":
        host(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        raise SystemExit(f"mode must be 'devices' or 'host', got {mode!r}")
    print(f"cpu time {time.process_time():.1f} s")
