"""The import table of docs/design.md (Layers and imports), enforced on the AST of every femto module that exists.

A module may import from femto only what its row allows (errors, fileio, safe_read and
memory_estimate, the bottom layer, are allowed everywhere).
click only in the femto.cli package; pyopencl and sentencepiece only lazily, inside functions of the
modules that wrap them. A module with no row fails: new modules need a row in the table.
"""

import ast
import fnmatch
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "femto"
BELOW_TRAIN = [
    "femto.model",
    "femto.optim",
    "femto.checkpoint",
    "femto.data",
    "femto.data.*",
    "femto.graph",
    "femto.ops",
    "femto.ops.*",
    "femto.backend",
    "femto.backend.*",
    "femto.tokenizers",
    "femto.tokenizers.*",
    "femto.runlock",
    "femto.divergence",
]
# stdlib-level helpers every module may use
BOTTOM = ["femto.errors", "femto.fileio", "femto.safe_read", "femto.memory_estimate"]
# module pattern -> femto modules it may import (first matching row wins)
TABLE = [
    ("femto", ["femto.backend", "femto.backend.cpu"]),  # __init__ checks the extension on import
    ("femto.errors", []),
    ("femto.fileio", []),  # the bottom layer beside errors: durable writes, stdlib only
    ("femto.runlock", []),  # beside fileio: OS file locks on a run directory, stdlib only
    ("femto.safe_read", []),  # bottom layer too: bounded reads of regular files
    ("femto.memory_estimate", []),  # bottom layer too: will a model fit in memory
    ("femto.backend", ["femto.backend.base"]),
    ("femto.backend.cpu", ["femto.backend.base", "femto.backend.source_hash", "femto._cpu"]),
    ("femto.backend.*", ["femto.backend.base"]),
    ("femto.graph", ["femto.backend.base"]),
    ("femto.ops", ["femto.ops.*"]),
    ("femto.ops.*", ["femto.graph"]),
    ("femto.model", ["femto.ops", "femto.ops.*", "femto.graph"]),
    ("femto.optim", ["femto.graph", "femto.backend.base"]),
    ("femto.tokenizers", ["femto.tokenizers.*"]),
    ("femto.tokenizers.*", ["femto.tokenizers.*"]),
    # corpora, the token cache and batches: a side branch beside the tokenizers
    ("femto.data*", ["femto.data", "femto.data.*", "femto.tokenizers", "femto.tokenizers.base"]),
    (
        "femto.checkpoint",
        ["femto.model", "femto.tokenizers", "femto.tokenizers.*", "femto.optim", "femto.runlock"],
    ),
    # the train layer's guard against divergence: model, optim and the nonfinite op, below train
    (
        "femto.divergence",
        ["femto.model", "femto.optim", "femto.ops", "femto.ops.*", "femto.graph", "femto.data"],
    ),
    ("femto.timing", []),  # stdlib arithmetic on durations: the ETA and the run's time totals
    # data-parallel communication beside optim: buffers of a backend, never a model (issue 10)
    ("femto.distributed", ["femto.backend.base", "femto.backend.opencl"]),
    (
        "femto.train",
        [*BELOW_TRAIN, "femto.timing", "femto.distributed", "femto.finetune", "femto.schedule_notice"],
    ),
    # prepares one run on every rank: above train, below cli
    ("femto.parallel_run", ["femto.train", "femto.distributed", *BELOW_TRAIN]),
    ("femto.sample", BELOW_TRAIN),
    ("femto.evaluate", BELOW_TRAIN),  # `femto eval`'s layer: beside sample
    ("femto.throughput", BELOW_TRAIN),  # FLOPs per token and the matmul peak probe, for MFU
    ("femto.runlog", ["femto.checkpoint"]),  # metrics.jsonl read back
    ("femto.plot", ["femto.runlog"]),  # charts of runlogs; plotext / matplotlib lazily
    ("femto.finetune", ["femto.checkpoint", "femto.model", "femto.tokenizers.base"]),
    ("femto.schedule_notice", []),  # words about train's schedule, which it is passed
    ("femto.config_file", []),  # --config TOML parsing for the CLI
    ("femto.export_hf", ["femto.checkpoint", "femto.model", "femto.tokenizers.base"]),
    ("femto.cli.progress", []),  # the CLI layer's progress bars and status line
    (
        "femto.cli*",  # the femto command: the package and one module per command group
        [
            "femto.cli",
            "femto.cli.*",
            "femto.train",
            "femto.parallel_run",
            "femto.distributed",
            "femto.sample",
            "femto.evaluate",
            "femto.config_file",
            "femto.export_hf",
            "femto.tokenizers",
            "femto.tokenizers.*",
            "femto.data",
            "femto.checkpoint",
            "femto.runlock",
            "femto.throughput",
            "femto.runlog",
            "femto.plot",
        ],
    ),
    ("femto.__main__", ["femto.cli"]),  # `python -m femto` is the femto command
]
# arrows the table lacks, each pending a decision (docs/design.md: an architecture change to discuss)
EXCEPTIONS = {
    ("femto.cli.devices", "femto.backend.opencl"): "lazy import for listing OpenCL devices",
    ("femto.cli", "femto.backend.cpu"): "lazy import: the CPU kernel path in --version",
    ("femto.cli.devices", "femto.backend.cpu"): "lazy import: the CPU kernel path in devices",
    ("femto.cli.train", "femto.model"): "GPTConfig, whose fields the click options mirror",
}
LAZY_ONLY = {
    "pyopencl": "femto.backend.opencl",
    "sentencepiece": "femto.tokenizers.*",
    "plotext": "femto.plot",
    "matplotlib": "femto.plot",
    "mpi4py": "femto.distributed",  # only under mpiexec -n N>1: a plain run never loads MPI
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """True when `name` is a femto module or package (so `from a import b` imports module a.b)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(tree: ast.Module, module: str, is_package: bool):
    """(imported module, at top level?) for every import; `from femto import x` counts as femto.x."""
    package = module if is_package else module.rpartition(".")[0]
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                )
                base = base.rstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if is_module(sub) or base == "femto" else base), id(node) in top


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    row = next(
        (allowed for pattern, allowed in TABLE if fnmatch.fnmatchcase(module, pattern)), None
    )
    if row is None:
        return [f"{module} has no row in the import table (tests/test_layers.py, docs/design.md)"]
    allowed = [*row, *BOTTOM, "femto.__version__"]
    found = []
    for name, top_level in imports(ast.parse(source), module, is_package):
        root = name.split(".")[0]
        if (module, name) in EXCEPTIONS:
            continue
        if root == "femto" and not any(fnmatch.fnmatchcase(name, a) for a in allowed):
            found.append(f"{module} imports {name}")
        elif root == "click" and not fnmatch.fnmatchcase(module, "femto.cli*"):
            found.append(f"{module} imports click: only femto.cli's modules may")
        elif root in LAZY_ONLY and not fnmatch.fnmatchcase(module, LAZY_ONLY[root]):
            found.append(f"{module} imports {root}")
        elif root in LAZY_ONLY and top_level:
            found.append(f"{module} imports {root} at import time: import it lazily")
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=module_name)
def test_imports_follow_the_table(path):
    assert not violations(module_name(path), path.read_text(), path.name == "__init__.py")


def test_the_check_catches_violations():
    assert violations("femto.ops.gelu", "from femto.model import GPT\n")
    assert violations("femto.ops.gelu", "from femto.ops import matmul\n")  # ops never import ops
    assert violations("femto.ops.gelu", "from ..backend import cpu\n")
    assert violations("femto.graph", "import click\n")
    assert violations("femto.backend.opencl", "import pyopencl\n")  # must be lazy
    assert not violations("femto.backend.opencl", "def f():\n    import pyopencl\n")
    assert violations("femto.nowhere", "")
    assert violations("femto.ops.gelu", "from . import matmul\n")  # relative imports resolve too
    assert not violations("femto.ops.gelu", "from femto.graph import Op\nimport numpy\n")
