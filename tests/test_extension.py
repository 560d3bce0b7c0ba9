"""Importing femto with a missing or stale C extension raises ExtensionBuildError saying how to rebuild.

Each case runs `import femto` in a subprocess on a temporary copy of femto/ and csrc/, so the real
checkout and its build are never touched.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from femto.errors import BackendUnavailable, ExtensionBuildError

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path: pathlib.Path) -> pathlib.Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.tmp")
    shutil.copytree(ROOT / "femto", tmp_path / "femto", ignore=ignore)
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc", ignore=ignore)
    return tmp_path


def import_femto(where: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(where)}
    # an editable install (pip install -e .) adds a finder that would fetch femto._cpu from the real
    # checkout when the copy lacks it; drop it so only the copy is seen
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
        "if '__editable__' not in getattr(f, '__module__', '')]; "
        "import femto; sys.stdout.write(femto.__file__)"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=where,
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )


def test_fresh_copy_imports(checkout):
    result = import_femto(checkout)
    assert result.returncode == 0, result.stderr
    assert result.stdout == str(checkout / "femto" / "__init__.py")  # the copy, not the checkout


def test_edited_sources_raise_with_rebuild_hint(checkout):
    kernel = checkout / "csrc" / "gelu.c"
    kernel.write_text(kernel.read_text() + "\n/* an edit the extension was not built from */\n")
    result = import_femto(checkout)
    assert result.returncode != 0
    assert "ExtensionBuildError" in result.stderr
    assert "older sources" in result.stderr
    assert "pip install -e ." in result.stderr and "python build_ffi.py" in result.stderr


def test_missing_extension_raises_with_rebuild_hint(checkout):
    for built in (checkout / "femto").glob("_cpu*"):
        built.unlink()
    result = import_femto(checkout)
    assert result.returncode != 0
    assert "ExtensionBuildError" in result.stderr and "not built" in result.stderr
    assert "python build_ffi.py" in result.stderr


def test_error_is_both_unavailable_backend_and_import_error():
    assert issubclass(ExtensionBuildError, BackendUnavailable)
    assert issubclass(ExtensionBuildError, ImportError)
