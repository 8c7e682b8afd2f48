#!/usr/bin/env bash
# The GPU checks of docs/performance.md ("On a GPU") in one short run, for a machine with CUDA and torch but
# possibly without this project's other dependencies: wheels in .whl/ (if any) are installed first, then the
# project, then `advinf bench` of ali_svhn eager and with the speed options, the projected time of the paper's
# SVHN schedule (531k steps of 100), the stacking estimate, and last the GPU tests (given at most 240 s, so that
# a slow compile cannot cost the numbers). Everything lands in $OUT (default: gpu_out).
#
#   OUT=gpu_out bash benchmarks/gpu_check.sh [STEPS]      # STEPS: timed steps per bench repeat (default 100)
set -uo pipefail
OUT=${OUT:-gpu_out}
STEPS=${1:-100}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SITE=/tmp/advinf_site
rm -rf "$SITE"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 2
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" . || exit 2
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# each bench is given at most 150 s, so that a hang cannot cost the runs after it
bench() { timeout 150 "$PY" -m advinf bench "$@"; }

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))" \
    | tee "$OUT/torch.txt" || exit 2

# ali_svhn: eager IEEE fp32, then the whole step recorded as a CUDA graph with bf16 autocast, then with TF32
# (channels_last: the recipe's)
bench recipes/ali_svhn.toml --json --steps "$STEPS" --warmup 20 --repeats 3 \
    > "$OUT/bench_svhn_eager.json" 2> "$OUT/bench_svhn_eager.err"
bench recipes/ali_svhn.toml --json --steps "$STEPS" --warmup 20 --repeats 3 \
    --set train.cuda_graph=true --set train.autocast=bf16 \
    > "$OUT/bench_svhn_graph_bf16.json" 2> "$OUT/bench_svhn_graph_bf16.err"
bench recipes/ali_svhn.toml --json --steps "$STEPS" --warmup 20 --repeats 3 \
    --set train.cuda_graph=true --set train.tf32=true \
    > "$OUT/bench_svhn_graph_tf32.json" 2> "$OUT/bench_svhn_graph_tf32.err"
bench recipes/ali_svhn.toml --json --steps "$STEPS" --warmup 20 --repeats 3 \
    --set train.compile=true --set train.autocast=bf16 \
    > "$OUT/bench_svhn_compile_bf16.json" 2> "$OUT/bench_svhn_compile_bf16.err"
bench recipes/ali_mixture25.toml --json --steps "$STEPS" --warmup 20 --repeats 3 \
    --set train.cuda_graph=true > "$OUT/bench_toy_graph.json" 2> "$OUT/bench_toy_graph.err"

"$PY" -m advinf_benchmarks.project "$OUT"/bench_*.json | tee "$OUT/summary.txt"

# what stacking 10 toy seeds in one step could gain on the GPU (docs/recipes.md, "Several seeds")
"$PY" -m advinf_benchmarks.stacking --device cuda --seeds 10 --json > "$OUT/stacking_cuda.json" \
    2> "$OUT/stacking_cuda.err" && tee -a "$OUT/summary.txt" < "$OUT/stacking_cuda.json"

# the GPU tests (marked gpu; they skip without CUDA)
timeout 240 "$PY" -m pytest -v -m gpu tests/test_gpu.py -p no:cacheprovider --durations=5 2>&1 \
    | tee "$OUT/pytest_gpu.txt"

for f in "$OUT"/*.err; do echo "== $f"; tail -n 4 "$f"; done
