"""Test-session set-up shared by every test file."""

import os

# The suite compiles well over a thousand tiny XLA programs whose run time is negligible next to
# their compile time, and LLVM's optimisation passes are most of that compile time. Level 0 of
# XLA's backend optimisation skips them in the tests only (memcell itself never sets it): the
# programs and their numerics are the same HLO, and make test ran a third faster with it
# (test_cells + test_fused: 159 s -> 106 s). Set before jax initialises its backend (conftest is
# imported before any test module); subprocess tests pass the environment on.
_FLAG = "--xla_backend_optimization_level"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=0".strip()

import gc

import pytest


# Every compiled XLA program keeps its code mapped in this process. A full `make test` compiles
# thousands of them, and the process's mappings passed Linux's default vm.max_map_count (65530):
# two full runs died at 87-93 % with "Fatal Python error: Aborted" inside XLA's compiler, each
# test passing alone. Dropping JAX's caches after each test file frees the executables the file
# made (the next file compiles its own programs anyway).
@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    yield
    import jax

    jax.clear_caches()
    gc.collect()
