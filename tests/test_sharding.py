"""memcell.train on a device mesh (docs/scaling.md): sharded training equals one device, seeds
sharded over devices equal the unsharded vmapped run, a sharded run stopped and resumed equals
an uninterrupted one, two processes (jax.distributed over gloo) train like one process on 4
devices, and bad meshes give clear errors (exit 2 from the CLI).

Forced CPU devices must be set before jax starts, so the runs happen in subprocesses
(tests/sharding_worker.py), all started at once by one fixture: one process with 8 devices and
the two processes of the multi-host run (2 devices each). Each test below judges their results.
"""

import base64
import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "sharding_worker.py"
STEPS, HALF = 8, 4  # as in the worker
RTOL = 1e-5  # relative, per leaf: the sharded reductions add in another order


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(args, devices: int, log: pathlib.Path) -> subprocess.Popen:
    # the forced device count beside the session's own flags (conftest's compile-time setting)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, str(WORKER), *args], cwd=ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The directory holding every run's output, once all three processes have finished."""
    out = tmp_path_factory.mktemp("sharding")
    port = _free_port()
    procs = {
        "devices": _start(["devices", str(out)], 8, out / "devices.log"),
        "host0": _start(["host", "0", str(port), str(out)], 2, out / "host0.log"),
        "host1": _start(["host", "1", str(port), str(out)], 2, out / "host1.log"),
    }
    failed = []
    for name, p in procs.items():
        try:
            code = p.wait(timeout=900)
        except subprocess.TimeoutExpired:
            p.kill()
            code = "timeout"
        if code != 0:
            failed.append(f"{name} ({code}): {(out / f'{name}.log').read_text()[-3000:]}")
    if failed:
        pytest.fail("worker failed:\n" + "\n".join(failed))
    return out


@pytest.fixture(scope="module")
def checks(runs):
    return json.loads((runs / "checks.json").read_text())


def _state(run_dir: pathlib.Path, step: int = STEPS) -> dict:
    """The TrainState leaves of a run's checkpoint, as NumPy arrays by path."""
    import jax
    import orbax.checkpoint as ocp

    path = run_dir / "checkpoints" / str(step) / "state"
    ck = ocp.PyTreeCheckpointer()
    meta = ck.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    tree = ck.restore(path, restore_args=jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), meta))
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_close(a: dict, b: dict, rtol: float = RTOL) -> None:
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert a[k].shape == b[k].shape, k
        scale = max(float(np.max(np.abs(b[k]))), 1e-30)
        err = float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
        assert err <= rtol * scale, f"{k}: max |difference| {err:.3g} > {rtol} * {scale:.3g}"


def _layout(run_dir: pathlib.Path, leaf: str) -> tuple:
    """(mesh shape, partition spec) a checkpointed leaf was saved with (orbax's _sharding record)."""
    record = json.loads((run_dir / "checkpoints" / str(STEPS) / "state" / "_sharding").read_text())
    by_name = {base64.urlsafe_b64decode(k + "=" * (-len(k) % 4)).decode(): json.loads(v) for k, v in record.items()}
    s = by_name[leaf]
    return tuple(s["shape"]), s["partition_spec"]


def _train_lines(run_dir: pathlib.Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


def _without_time(table: str) -> str:
    return re.sub(r", [0-9.]+ s\n", ", <time>\n", table)


# ----------------------------------------------------------------------------- equalities


def test_data_sharded_training_equals_one_device(runs):
    # --devices 8: a 1-D data mesh; the models' state replicated on all 8 devices.
    assert _layout(runs / "dev8", "params.w") == ((8, 1), [])
    one, dev8 = _state(runs / "one"), _state(runs / "dev8")
    _assert_close(dev8, one)
    assert int(dev8["['step']"].max()) == STEPS


def test_8_devices_print_the_summary_of_one_device(checks):
    one, dev8 = checks["one"], checks["dev8"]
    assert "| seed" in one and "task adding" in one
    assert _without_time(dev8) == _without_time(one)


def test_seeds_sharded_over_devices_equal_the_unsharded_vmapped_run(runs):
    # --mesh data=2,seeds=2: every leaf's models axis over 'seeds', each batch over 'data'.
    assert _layout(runs / "mesh22", "params.w") == ((2, 2), ["seeds"])
    _assert_close(_state(runs / "mesh22"), _state(runs / "one"))


def test_sharded_run_stopped_and_resumed_equals_the_uninterrupted_run(runs):
    resumed, full = _state(runs / "resumed"), _state(runs / "mesh22")
    for k in full:
        assert np.array_equal(resumed[k], full[k]), k
    assert _train_lines(runs / "resumed") == _train_lines(runs / "mesh22")
    assert len(_train_lines(runs / "mesh22")) == STEPS


def test_two_processes_train_like_one_process_on_4_devices(runs):
    host = runs / "host"
    # Both processes ran half the steps, checkpointed together, and resumed together.
    assert (host / "checkpoints" / str(STEPS)).is_dir()
    _assert_close(_state(host), _state(runs / "mesh22"))
    # Only process 0 writes the log (once a step, not once a process) and prints the report.
    lines = _train_lines(host)
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))
    for a, b in zip(lines, _train_lines(runs / "mesh22")):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=RTOL)
    p0, p1 = (json.loads((runs / f"host{i}.json").read_text()) for i in (0, 1))
    assert p1 == {"first": "", "second": ""}
    assert f"{HALF} steps" in p0["first"] and f"{STEPS} steps" in p0["second"]
    assert json.loads((host / "report.json").read_text())["steps"] == STEPS


def test_the_sampler_in_the_jit_computes_only_the_local_shard(checks):
    # A batch of 12 over a data axis of 4, under memcell's constraint: each device's program draws
    # [3, 8, 2], never [12, 8, 2]; and fit hands the train step [3, 8, 2] on each device.
    assert checks["api"]["sampler_shapes"] == ["3"]
    assert checks["api"]["step_batch_shard"] == [3, 8, 2]


def test_truncated_bptt_on_a_data_mesh_equals_one_device(checks):
    # Two models, 4 stream rows over a data axis of 2 (a document start in row 0): the same
    # params, optimizer states, cursors and carries as on one device; each device reads 2 rows.
    tb = checks["api"]["tbptt"]
    assert tb["max_diff"] <= 1e-5, tb
    assert tb["batch_shard"] == [2, 2, 6]  # [models, rows, steps]: the rows split
    assert tb["cursor"] == [[21, 24, 24, 24]] * 2  # row 0 cut before the document at 15, then went on


# ----------------------------------------------------------------------------- bad input

API_ERRORS = {
    "batch": "data axis (8) must divide the batch size (the leading axis of every batch leaf), got batch size 12",
    "seeds_divide": "seeds axis (2) must divide the number of models, got 3 models",
    "seeds_one_model": "a mesh with seeds=2 splits vmapped models; state must come from init_states",
    "axis_names": "mesh axis names must be among ['data', 'seeds'], got ['model']",
    "not_a_mesh": "TypeError: mesh must be a jax.sharding.Mesh",
    "too_many": "the mesh data=4, seeds=4 needs 16 devices, but only 8 exist",
    "devices_mismatch": "devices must hold data * seeds = 4 devices for the mesh data=4, seeds=1, got 3",
    "spec_axis": "mesh axis names must be among ['data', 'seeds'], got 'model'",
    "spec_form": "mesh spec must be comma-separated axis=size pairs such as 'data=4,seeds=2', got 'data:2'",
}


def test_bad_meshes_give_clear_errors(checks):
    got = checks["api"]
    for name, message in API_ERRORS.items():
        assert message in got[name], f"{name}: {got[name]}"


CLI_ERRORS = {
    "batch": "data axis (3) must divide the batch size (the leading axis of every batch leaf), got batch size 16",
    "too_many": "--devices: the mesh data=16, seeds=1 needs 16 devices, but only 8 exist",
    "seeds_divide": "seeds axis (3) must divide the number of models, got 4 models",
    "axis_names": "--mesh: mesh axis names must be among ['data', 'seeds'], got 'model'",
    "both": "--devices and --mesh exclude each other",
    "partial_hosts": "--coordinator, --num-processes and --process-id go together",
    "tbptt_batch": "data axis (2) must divide the batch size (the leading axis of every batch leaf), got batch size 3",
}


def test_bad_meshes_exit_2_from_the_cli(checks):
    got = checks["cli_errors"]
    for name, message in CLI_ERRORS.items():
        assert got[name]["code"] == 2, (name, got[name])
        assert "memcell: error: " in got[name]["stderr"] and message in got[name]["stderr"], (name, got[name])
