#!/usr/bin/env bash
# Run the CUDA kernels' CPU-emulation selftest (csrc/cuda/emu_selftest.cpp:
# forward + backward of every engine, W_hh in registers and in shared memory,
# several blocks per direction, one batch chunk and several) under
# ThreadSanitizer and under AddressSanitizer+UBSan.
# Exits non-zero on any sanitizer report or wrong value. No Python needed.
#   tools/sanitize.sh            # both
#   tools/sanitize.sh thread     # one of: thread, address
# A missing __syncthreads, __syncwarp or grid barrier (or a barrier without
# its acquire / release) shows up as a TSAN data race;
# an out-of-bounds index as an ASAN report.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${BILSTM_SANITIZE_DIR:-$(mktemp -d -t bilstm_sanitize.XXXXXX)}"
CXX="${CXX:-g++}"
SRC="$ROOT/csrc/cuda/emu_selftest.cpp"
FLAGS=(-std=c++20 -O1 -g -fno-omit-frame-pointer -pthread -I"$ROOT/csrc" -I"$ROOT/csrc/cuda")
which="${1:-all}"
status=0

run() {  # name, env assignment, sanitizer flags...
  local name="$1" envs="$2"; shift 2
  echo "== $name: building with $*"
  local t0=$SECONDS
  "$CXX" "${FLAGS[@]}" "$@" "$SRC" -o "$OUT/selftest_$name"
  echo "== $name: running (built in $((SECONDS - t0)) s)"
  t0=$SECONDS
  if env $envs "$OUT/selftest_$name" > "$OUT/$name.log" 2>&1; then
    echo "== $name: clean, all values match ($((SECONDS - t0)) s)"
  else
    local rc=$?
    cat "$OUT/$name.log"
    echo "== $name: FAILED (exit $rc; log $OUT/$name.log)"
    status=1
  fi
}

if [[ "$which" == all || "$which" == thread ]]; then
  run tsan "TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1" -fsanitize=thread
fi
if [[ "$which" == all || "$which" == address ]]; then
  run asan "ASAN_OPTIONS=halt_on_error=1:exitcode=67:detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1" \
      -fsanitize=address,undefined -fno-sanitize-recover=all
fi
exit $status
