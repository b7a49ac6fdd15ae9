"""The wheel: it builds without the license deprecation warning, declares Apache-2.0 as an
SPDX expression, and carries every module and every task data file that the package names.

The wheel is built once, from a copy of the source tree (so no build/ or egg-info lands in the
checkout), without build isolation: the venv's own setuptools builds it (the dev extra pins
one new enough), so the test needs nothing from the network.
"""

import email.parser
import fnmatch
import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DATA = ROOT / "memcell" / "tasks" / "data"
# What never goes into a build: environments, outputs, caches.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "site", "build", "dist", "results", "runs", "*.egg-info", "__pycache__",
    ".pytest_cache", ".hypothesis",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(path of the wheel, everything pip and setuptools printed while building it)."""
    src = tmp_path_factory.mktemp("src") / "memcell"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [
        sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
        "--check-build-dependencies", "--no-index", "-w", str(out), str(src),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"pip wheel failed ({proc.returncode}):\n{log[-4000:]}"
    wheels = list(out.glob("memcell-*.whl"))
    assert len(wheels) == 1, f"expected one memcell wheel in {out}, got {wheels}"
    return wheels[0], log


@pytest.fixture(scope="module")
def names(built):
    with zipfile.ZipFile(built[0]) as whl:
        return set(whl.namelist())


def test_build_has_no_license_deprecation_warning(built):
    _, log = built
    flagged = [
        line for line in log.splitlines()
        if "license" in line.lower() and ("deprecat" in line.lower() or "warning" in line.lower())
    ]
    assert not flagged, "the build warns about project.license:\n" + "\n".join(flagged)


def test_metadata_license_is_the_spdx_expression(built):
    with zipfile.ZipFile(built[0]) as whl:
        (meta,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(whl.read(meta).decode())
    assert metadata["License-Expression"] == "Apache-2.0", dict(metadata.items())
    assert metadata["License"] is None, f"legacy License field present: {metadata['License']!r}"


def _data_patterns():
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["memcell.tasks"]
    assert patterns, "pyproject.toml names no task data for memcell.tasks"
    return patterns


def test_wheel_has_every_task_data_file_the_patterns_name(names):
    named = sorted({p for pattern in _data_patterns() for p in (ROOT / "memcell" / "tasks").glob(pattern)})
    assert named, f"the package-data patterns {_data_patterns()} match no file under {DATA}"
    missing = [str(p.relative_to(ROOT)) for p in named if str(p.relative_to(ROOT)) not in names]
    assert not missing, f"task data files missing from the wheel: {missing}"


def test_every_task_data_file_is_named_by_a_pattern():
    # A data file added without a pattern would be in the checkout but not in the wheel,
    # and its task would fail only once installed.
    unnamed = [
        p.name for p in DATA.iterdir()
        if p.is_file() and not any(fnmatch.fnmatch(f"data/{p.name}", pat) for pat in _data_patterns())
    ]
    assert not unnamed, f"files under {DATA.relative_to(ROOT)} that no package-data pattern names: {unnamed}"


def test_wheel_has_every_module(names):
    # Packages split from modules (memcell/fused/, convert/, train/) must be found too.
    modules = [str(p.relative_to(ROOT)) for p in (ROOT / "memcell").rglob("*.py") if "__pycache__" not in p.parts]
    missing = [m for m in modules if m not in names]
    assert not missing, f"modules missing from the wheel: {missing}"
