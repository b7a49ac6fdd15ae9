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
