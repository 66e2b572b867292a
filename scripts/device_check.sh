#!/usr/bin/env bash
# The one script run on a lent GPU machine (issue 10): CUDA parity suite, compute-sanitizer
# memcheck and racecheck on a subset of it, the CUDA benchmarks, a short `lathe train` on
# CUDA, and a summary table printed last.
#
#   scripts/device_check.sh --prepare   here (no GPU needed): configures and builds build/ with
#                                       CUDA (sm_90), then packs test_cuda_parity, bench_cuda and
#                                       lathe with their libraries into .device/bundle.tar.xz
#                                       (ignored through .git/info/exclude).
#   bash scripts/device_check.sh --run  on the GPU machine, from the repository root (with
#                                       .device carried along): unpacks the bundle to
#                                       /tmp/lathe-dev and runs every stage, each under its own
#                                       time limit, everything tee'd to $OUT/device_check.log.
#
# The whole --run stays within about 7.5 minutes (DEVICE_CHECK_BUDGET_S, default 450 s): each
# stage gets the smaller of its own limit and what is left of the budget. Results land in $OUT:
# device_check.log, parity.xml, memcheck.log, racecheck.log, bench.json, train_F32.log,
# train_BF16.log (8 files at most come back from the machine).
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

prepare() {
  set -e
  local lock=/tmp/lathe-build.lock
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(dirname "$here")}
  flock "$lock" cmake -S . -B build -DLATHE_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release
  flock "$lock" cmake --build build --target test_cuda_parity bench_cuda lathe -j"${JOBS:-2}"
  local exclude
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")" .device
  grep -qxF '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >> "$exclude"
  local lathe_bin=build/cli/lathe
  [ -x "$lathe_bin" ] || lathe_bin=$(find build -maxdepth 3 -type f -name lathe -perm -u+x | head -1)
  flock "$lock" cmake --build build --target test_kernels test_autograd test_parallel_single -j"${JOBS:-2}"
  ../shared/tools/device-bundle.sh .device/bundle.tar.xz build/tests/kernels/test_cuda_parity \
    build/bench/bench_cuda "$lathe_bin" build/tests/kernels/test_kernels build/tests/autograd/test_autograd \
    build/tests/parallel/test_parallel_single
  echo "prepared .device/bundle.tar.xz; on the GPU machine run (carry: [\".device\"]):"
  echo "  bash scripts/device_check.sh --run"
}

# ---- --run ------------------------------------------------------------------------------------

OUT=${OUT:-/tmp/lathe-device-out}
DEV=/tmp/lathe-dev
BUDGET=${DEVICE_CHECK_BUDGET_S:-450}
START=$(date +%s)
declare -a SUMMARY=()

elapsed() { echo $(( $(date +%s) - START )); }
# limit STAGE_MAX: the stage's limit, cut to what is left of the budget (0 = no time left).
limit() {
  local left=$(( BUDGET - $(elapsed) - 10 ))
  (( left < 0 )) && left=0
  (( $1 < left )) && echo "$1" || echo "$left"
}
row() { SUMMARY+=("$(printf '%-12s %-10s %s' "$1" "$2" "$3")"); }
banner() { echo; echo "==== [$(elapsed)s] $* ===="; }

find_sanitizer() {
  local c
  for c in "$(command -v compute-sanitizer 2>/dev/null)" /usr/local/cuda/bin/compute-sanitizer \
           /usr/local/cuda/compute-sanitizer/compute-sanitizer /opt/nvidia/compute-sanitizer/compute-sanitizer; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

# gtest XML -> "tests failures skipped" (python3 when there is one, grep otherwise).
xml_counts() {
  local xml=$1
  [ -s "$xml" ] || { echo "? ? ?"; return; }
  if command -v python3 >/dev/null; then
    python3 - "$xml" <<'PY'
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot()
cases = r.iter("testcase")
t = f = s = 0
for c in cases:
    t += 1
    if c.find("failure") is not None: f += 1
    elif c.get("result") == "skipped" or c.find("skipped") is not None: s += 1
print(t, f, s)
PY
  else
    local t f
    t=$(grep -o '<testsuites tests="[0-9]*"' "$xml" | grep -o '[0-9]*')
    f=$(grep -o 'failures="[0-9]*"' "$xml" | head -1 | grep -o '[0-9]*')
    echo "${t:-?} ${f:-?} ?"
  fi
}

stage_parity() {
  banner "parity suite (test_cuda_parity)"
  local lim rc
  lim=$(limit 170)
  (( lim > 20 )) || { row parity skipped "no time left"; return; }
  timeout -k 5 "$lim" "$DEV/bin/test_cuda_parity" --gtest_brief=1 --gtest_output="xml:$OUT/parity.xml"
  rc=$?
  local t f s
  read -r t f s <<<"$(xml_counts "$OUT/parity.xml" 2>/dev/null)"
  if [[ "${t:-}" =~ ^[0-9]+$ && "${f:-}" =~ ^[0-9]+$ && "${s:-}" =~ ^[0-9]+$ ]]; then
    local failed
    failed=$(grep -o '<testcase name="[^"]*"[^>]*>[[:space:]]*<failure' "$OUT/parity.xml" 2>/dev/null |
             sed 's/<testcase name="\([^"]*\)".*/\1/' | tr '\n' ' ')
    if command -v python3 >/dev/null; then
      failed=$(python3 -c '
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot()
print(" ".join(c.get("name") for c in r.iter("testcase") if c.find("failure") is not None))' "$OUT/parity.xml")
    fi
    local verdict=FAIL
    [ "$rc" = 0 ] && verdict=PASS
    [ "$rc" = 0 ] && [ "$s" = "$t" ] && verdict=SKIPPED
    row parity "$verdict" \
        "rc $rc: $((t - f - s)) passed, $f failed, $s skipped of $t${failed:+; failed: $failed}"
    return
  fi
  # No XML: the suite crashed or timed out. Run each test on its own to see which ones work.
  row parity CRASH "rc $rc (124 = timeout), no XML; running tests one by one"
  local names name pass=0 fail=0 bad=""
  names=$("$DEV/bin/test_cuda_parity" --gtest_list_tests | awk '/^[^ ]/ {s=$1} /^  / {print s $1}')
  for name in $names; do
    lim=$(limit 40)
    (( lim > 5 )) || { bad+=" (out of time)"; break; }
    if timeout -k 5 "$lim" "$DEV/bin/test_cuda_parity" --gtest_brief=1 --gtest_filter="$name" > "$OUT/one.log" 2>&1; then
      pass=$((pass + 1))
    else
      fail=$((fail + 1)); bad+=" $name(rc $?)"
      tail -n 30 "$OUT/one.log"
    fi
  done
  rm -f "$OUT/one.log"
  row parity-1by1 "$([ $fail = 0 ] && echo PASS || echo FAIL)" "$pass passed, $fail failed:$bad"
}

# The sanitizers slow kernels down by 10-100x: memcheck runs the parity suite but its model and
# large-GEMM tests, racecheck (slower still) a subset of the kernels with shared memory.
MEMCHECK_FILTER='Cuda.*-Cuda.TinyGpt*:Cuda.Matmul*'
RACECHECK_FILTER='Cuda.SoftmaxAndLogSoftmaxForwardBackward:Cuda.LayerNormAndRmsNormForwardBackward:Cuda.CrossEntropyForwardBackward:Cuda.AttentionSmallF32Bf16:Cuda.SumToShape:Cuda.EmbeddingForwardBackwardRepeatedIds'

stage_sanitizer() {
  local tool=$1 filter=$2 max=$3
  banner "compute-sanitizer --tool $tool"
  local san lim rc log="$OUT/$tool.log"
  san=$(find_sanitizer) || { row "$tool" n/a "compute-sanitizer not found"; return; }
  lim=$(limit "$max")
  (( lim > 20 )) || { row "$tool" skipped "no time left"; return; }
  # Exit code 86 marks errors the tool found (gtest failures exit 1).
  timeout -k 5 "$lim" "$san" --tool "$tool" --error-exitcode 86 --print-limit 20 \
    "$DEV/bin/test_cuda_parity" --gtest_brief=1 --gtest_filter="$filter" > "$log" 2>&1
  rc=$?
  tail -n 40 "$log"
  local summary
  summary=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY' "$log" | tail -n 2 | sed 's/=========//g' | tr -s ' ' | tr '\n' ';')
  if grep -q 'Device not supported' "$log"; then
    row "$tool" n/a "the sanitizer does not support this machine's runtime (gVisor?)"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    row "$tool" TIMEOUT "after ${lim}s;${summary}"
  elif [ "$rc" = 86 ]; then
    row "$tool" FAIL "errors found:${summary} (see $tool.log)"
  elif [ "$rc" = 0 ]; then
    row "$tool" PASS "${summary:-no summary line}"
  else
    row "$tool" "rc=$rc" "tests failed or crashed under the tool;${summary}"
  fi
}

stage_bench() {
  banner "bench_cuda"
  local lim rc
  lim=$(limit 150)
  (( lim > 30 )) || { row bench skipped "no time left"; return; }
  timeout -k 5 "$lim" "$DEV/bin/bench_cuda" --json "$OUT/bench.json"
  rc=$?
  # The same training step and profile with the opt-in paths on (cuBLASLt epilogues,
  # multi-tensor AdamW; kernels/cuda/cuda_ops.h), to see what they buy once verified.
  lim=$(limit 90)
  (( lim > 30 )) && LATHE_CUDA_LT_EPILOGUE=1 LATHE_CUDA_MULTI_TENSOR_ADAMW=1 timeout -k 5 "$lim" \
    "$DEV/bin/bench_cuda" --sections train,profile --json "$OUT/bench_optin.json"
  if [ -s "$OUT/bench.json" ] && command -v python3 >/dev/null; then
    local key
    key=$(python3 - "$OUT/bench.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
out = []
for r in d.get("gemm", []) if isinstance(d.get("gemm"), list) else []:
    if r.get("shape", "").startswith(("square", "fc")) and "efficiency" in r:
        out.append(f'gemm {r["shape"].split()[0]} {r["dtype"]} {r["lathe_tflops"]:.0f}TF ({r["efficiency"]:.2f}x cuBLAS)')
for r in d.get("attention", []) if isinstance(d.get("attention"), list) else []:
    if r.get("T") in (1024, 8192) and "fwd_bwd_tflops" in r:
        out.append(f'attn D{r["D"]} T{r["T"]} fwd {r["fwd_tflops"]:.0f} fwd+bwd {r["fwd_bwd_tflops"]:.0f}TF')
for r in d.get("bandwidth", []) if isinstance(d.get("bandwidth"), list) else []:
    if r.get("op", "").startswith(("copy f32 (contiguous)", "add f32")) and "gbps" in r:
        out.append(f'{r["op"].split(" (")[0]} {r["gbps"]:.0f}GB/s')
for r in d.get("train", []) if isinstance(d.get("train"), list) else []:
    if "tokens_per_s" in r:
        out.append(f'gpt2 {r["precision"]} B{r["B"]} {r["tokens_per_s"]/1e3:.0f}K tok/s MFU {100*r["mfu"]:.1f}% peak {r["peak_tensor_bytes"]/2**30:.1f}GiB')
    elif "error" in r:
        out.append(f'gpt2 {r["precision"]} B{r.get("B","?")} ERROR')
print("\n".join(out))
PY
)
    row bench "$([ "$rc" = 0 ] && echo ok || echo "rc=$rc")" "bench.json written"
    while IFS= read -r line; do [ -n "$line" ] && row "" "" "$line"; done <<<"$key"
  else
    row bench "rc=$rc" "no bench.json"
  fi
}



# The device instances of the ordinary kernel/autograd suites (tests parameterised over every
# available device) and the one-rank NCCL communicator test.
stage_gtest() {
  local name=$1 prog=$2 filter=$3 max=$4
  banner "$name ($prog --gtest_filter=$filter)"
  local lim rc
  lim=$(limit "$max")
  (( lim > 10 )) || { row "$name" skipped "no time left"; return; }
  [ -x "$DEV/bin/$prog" ] || { row "$name" n/a "$prog not in the bundle"; return; }
  timeout -k 5 "$lim" "$DEV/bin/$prog" --gtest_brief=1 --gtest_filter="$filter" --gtest_output="xml:$OUT/$name.xml" \
    > "$OUT/$name.log" 2>&1
  rc=$?
  tail -n 25 "$OUT/$name.log"
  local t f s
  read -r t f s <<<"$(xml_counts "$OUT/$name.xml" 2>/dev/null)"
  row "$name" "$([ "$rc" = 0 ] && echo PASS || echo "FAIL")" "rc $rc: ${t:-?} tests, ${f:-?} failed, ${s:-?} skipped"
}

# lathe train on one device; metrics.jsonl of the run lands in $DEV/<dir>.
train_run() {
  local dir=$1 device=$2 precision=$3 steps=$4 lim=$5; shift 5
  timeout -k 5 "$lim" "$DEV/run" lathe train configs/quickstart.pbtxt --set train.device="$device" \
    --set train.steps="$steps" --set train.precision="$precision" --set run_dir="$DEV/$dir" \
    --set logging.progress=LINES --set train.eval_interval=0 --set train.log_interval=1 \
    --set sample.at_eval=false --set checkpoint.keep_last=0 "$@" > "$OUT/train.log" 2>&1
}

# The same run on the CPU and on CUDA (f32 and bf16): the curves must agree; and a CUDA run
# stopped at step 30 and resumed must continue the uninterrupted curve bit for bit.
stage_curves() {
  banner "loss curves: CPU vs CUDA f32 vs CUDA bf16, and resume on CUDA"
  local lim
  lim=$(limit 150)
  (( lim > 40 )) || { row curves skipped "no time left"; return; }
  local per=$(( lim / 6 ))
  train_run c-cpu cpu F32 60 "$per" --set checkpoint.resume=never || { row curves FAIL "cpu run failed: $(tail -3 "$OUT/train.log" | tr '\n' ' ')"; return; }
  train_run c-f32 cuda F32 60 "$per" --set checkpoint.resume=never || { row curves FAIL "cuda f32 run failed: $(tail -3 "$OUT/train.log" | tr '\n' ' ')"; return; }
  train_run c-bf16 cuda BF16 60 "$per" --set checkpoint.resume=never || { row curves FAIL "cuda bf16 run failed: $(tail -3 "$OUT/train.log" | tr '\n' ' ')"; return; }
  for p in F32 BF16; do
    train_run "r-$p" cuda "$p" 30 "$per" --set checkpoint.resume=never --set checkpoint.interval=30 ||
      { row resume FAIL "cuda $p first half failed: $(tail -3 "$OUT/train.log" | tr '\n' ' ')"; return; }
    train_run "r-$p" cuda "$p" 60 "$per" --set checkpoint.resume=auto --set checkpoint.interval=30 ||
      { row resume FAIL "cuda $p resume failed: $(tail -3 "$OUT/train.log" | tr '\n' ' ')"; return; }
  done
  cp "$DEV/c-cpu/metrics.jsonl" "$OUT/metrics_cpu.jsonl" 2>/dev/null
  python3 - "$DEV" <<'PY' > "$OUT/curves.txt" 2>&1
import json, sys, os
dev = sys.argv[1]
def losses(d):
    out = {}
    for line in open(os.path.join(dev, d, "metrics.jsonl")):
        r = json.loads(line)
        if "loss" in r and "step" in r and "event" not in r:
            out[r["step"]] = r["loss"]
    return out
cpu, f32, bf16 = losses("c-cpu"), losses("c-f32"), losses("c-bf16")
steps = sorted(cpu)
def worst(a, b):
    return max(abs(a[s] - b[s]) / abs(b[s]) for s in steps if s in a)
wf, wb = worst(f32, cpu), worst(bf16, cpu)
print("step  cpu        cuda-f32   cuda-bf16")
for s in steps[::10] + [steps[-1]]:
    print(f"{s:4d}  {cpu[s]:.6f}   {f32.get(s, float('nan')):.6f}   {bf16.get(s, float('nan')):.6f}")
ok_f = wf < 2e-3
ok_b = wb < 3e-2
print(f"CURVES f32 max rel diff {wf:.2e} ({'PASS' if ok_f else 'FAIL'} < 2e-3); bf16 {wb:.2e} ({'PASS' if ok_b else 'FAIL'} < 3e-2)")
for p, ref in (("F32", f32), ("BF16", bf16)):
    r = losses(f"r-{p}")
    same = all(r.get(s) == ref[s] for s in ref if s > 30)
    n = sum(1 for s in ref if s > 30)
    print(f"RESUME {p}: steps 31..60 after resuming at 30 {'bit-identical' if same else 'DIFFER'} to the uninterrupted run ({n} steps)")
PY
  cat "$OUT/curves.txt"
  row curves "$(grep -q 'CURVES.*FAIL' "$OUT/curves.txt" && echo FAIL || echo PASS)" "$(grep CURVES "$OUT/curves.txt" | cut -c8-)"
  local r
  while IFS= read -r r; do
    row resume "$(echo "$r" | grep -q DIFFER && echo FAIL || echo PASS)" "$r"
  done < <(grep RESUME "$OUT/curves.txt")
}

run() {
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/device_check.log") 2>&1
  banner "lathe device check (budget ${BUDGET}s)"
  [ -f .device/bundle.tar.xz ] || { echo "no .device/bundle.tar.xz: run scripts/device_check.sh --prepare here and carry .device"; exit 2; }
  rm -rf "$DEV" && mkdir -p "$DEV" && tar -xJf .device/bundle.tar.xz -C "$DEV" || { echo "unpacking the bundle failed"; exit 2; }
  export LD_LIBRARY_PATH="$DEV/lib:${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64:/usr/local/cuda/lib"
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} OMP_WAIT_POLICY=passive OPENBLAS_NUM_THREADS=1
  nvidia-smi -L || echo "nvidia-smi failed"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null || true

  stage_parity
  stage_gtest kernels-cuda test_kernels '*/cuda' 120
  stage_gtest autograd-cuda test_autograd '*/cuda:Gradcheck.RunsOnCudaF64Inputs' 90
  stage_gtest nccl test_parallel_single 'Nccl*' 60
  stage_sanitizer memcheck "$MEMCHECK_FILTER" 120
  stage_sanitizer racecheck "$RACECHECK_FILTER" 90
  stage_bench
  stage_curves

  echo
  echo "==== summary ($(elapsed)s of ${BUDGET}s) ===="
  printf '%-12s %-10s %s\n' stage result details
  local r
  for r in "${SUMMARY[@]}"; do echo "$r"; done
}

case "${1:-}" in
  --prepare) prepare ;;
  --run) run ;;
  *) echo "usage: $0 --prepare (here, builds and packs) | --run (on the GPU machine)" >&2; exit 2 ;;
esac
