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
# $OUT receives three files, whatever happens: summary.txt (the lines to read), pytest_gpu.txt, and
# gpu_check.tgz with every report and log, packed again after each stage (a machine that returns few files, or
# a run stopped at its time limit, still gives back what the finished stages measured).
set -uo pipefail
OUT=${OUT:-gpu_out}
STEPS=${1:-100}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SITE=/tmp/advinf_site
rm -rf "$SITE"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 2
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" . || exit 2
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

pack() { tar czf "$OUT/gpu_check.tgz" -C "$WORK" . && cp "$WORK/summary.txt" "$OUT/summary.txt" 2>/dev/null; true; }
say() { echo "$*" | tee -a "$WORK/summary.txt"; }
# each bench is given at most 150 s, so that a hang cannot cost the runs after it
bench() { local name=$1; shift; timeout 150 "$PY" -m advinf bench "$@" --json --steps "$STEPS" --warmup 20 \
    --repeats 3 > "$WORK/bench_$name.json" 2> "$WORK/bench_$name.err"; pack; }

nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
"$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))" \
    > "$WORK/torch.txt" || { cat "$WORK/torch.txt"; pack; exit 2; }
say "torch, CUDA, device: $(cat "$WORK/torch.txt")"

# ali_svhn (channels_last: the recipe's): eager IEEE fp32; recorded with bf16; recorded with TF32; compiled with
# bf16; the toy recorded
bench svhn_eager recipes/ali_svhn.toml
bench svhn_graph_bf16 recipes/ali_svhn.toml --set train.cuda_graph=true --set train.autocast=bf16
bench svhn_graph_tf32 recipes/ali_svhn.toml --set train.cuda_graph=true --set train.tf32=true
bench svhn_compile_bf16 recipes/ali_svhn.toml --set train.compile=true --set train.autocast=bf16
bench toy_graph recipes/ali_mixture25.toml --set train.cuda_graph=true
(cd "$WORK" && "$PY" -m advinf_benchmarks.project bench_*.json) | tee -a "$WORK/summary.txt"
pack

# where the recorded step's time goes: the eager bf16 step's kernels (the recorded step runs the same ones)
timeout 90 "$PY" -m advinf_benchmarks.profile_step recipes/ali_svhn.toml --set train.autocast=bf16 --steps 20 \
    --rows 30 > "$WORK/profile.txt" 2>&1
grep -m1 "kernels in" "$WORK/profile.txt" | tee -a "$WORK/summary.txt"
pack

# the recorded bf16 step's options side by side, in one process (samples/s column: at the first one's batch)
timeout 200 "$PY" -m advinf_benchmarks.options recipes/ali_svhn.toml --data random --steps 200 --warmup 30 \
    --repeats 2 --set train.device=cuda \
    --config graph_bf16=train.cuda_graph=true,train.autocast=bf16 \
    --config graph_bf16_nchw=train.cuda_graph=true,train.autocast=bf16,train.channels_last=false \
    --config graph_bf16_compile=train.cuda_graph=true,train.autocast=bf16,train.compile=true \
    --config graph_bf16_b500=train.cuda_graph=true,train.autocast=bf16,train.batch_size=500 \
    > "$WORK/options.txt" 2>&1
tail -n 5 "$WORK/options.txt" | tee -a "$WORK/summary.txt"
pack

# what stacking 10 toy seeds in one step could gain on the GPU (docs/recipes.md, "Several seeds")
timeout 120 "$PY" -m advinf_benchmarks.stacking --device cuda --seeds 10 --json > "$WORK/stacking_cuda.json" \
    2> "$WORK/stacking_cuda.err" && say "stacking: $(tr -d '\n ' < "$WORK/stacking_cuda.json" | head -c 300)"
pack

# the GPU tests (marked gpu; they skip without CUDA)
timeout 240 "$PY" -m pytest -v -m gpu tests/test_gpu.py -p no:cacheprovider --durations=5 > "$OUT/pytest_gpu.txt" 2>&1
say "GPU tests: $(tail -n 1 "$OUT/pytest_gpu.txt")"
for f in "$WORK"/*.err; do echo "== $f"; tail -n 4 "$f"; done
pack
