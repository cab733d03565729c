#!/usr/bin/env bash
# The prepared GPU check, one call on a lent machine (device `run`, carry .gpu): environment, the KV cache's
# agreement with generate() on CUDA, a tiny bake on CUDA, then random-init 1B and 8B bakes in bf16 (peak memory,
# tokens/s). Each step has its own timeout so one slow step cannot eat the others; results land in $OUT.
#   bash bench/gpu_session.sh   (needs .gpu/tokenizer: the default model's tokenizer files, no weights)
set -u
export PYTHONPATH=$PWD:$PWD/bench PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"; echo "rc=$? ${name} $((SECONDS - t0)) s"
  cat "$OUT/$name.json"; tail -3 "$OUT/$name.log"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, peft, accelerate; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__)"; } 2>&1 | tee "$OUT/env.txt"
step kv_exactness 60 python3 bench/gpu_kv_exactness.py --tokenizer .gpu/tokenizer --device cuda
step device_check 90 python3 bench/device_check.py --tokenizer .gpu/tokenizer --device cuda --precision bf16
step scale_1b 90 python3 bench/gpu_scale_check.py --config Llama-3.2-1B --tokenizer .gpu/tokenizer --dtype bf16 --workdir /tmp/gsc
step scale_8b 200 python3 bench/gpu_scale_check.py --config Llama-3.1-8B --tokenizer .gpu/tokenizer --dtype bf16 --workdir /tmp/gsc
