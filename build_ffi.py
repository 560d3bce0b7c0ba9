"""Compile csrc/ into the extension femto._cpu with cffi (out-of-line API mode), kernels once per CPU path.

Used by `pip install [-e] .` (and cibuildwheel) through setup.py, or directly: `python build_ffi.py`
rebuilds femto/_cpu*.so in place.

Runtime dispatch: every kernel source (csrc/*.c but threads.c) is compiled once per CPU path, through a
small generated wrapper (build/femto-paths/<file>__<path>.c) that sets the instruction set with
`#pragma GCC target`, renames the file's external functions to `<name>__<path>` and #includes the
source. The extension's own code (generated below) holds one table of kernel pointers per path, picks
the best path the CPU supports when the library loads (or the one FEMTO_CPU names), and defines each
femto.h kernel as a call through the chosen table. The paths: `baseline` (any x86-64, or the compiler's
default on any other CPU, ARM64 included), `avx2` (AVX2 + FMA) and `avx512` (AVX-512 F/BW/DQ/VL); the
last two exist on x86-64 built with GCC only (clang ignores `#pragma GCC target`), and the extension
reports which paths it holds.

Environment switches: FEMTO_NO_OPENMP=1 builds the serial kernels (so does a compiler without OpenMP,
e.g. Apple clang without libomp; LIBOMP_PREFIX=/path/to/libomp points the build at one); FEMTO_SANITIZE=1
builds with -fsanitize=address,undefined (run Python with LD_PRELOAD=$(gcc -print-file-name=libasan.so)).
FEMTO_PORTABLE is retired: there is no -march=native any more, every build runs on any CPU of its
architecture.
"""

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
# generated per-path wrappers; setuptools wants sources relative to setup.py, so they live in the tree
PATHS_DIR = pathlib.Path("build") / "femto-paths"
# compiled once: the runtime's own helpers (the femto_* functions of femto.h), no kernels
SHARED_SOURCES = ("threads.c",)

# CPU path -> (#pragma GCC target string, cpu features __builtin_cpu_supports must all report).
# The AVX-512 path keeps GCC's auto-vectoriser at 256 bits, as -march=native did on the Xeons it was
# tuned on; the GEMM and the vec16 helpers use 512-bit vectors explicitly.
PATHS = {
    "baseline": (None, ()),
    "avx2": ("avx2,fma", ("avx2", "fma")),
    "avx512": (
        "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=256",
        ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"),
    ),
}
# where the non-baseline paths are compiled: both the wrappers and the dispatcher test this
X86_PATHS_CONDITION = "defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)"


def source_files() -> list[pathlib.Path]:
    return sorted(CSRC.glob("*.c"))


def kernel_sources() -> list[pathlib.Path]:
    return [p for p in source_files() if p.name not in SHARED_SOURCES]


def source_hash() -> str:
    """Hash of every kernel source and header: the extension carries it, femto compares it on import.
    One definition, femto/backend/source_hash.py, loaded by path: femto itself cannot be imported
    before its extension exists."""
    spec = importlib.util.spec_from_file_location(
        "femto_source_hash", ROOT / "femto" / "backend" / "source_hash.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_hash(CSRC)


def _cc() -> list[str]:
    return (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()


def _compiler_accepts(flags: list[str], ldflags: list[str] = ()) -> bool:
    """Whether a program using OpenMP compiles and links with these flags."""
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "probe.c"
        src.write_text("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n")
        cmd = [*_cc(), *flags, str(src), "-o", str(pathlib.Path(tmp) / "probe"), *ldflags]
        return subprocess.run(cmd, check=False, capture_output=True).returncode == 0


def _openmp_flags() -> tuple[list[str], list[str]] | None:
    """Compile and link flags for OpenMP, or None. Apple clang needs -Xpreprocessor -fopenmp and a
    libomp from Homebrew (or LIBOMP_PREFIX)."""
    if _compiler_accepts(["-fopenmp"], ["-fopenmp"]):
        return ["-fopenmp"], ["-fopenmp"]
    if sys.platform == "darwin":
        prefixes = [os.environ.get("LIBOMP_PREFIX"), "/opt/homebrew/opt/libomp", "/usr/local/opt/libomp"]
        for prefix in filter(None, prefixes):
            cflags = ["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"]
            ldflags = [f"-L{prefix}/lib", "-lomp", f"-Wl,-rpath,{prefix}/lib"]
            if _compiler_accepts(cflags, ldflags):
                print(f"femto: OpenMP from the libomp in {prefix}", file=sys.stderr)
                return cflags, ldflags
    return None


def compile_flags() -> tuple[list[str], list[str]]:
    cflags = [
        "-std=c11",
        "-O3",
        "-fno-math-errno",
        "-Wall",
        "-Wno-unused-function",
        "-Wno-unknown-pragmas",
        # the baseline and AVX2 copies of vecmath.h's 64-byte vectors make GCC note an ABI change
        # for passing them by value; they are static inline, so no such call crosses a file
        "-Wno-psabi",
    ]
    ldflags: list[str] = []
    if os.environ.get("FEMTO_PORTABLE"):
        print("femto: FEMTO_PORTABLE is retired: every build is portable now", file=sys.stderr)
    if os.environ.get("FEMTO_SANITIZE") == "1":
        san = [
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=all",
        ]
        cflags = [f for f in cflags if f != "-O3"] + ["-O1", "-g", *san]
        ldflags += san
    if os.environ.get("FEMTO_NO_OPENMP") == "1":
        print("femto: FEMTO_NO_OPENMP=1: building serial kernels", file=sys.stderr)
    else:
        omp = _openmp_flags()
        if omp is None:
            print(
                "femto: WARNING: the C compiler cannot build OpenMP programs; building serial kernels"
                " (on macOS: `brew install libomp`, or set LIBOMP_PREFIX)",
                file=sys.stderr,
            )
        else:
            cflags += omp[0]
            ldflags += omp[1]
    return cflags, ldflags


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.DOTALL)


def _cdef_text() -> str:
    # cffi cannot parse preprocessor lines, so the header's '#' lines are dropped here.
    lines = (CSRC / "femto.h").read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def _prototypes(header: pathlib.Path) -> list[tuple[str, str, str, list[str]]]:
    """(return type, name, parameter list, argument names) of every function the header declares."""
    text = "\n".join(
        line for line in _strip_comments(header.read_text()).splitlines() if not line.startswith("#")
    )
    while True:  # function bodies and struct members out, innermost braces first
        shorter = re.sub(r"\{[^{}]*\}", ";", text)
        if shorter == text:
            break
        text = shorter
    found = []
    for statement in text.split(";"):
        match = re.fullmatch(r"\s*([A-Za-z_][\w \t\n*]*?)\s*\b(\w+)\s*\((.*)\)\s*", statement, re.DOTALL)
        if match is None or re.search(r"\b(typedef|static)\b", match[1]):
            continue
        ret, name, params = match.groups()
        params = " ".join(params.split())
        args = [] if params in ("", "void") else [re.findall(r"\w+", p)[-1] for p in params.split(",")]
        found.append((" ".join(ret.split()), name, params, args))
    return found


def kernels() -> list[tuple[str, str, str, list[str]]]:
    """femto.h's kernels: every function but the runtime's femto_* helpers."""
    return [p for p in _prototypes(CSRC / "femto.h") if not p[1].startswith("femto_")]


def _renamed() -> list[str]:
    """External functions a kernel file may define: femto.h's kernels and the internal headers'."""
    internal = [p[1] for h in sorted(CSRC.glob("*.h")) if h.name != "femto.h" for p in _prototypes(h)]
    return [k[1] for k in kernels()] + internal


def write_path_wrappers() -> list[pathlib.Path]:
    """The per-path wrappers, relative to ROOT (rewritten only when their text changes)."""
    written = []
    renames = _renamed()
    for path, (target, _) in PATHS.items():
        for src in kernel_sources():
            lines = [f"/* generated by build_ffi.py: csrc/{src.name} for the {path} CPU path */"]
            if target is not None:
                lines += [f"#if {X86_PATHS_CONDITION}", f'#pragma GCC target("{target}")']
            lines += [f"#define {name} {name}__{path}" for name in renames]
            lines.append(f'#include "{src.name}"')
            if target is not None:
                lines.append("#endif")
            wrapper = PATHS_DIR / f"{src.stem}__{path}.c"
            full = ROOT / wrapper
            text = "\n".join(lines) + "\n"
            if not full.exists() or full.read_text() != text:
                full.parent.mkdir(parents=True, exist_ok=True)
                full.write_text(text)
            written.append(wrapper)
    return written


def kernel_scalars_text(ks: list[tuple[str, str, str, list[str]]]) -> str:
    """"name:scalar,scalar;..." for every kernel: the names of its non-pointer parameters, in order.
    The CPU backend binds run()'s keyword scalars by these names, as OpenCL binds by position in
    the .cl signature from its launch table: a caller's keyword order never decides an argument."""
    entries = []
    for _, name, params, args in ks:
        kinds = [] if params in ("", "void") else params.split(",")
        scalars = [a for p, a in zip(kinds, args) if "*" not in p]
        entries.append(f"{name}:{','.join(scalars)}")
    return ";".join(entries)


def dispatcher_source() -> str:
    """The extension's own C: per-path kernel tables, the choice at load time, one thin function per
    kernel. Everything the Python side asks about the CPU path is answered here."""
    ks = kernels()
    out = [
        '#include <stdlib.h>',
        '#include <string.h>',
        '#include "femto.h"',
        f'static const char* femto_source_hash(void) {{ return "{source_hash()}"; }}',
        f'static const char* femto_kernel_scalars(void) {{ return "{kernel_scalars_text(ks)}"; }}',
        "typedef struct {",
        "    const char* name;",
        *[f"    {ret} (*{name})({params});" for ret, name, params, _ in ks],
        "} femto_kernel_table;",
    ]
    for path, (target, features) in PATHS.items():
        guard = target is not None
        if guard:
            out.append(f"#if {X86_PATHS_CONDITION}")
        out += [f"{ret} {name}__{path}({params});" for ret, name, params, _ in ks]
        out.append(f'static const femto_kernel_table table_{path} = {{"{path}",')
        out += [f"    {name}__{path}," for _, name, _, _ in ks]
        out.append("};")
        checks = " && ".join(f'__builtin_cpu_supports("{f}")' for f in features) or "1"
        out.append(f"static int supports_{path}(void) {{ return {checks}; }}")
        if guard:
            out.append("#endif")
    out.append("static const struct { const femto_kernel_table* table; int (*supported)(void); } paths[] = {")
    for path, (target, _) in PATHS.items():
        if target is not None:
            out.append(f"#if {X86_PATHS_CONDITION}")
        out.append(f"    {{&table_{path}, supports_{path}}},")
        if target is not None:
            out.append("#endif")
    out += [
        "};",
        "#define N_PATHS (sizeof paths / sizeof paths[0])",
        "static const femto_kernel_table* active = &table_baseline;",
        "static const char* requested; /* FEMTO_CPU, or NULL */",
        "static int request_status; /* 0 fine or unset, 1 unknown name, 2 this CPU lacks it */",
        "",
        "static int path_supported(size_t i) {",
        f"#if {X86_PATHS_CONDITION}",
        "    __builtin_cpu_init(); /* required before __builtin_cpu_supports in a constructor */",
        "#endif",
        "    return paths[i].supported();",
        "}",
        "",
        "/* Runs once, when the library loads (before any thread can call a kernel): the last path this",
        "   CPU supports (paths[] is ordered slowest first), or the one FEMTO_CPU names. An unusable",
        "   FEMTO_CPU leaves the best path in place and is reported by femto_cpu_request_status, which",
        "   the Python side turns into an error before any kernel runs. */",
        "__attribute__((constructor)) static void femto_cpu_choose(void) {",
        "    size_t best = 0;",
        "    for (size_t i = 0; i < N_PATHS; i++)",
        "        if (path_supported(i)) best = i;",
        "    const femto_kernel_table* chosen = paths[best].table;",
        '    requested = getenv("FEMTO_CPU");',
        "    if (requested && *requested) {",
        "        request_status = 1;",
        "        for (size_t i = 0; i < N_PATHS; i++)",
        "            if (strcmp(requested, paths[i].table->name) == 0) {",
        "                request_status = path_supported(i) ? 0 : 2;",
        "                if (request_status == 0) chosen = paths[i].table;",
        "            }",
        "    } else {",
        "        requested = NULL;",
        "    }",
        "    __atomic_store_n(&active, chosen, __ATOMIC_RELEASE);",
        "}",
        "",
        "static const char* femto_cpu_path(void) { return __atomic_load_n(&active, __ATOMIC_ACQUIRE)->name; }",
        "static const char* femto_cpu_requested(void) { return requested ? requested : \"\"; }",
        "static int femto_cpu_request_status(void) { return request_status; }",
        "/* the paths this build holds, comma-separated, slowest first; and which of them this CPU runs */",
        "static const char* femto_cpu_paths_built(void) {",
        "    static char names[64];",
        "    if (!names[0])",
        "        for (size_t i = 0; i < N_PATHS; i++) {",
        '            if (i) strcat(names, ",");',
        "            strcat(names, paths[i].table->name);",
        "        }",
        "    return names;",
        "}",
        "static int femto_cpu_path_supported(int i) { return i >= 0 && (size_t)i < N_PATHS && path_supported((size_t)i); }",
        "",
    ]
    for ret, name, params, args in ks:
        call = f"__atomic_load_n(&active, __ATOMIC_ACQUIRE)->{name}({', '.join(args)})"
        body = f"return {call};" if ret != "void" else f"{call};"
        out.append(f"{ret} {name}({params}) {{ {body} }}")
    return "\n".join(out) + "\n"


CPU_PATH_CDEF = """
const char* femto_source_hash(void);
const char* femto_kernel_scalars(void);
const char* femto_cpu_path(void);
const char* femto_cpu_requested(void);
int femto_cpu_request_status(void);
const char* femto_cpu_paths_built(void);
int femto_cpu_path_supported(int i);
"""


def make_builder(absolute_paths: bool) -> FFI:
    """setuptools wants source paths relative to setup.py; an in-place build compiles elsewhere."""
    builder = FFI()
    builder.cdef(_cdef_text() + CPU_PATH_CDEF)
    cflags, ldflags = compile_flags()
    sources = [CSRC / name for name in SHARED_SOURCES] + [ROOT / w for w in write_path_wrappers()]
    builder.set_source(
        "femto._cpu",
        dispatcher_source(),
        sources=[str(p if absolute_paths else p.relative_to(ROOT)) for p in sources],
        include_dirs=[str(CSRC)],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return builder


def _setuptools_builder() -> FFI:
    # setup.py names this function: the wrappers are written and the compiler probed only when
    # setuptools actually builds the extension, relative to setup.py's directory
    return make_builder(absolute_paths=False)


ffibuilder = _setuptools_builder


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
