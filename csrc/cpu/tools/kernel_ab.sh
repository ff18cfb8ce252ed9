#!/bin/bash
# A/B timing of lstm_kernel.cpp builds that differ in compile-time knobs, one
# thread, variants called alternately (kernel_ab.cpp says how). Up to four
# variants, each given as one string of compiler flags ("" = the defaults):
#
#   csrc/cpu/tools/kernel_ab.sh "" "-DBILSTM_KC=128" -- fwd 64 32 256 20
#   csrc/cpu/tools/kernel_ab.sh "-DBILSTM_MC_ROWS=96" "" -- lin 64 32 256 10 [D]
#
# ISA=avx512 builds the variants as the AVX-512 kernels (default: avx2).
set -e
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
out=${TMPDIR:-/tmp}/bilstm_kernel_ab
mkdir -p "$out"
variants=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do variants+=("$1"); shift; done
shift
case ${ISA:-avx2} in  # the flags of csrc/cpu/CMakeLists.txt
  avx2) isa_flags="-mavx2 -mfma -mf16c -DBILSTM_VEC_BYTES=32" ;;
  avx512) isa_flags="-mavx512f -mavx512dq -mavx2 -mfma -mf16c -DBILSTM_VEC_BYTES=64" ;;
  *) echo "ISA: avx2 or avx512" >&2; exit 2 ;;
esac
objs=()
for i in 0 1 2 3; do
  flags=${variants[$i]:-}
  g++ -std=gnu++20 -O3 $isa_flags -fvisibility=hidden -DBILSTM_ISA=v$i $flags \
      -I"$src/.." -I"$src" -c "$src/lstm_kernel.cpp" -o "$out/v$i.o"
  objs+=("$out/v$i.o")
done
g++ -std=gnu++20 -O3 -I"$src/.." -I"$src" "$here/kernel_ab.cpp" "$src/thread_pool.cpp" "${objs[@]}" \
    -o "$out/kernel_ab" -lpthread
"$out/kernel_ab" ${#variants[@]} "$@"
