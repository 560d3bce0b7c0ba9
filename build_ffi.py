"""Compile csrc/*.c into the extension femto._cpu with cffi (out-of-line API mode).

Used by `pip install [-e] .` through setup.py, or directly: `python build_ffi.py` rebuilds femto/_cpu*.so
in place. Environment switches: FEMTO_PORTABLE=1 drops -march=native (a build that runs on any x86-64);
FEMTO_SANITIZE=1 builds with -fsanitize=address,undefined (run Python with LD_PRELOAD=$(gcc
-print-file-name=libasan.so)); FEMTO_NO_OPENMP=1 builds the serial kernels.
"""

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def source_files() -> list[pathlib.Path]:
    return sorted(CSRC.glob("*.c"))


def source_hash() -> str:
    """Hash of every kernel source and the header: the extension carries it, femto compares it on import."""
    digest = hashlib.sha256()
    for path in [*sorted(CSRC.glob("*.h")), *source_files()]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _compiler_accepts(flag: str) -> bool:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "probe.c"
        src.write_text("int main(void) { return 0; }\n")
        cmd = [*cc.split(), flag, str(src), "-o", str(pathlib.Path(tmp) / "probe")]
        return subprocess.run(cmd, check=False, capture_output=True).returncode == 0


def compile_flags() -> tuple[list[str], list[str]]:
    cflags = [
        "-std=c11",
        "-O3",
        "-fno-math-errno",
        "-Wall",
        "-Wno-unused-function",
        "-Wno-unknown-pragmas",
    ]
    ldflags: list[str] = []
    if os.environ.get("FEMTO_PORTABLE") != "1":
        cflags.append("-march=native")
    if os.environ.get("FEMTO_SANITIZE") == "1":
        san = [
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=all",
        ]
        cflags = [f for f in cflags if f != "-O3"] + ["-O1", "-g", *san]
        ldflags += san
    if os.environ.get("FEMTO_NO_OPENMP") == "1":
        pass
    elif _compiler_accepts("-fopenmp"):
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    else:
        print("femto: the C compiler rejects -fopenmp; building serial kernels", file=sys.stderr)
    return cflags, ldflags


def _cdef_text() -> str:
    # cffi cannot parse preprocessor lines, so the header's '#' lines are dropped here.
    lines = (CSRC / "femto.h").read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def make_builder(absolute_paths: bool) -> FFI:
    """setuptools wants source paths relative to setup.py; an in-place build compiles elsewhere."""
    builder = FFI()
    builder.cdef(_cdef_text() + "\nconst char* femto_source_hash(void);\n")
    cflags, ldflags = compile_flags()
    sources = [str(p if absolute_paths else p.relative_to(ROOT)) for p in source_files()]
    builder.set_source(
        "femto._cpu",
        '#include "femto.h"\n'
        f'static const char* femto_source_hash(void) {{ return "{source_hash()}"; }}\n',
        sources=sources,
        include_dirs=[str(CSRC)],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return builder


ffibuilder = make_builder(absolute_paths=False)


def build_in_place() -> pathlib.Path:
    """Compile in a private directory, then rename into femto/ so a concurrent import never sees half a file."""
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        built = pathlib.Path(make_builder(absolute_paths=True).compile(tmpdir=tmp))
        target = ROOT / "femto" / built.name
        staged = target.with_suffix(".tmp")
        shutil.copy2(built, staged)
        os.replace(staged, target)
    return target


if __name__ == "__main__":
    print(f"built {build_in_place()}")
