#!/usr/bin/env bash
# The GPU checks of docs/performance.md ("On a GPU") in one run of about 5 minutes, for a machine with CUDA and
# torch but possibly without this project's other dependencies: wheels in .whl/ (if any) are installed first,
# then the project; then `advinf bench` of ali_svhn eager and with the speed options and of the toy recorded, the
# projected time of the paper's SVHN schedule (531k steps of 100), where the recorded step's time goes
# (profile_step), the recorded step's options side by side in one process (layout, batch, compile), the stacking
# estimate, and last the GPU tests (at most 240 s, so that a slow compile cannot cost the numbers).
#
#   OUT=gpu_out bash benchmarks/gpu_check.sh [STEPS]      # STEPS: timed steps per bench repeat (default 100)
#
# $OUT receives at most three files: summary.txt (the lines to read), pytest_gpu.txt, and gpu_check.tgz with
# every report and log, packed again after each stage (a machine that returns few files, or a run stopped at its
# time limit, still gives back what the finished stages measured). Every stage's time limit is cut to what is left of
# BUDGET seconds (default 560: a lent machine's call may run 600; a stage left under 5 s is skipped), and
# the exit status is 1 if any stage failed or was skipped.
set -uo pipefail
OUT=${OUT:-gpu_out}
STEPS=${1:-100}
BUDGET=${BUDGET:-560}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
[[ "$PY" == */* ]] && PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # a relative path: made absolute
FAILED=()
SITE=/tmp/advinf_site
rm -rf "$SITE"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 2
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" . || exit 2
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# the archive is written beside and renamed into place: a run killed while packing keeps the previous one
pack() {
    tar czf "$OUT/.gpu_check.tgz.part" -C "$WORK" . && mv -f "$OUT/.gpu_check.tgz.part" "$OUT/gpu_check.tgz"
    cp "$WORK/summary.txt" "$OUT/summary.txt" 2>/dev/null
    true
}
say() { echo "$*" | tee -a "$WORK/summary.txt"; }
# at most $1 seconds, and never past the budget (so that a hang cannot cost the stages after it)
limit() { local left=$((BUDGET - SECONDS)); (( left < $1 )) && echo $(( left > 0 ? left : 0 )) || echo "$1"; }
stage() {  # stage NAME SECONDS COMMAND...: run it under its limit; a failure is recorded and said
    local name=$1 secs rc; secs=$(limit "$2"); shift 2
    if (( secs < 5 )); then FAILED+=("$name"); say "SKIPPED: $name (the budget of $BUDGET s is spent)"; return; fi
    timeout "$secs" "$@"; rc=$?
    if (( rc != 0 )); then FAILED+=("$name"); say "FAILED: $name (exit status $rc, limit ${secs} s)"; fi
    pack
}
bench() { local name=$1; shift; stage "bench $name" 150 bash -c '"$0" -m advinf bench "$@" > "$WORK/bench_'"$name"'.json" \
    2> "$WORK/bench_'"$name"'.err"' "$PY" "$@" --json --steps "$STEPS" --warmup 20 --repeats 3; }
export WORK

nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
if ! "$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))" \
        > "$WORK/torch.txt" 2>&1; then
    say "torch cannot use CUDA here: $(tail -n 1 "$WORK/torch.txt")"; pack; exit 2
fi
say "torch, CUDA, device: $(cat "$WORK/torch.txt")"

# ali_svhn (channels_last: the recipe's): eager IEEE fp32; recorded with bf16; recorded with TF32; compiled with
# bf16; the toy recorded
bench svhn_eager recipes/ali_svhn.toml
bench svhn_graph_bf16 recipes/ali_svhn.toml --set train.cuda_graph=true --set train.autocast=bf16
bench svhn_graph_tf32 recipes/ali_svhn.toml --set train.cuda_graph=true --set train.tf32=true
bench svhn_compile_bf16 recipes/ali_svhn.toml --set train.compile=true --set train.autocast=bf16
bench toy_graph recipes/ali_mixture25.toml --set train.cuda_graph=true
"$PY" -m advinf_benchmarks.project "$WORK"/bench_*.json | tee -a "$WORK/summary.txt"
pack

# where the recorded step's time goes: the eager bf16 step's kernels (the recorded step runs the same ones)
stage profile 90 bash -c '"$0" -m advinf_benchmarks.profile_step recipes/ali_svhn.toml --set train.autocast=bf16 \
    --steps 20 --rows 30 > "$WORK/profile.txt" 2>&1' "$PY"
grep -m1 "kernels in" "$WORK/profile.txt" | tee -a "$WORK/summary.txt"

# the recorded bf16 step's options side by side, in one process (samples/s column: at the first one's batch);
# compile on its own, so that a slow compile cannot cost the other rows
options() { local name=$1; shift; stage "options $name" 120 bash -c '"$0" -m advinf_benchmarks.options \
    recipes/ali_svhn.toml --data random --steps 200 --warmup 30 --repeats 2 --set train.device=cuda "$@" \
    > "$WORK/options_'"$name"'.txt" 2>&1' "$PY" "$@"; tail -n 4 "$WORK/options_$name.txt" | tee -a "$WORK/summary.txt"; }
options layout --config graph_bf16=train.cuda_graph=true,train.autocast=bf16 \
    --config graph_bf16_nchw=train.cuda_graph=true,train.autocast=bf16,train.channels_last=false \
    --config graph_bf16_b500=train.cuda_graph=true,train.autocast=bf16,train.batch_size=500
options compile --config graph_bf16=train.cuda_graph=true,train.autocast=bf16 \
    --config graph_bf16_compile=train.cuda_graph=true,train.autocast=bf16,train.compile=true

# what stacking 10 toy seeds in one step could gain on the GPU (docs/recipes.md, "Several seeds")
stage stacking 120 bash -c '"$0" -m advinf_benchmarks.stacking --device cuda --seeds 10 --json \
    > "$WORK/stacking_cuda.json" 2> "$WORK/stacking_cuda.err"' "$PY"
say "stacking: $(tr -d '\n ' < "$WORK/stacking_cuda.json" | head -c 300)"

# the GPU tests (marked gpu; they skip without CUDA)
stage tests 240 bash -c '"$0" -m pytest -v -m gpu tests/test_gpu.py -p no:cacheprovider --durations=5 \
    > "$1/pytest_gpu.txt" 2>&1' "$PY" "$OUT"
say "GPU tests: $(tail -n 1 "$OUT/pytest_gpu.txt")"
for f in "$WORK"/*.err; do echo "== $f"; tail -n 4 "$f"; done
say "${#FAILED[@]} stage(s) failed or skipped${FAILED[*]:+: ${FAILED[*]}}; ${SECONDS} s"
pack
[[ ${#FAILED[@]} -eq 0 ]]
