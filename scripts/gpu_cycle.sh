#!/usr/bin/env bash
# One build+test+bench cycle on a lent GPU machine (see DEVICE.md): no network there, CUTLASS comes from a
# carried wheel in .whl/. Logs go to $LOG; at the end they are packed into one file, $OUT/logs.tar.gz (the
# device tool returns at most 8 files from $OUT). Usage:
#   scripts/gpu_cycle.sh [build|test|memcheck|tools|pinned|bench]...   (default: build test)
# Environment: JAX_FLASH_HEAD_DIMS / JAX_FLASH_DTYPES / JAX_FLASH_ARCHS (default 90a here), PYTEST_ARGS,
# BENCH_ARGS, TOOLS, TOOL_DIMS, SANITIZE_DIMS, TOOL_FLAGS, TOOL_BIN, LOG, LOGS_NAME (two cycles at once: one name each).
set -uo pipefail
OUT=${OUT:-/tmp/jax_flash_out}
LOG=${LOG:-/tmp/jax_flash_logs}
mkdir -p "$OUT" "$LOG"
trap 'tar -czf "$OUT/${LOGS_NAME:-logs}.tar.gz" -C "$LOG" .' EXIT
export JAX_FLASH_ARCHS=${JAX_FLASH_ARCHS:-90a} JAX_FLASH_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=16
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
steps=${*:-build test}
status=0

for step in $steps; do
  start=$SECONDS
  case $step in
    build)
      # A persistent build folder: on a warm machine an unchanged tree rebuilds in seconds.
      python3 -m pip install -q --no-index --no-deps .whl/nvidia_cutlass-*.whl &&
      prebuilt=()
      if [ -f build/kernels/libjax_flash_kernels.a ]; then  # carried: built elsewhere, COMPILE_ONLY
        prebuilt=(-C "cmake.define.JAX_FLASH_PREBUILT_KERNELS=$PWD/build/kernels/libjax_flash_kernels.a")
      fi
      python3 -m pip install --no-build-isolation --no-deps -v -C build-dir=/tmp/jax_flash_build \
        "${prebuilt[@]}" . > "$LOG/build.log" 2>&1
      rc=$?
      grep -E "error|warning: .*spill" "$LOG/build.log" | head -40
      ;;
    test)
      # Most tests in parallel processes (compiles dominate); the memory-hungry ones one at a time.
      (cd /tmp && timeout ${TEST_TIMEOUT:-450} python3 -m pytest -q -p no:cacheprovider -p no:benchmark \
         -n ${PYTEST_WORKERS:-12} -m "not large" ${PYTEST_ARGS:-} "$OLDPWD/tests" &&
       timeout ${TEST_TIMEOUT:-450} python3 -m pytest -q -p no:cacheprovider -p no:benchmark \
         -m large ${PYTEST_ARGS:-} "$OLDPWD/tests") > "$LOG/pytest.log" 2>&1
      rc=$?
      grep -E "FAILED|ERROR|passed|failed" "$LOG/pytest.log" | tail -40
      ;;
    memcheck)
      # Dense forward+backward cases, then packed inputs with out-of-range offsets and lengths, then paged
      # caches with out-of-range page indices, cache lengths and query offsets, one process per paged case.
      # (2026-11-22, H100: the Python process sometimes segfaulted under the sanitizer, before or after the
      # cases it ran cleanly; rerun a case that dies without an error report. On an H200 the platform allocator
      # without autotuning let the paged "dense" case reach its error summary where the defaults crashed.)
      (cd tests && export XLA_PYTHON_CLIENT_ALLOCATOR=platform XLA_FLAGS=--xla_gpu_autotune_level=0 && compute-sanitizer --tool memcheck --error-exitcode 9 \
        python3 gpu_subprocess_cases.py /tmp/memcheck.npz --small &&
       compute-sanitizer --tool memcheck --error-exitcode 9 python3 -c \
        "import test_gpu_varlen as t; t.test_out_of_range_offsets_are_clamped_and_max_seqlen_is_only_a_bound(); print('packed out-of-range case: ok')" &&
       for case in dense packed packed-tail; do
         compute-sanitizer --tool memcheck --error-exitcode 9 python3 -c \
           "import test_gpu_paged as t; t.run_out_of_range_case('$case'); print('paged out-of-range case $case: ok')" || exit
       done) > "$LOG/memcheck.log" 2>&1
      rc=$?
      tail -5 "$LOG/memcheck.log"
      ;;
    tools)
      # The standalone checks of the warp-specialized kernels (cuda/tools/; TOOLS, default "fwd bwd"): build for
      # TOOL_DIMS (default 64 96 128), or take TOOL_BIN/<tool>_sm90_ws_check_<d> built elsewhere, run
      # correctness (a run past TOOL_TIMEOUT seconds, default 300, fails: a hang), then compute-sanitizer on
      # --small restricted to the new kernels (the tools' own fp32 reference kernels are not what is checked).
      # TOOL_FLAGS adds e.g. -DCHECK_ALT_BLOCK_N=128.
      # Then racecheck on the mbarrier probe: "none" (a real race) must be reported; "each" and "named" say
      # what the tool can see (on an H100, 2026-12-07, it reported them too: it does not model the hand-off).
      cutlass=$(python3 -c "import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source', 'include'))")
      rc=0
      # Each compile is one single-threaded nvcc of minutes: all of them at once, then the runs.
      for tool in ${TOOLS:-fwd bwd}; do
        for d in ${TOOL_DIMS:-64 96 128}; do
          [ -n "${TOOL_BIN:-}" ] && { cp "$TOOL_BIN/${tool}_sm90_ws_check_$d" /tmp/; continue; }
          nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -O3 --expt-relaxed-constexpr --use_fast_math -lineinfo \
            -DJAX_FLASH_HAS_SM90A -DCHECK_HEAD_DIM=$d ${TOOL_FLAGS:-} -Icuda -I"$cutlass" \
            cuda/tools/${tool}_sm90_ws_check.cu -o /tmp/${tool}_sm90_ws_check_$d > "$LOG/${tool}_tool_$d.log" 2>&1 &
        done
      done
      wait
      for tool in ${TOOLS:-fwd bwd}; do
        for d in ${TOOL_DIMS:-64 96 128}; do
          bin=/tmp/${tool}_sm90_ws_check_$d
          [ -x $bin ] || { rc=1; echo "$tool D$d: compile failed"; continue; }
          timeout ${TOOL_TIMEOUT:-300} $bin >> "$LOG/${tool}_tool_$d.log" 2>&1 || { rc=1; echo "$tool D$d: exit $?"; }
          grep -E "FAIL|ALL PASS" "$LOG/${tool}_tool_$d.log" | tail -3
          case " ${SANITIZE_DIMS:-${TOOL_DIMS:-64 96 128}} " in *" $d "*) ;; *) continue ;; esac
          for check in memcheck racecheck synccheck; do
            timeout ${TOOL_TIMEOUT:-300} compute-sanitizer --tool $check --kernel-name kns=sm90_ws_kernel \
              --error-exitcode 9 $bin --small \
              > "$LOG/${tool}_${check}_$d.log" 2>&1 || rc=1
            tail -n 1 "$LOG/${tool}_${check}_$d.log"
          done
        done
      done
      probe=/tmp/racecheck_mbarrier_probe
      nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -O3 -Icuda -I"$cutlass" \
        cuda/tools/racecheck_mbarrier_probe.cu -o $probe > "$LOG/probe.log" 2>&1 || rc=1
      for mode in none each named; do
        compute-sanitizer --tool racecheck --error-exitcode 9 $probe $mode > "$LOG/probe_$mode.log" 2>&1
        probe_rc=$?
        echo "probe $mode: exit $probe_rc, $(grep -E 'RACECHECK SUMMARY' "$LOG/probe_$mode.log")"
        case $mode in none) [ $probe_rc -eq 9 ] || rc=1 ;; esac
      done
      ;;
    pinned)
      # The GPU suite under each kernel family (cases a family has no kernel for skip, tests/conftest.py). The
      # grids run only their deterministic variant there: the unpinned suite runs the others by name
      # (tests/gpu_harness.py variant_or_skip), so a pinned run is the non-grid tests plus that one variant.
      rc=0
      for variant in ${VARIANTS:-sm80 sm90 sm90_ws}; do
        (cd /tmp && JAX_FLASH_KERNEL_VARIANT=$variant timeout ${TEST_TIMEOUT:-450} python3 -m pytest -q \
           -p no:cacheprovider -p no:benchmark -n ${PYTEST_WORKERS:-12} -m "gpu and not large" "$OLDPWD/tests") \
          > "$LOG/pytest_$variant.log" 2>&1 || rc=1
        echo "$variant: $(tail -n 1 "$LOG/pytest_$variant.log")"
      done
      ;;
    bench)
      (cd /tmp && python3 -m jax_flash.benchmark ${BENCH_ARGS:-}) 2>&1 | tee "$LOG/bench.log"
      rc=${PIPESTATUS[0]}
      ;;
    *) echo "unknown step $step"; rc=2 ;;
  esac
  echo "== $step: exit $rc in $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || status=$rc
done
exit $status
