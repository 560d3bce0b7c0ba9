#!/usr/bin/env bash
# tools/check_wheel.sh: build femto's wheel the way a user's pip does, install it into a fresh virtual
# environment (no system site-packages; dependencies from PyPI) and run the op tests against the
# installed package, on every CPU path this machine supports (tests/test_cpu_paths.py runs the others).
#
# Run on request, not in CI: it compiles the extension and downloads the dependencies (a few minutes).
# The wheel is built from the working tree's tracked and untracked-but-not-ignored files (never from
# an in-place build), in a temporary directory; a copy is left in dist/ when it passes.
#   tools/check_wheel.sh            # with python3
#   PYTHON=python3.12 tools/check_wheel.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

mkdir -p "$work/src" "$work/run"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && cp --parents -- "$f" "$work/src/"
done)

"$python" -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
echo "check_wheel: building the wheel"
pip wheel "$work/src" -w "$work/dist" --no-deps
wheel=$(ls "$work"/dist/femto-*.whl)
echo "check_wheel: installing $(basename "$wheel") and the test dependencies into a fresh venv"
pip install -q "$wheel[test]"

# the tests run from a directory holding only tests/, so `import femto` can only find the wheel's
cp -r "$repo/tests" "$work/run/tests"
cd "$work/run"
where=$(python -c "import femto; print(femto.__file__)")
case "$where" in
    "$work/venv/"*) echo "check_wheel: femto imports from $where" ;;
    *) echo "check_wheel: femto imports from $where, not the installed wheel" >&2; exit 1 ;;
esac
python -m femto --version
python -m pytest -q -p no:cacheprovider tests/ops tests/test_cpu_paths.py
mkdir -p "$repo/dist"
cp "$wheel" "$repo/dist/"
echo "check_wheel: passed; the wheel is in dist/$(basename "$wheel")"
