#!/usr/bin/env bash
# One GPU session's measurements, about 8 minutes on one GPU: run from the project's root on the GPU
# machine. Each step has its own time limit, so a slow or hung one costs its limit, not the session;
# everything lands in $OUT (default ./gpu-results): the device list, the matmul tuner's table (cached in
# $FEMTO_CACHE_DIR, so later steps use it), the OpenCL tests, the benchmark
# of configs A-E beside PyTorch CUDA eager (when torch sees CUDA) and the per-kernel profile.
#
#   bash bench/gpu_session.sh            # the set-up of .gpu/on-device.sh is sourced when present
#
# The exit status is the number of steps that failed or ran out of time.
set -u
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
failed=0
if [ -f .gpu/on-device.sh ]; then
    # wheels, the OpenCL loader's vendor file, the C extension build; a machine that has pyopencl and
    # a built extension skips this
    # shellcheck disable=SC1091
    source .gpu/on-device.sh || { echo "set-up failed" | tee "$OUT/setup.txt"; exit 1; }
fi
PY=${PYTHON:-python3}
# a smoke run on a CPU: CONFIGS=A PROFILE_CONFIGS=A STEPS=1 OUT=/tmp/g bash bench/gpu_session.sh
configs=() profile_configs=()
for c in ${CONFIGS:-A B C D E}; do configs+=(--config "$c"); done
for c in ${PROFILE_CONFIGS:-A D E}; do profile_configs+=(--config "$c"); done
STEPS=${STEPS:-10}

step() {  # step NAME SECONDS COMMAND...: run it with a limit, output in $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
    [ $rc -eq 0 ] || failed=$((failed + 1))
}

step devices 60 "$PY" -m femto devices
# the matmul tile shapes, timed and cached before anything else builds a backend
step tune 90 "$PY" -m femto devices --tune
step nvidia-smi 20 sh -c "nvidia-smi || echo no nvidia-smi here"
step tests 150 env FEMTO_REQUIRE_OPENCL=1 "$PY" -m pytest -q -p no:cacheprovider tests/ops tests/test_opencl.py tests/test_capture.py -k opencl
step bench 200 "$PY" bench/opencl_speed.py --device opencl "${configs[@]}" --steps "$STEPS" \
    --warmup 2 --save "$OUT/bench.json"
step profile 120 "$PY" bench/opencl_speed.py --device opencl "${profile_configs[@]}" --steps "$STEPS" \
    --warmup 2 --sample-tokens 20 --no-torch --profile --save "$OUT/profile.json"
tail -n 3 "$OUT"/tests.txt
cat "$OUT/tune.txt" "$OUT/bench.txt" "$OUT/profile.txt" 2>/dev/null
exit $failed
