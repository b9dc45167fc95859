#!/usr/bin/env bash
# Everything the lent GPU machine runs, in one call: `tools/gpu/run.sh TASK...` from the repo root.
# Tasks: env; correctness (kernel and engine tests on CUDA in float32 and bfloat16); bench (llama3-8b
# with the transformers baseline, see docs/benchmarks.md); demo (train the demo model from
# build/demo-data, carried with the call); tp-check (tensor parallel on 2 GPUs against one, token for
# token); plans-8b, plans-70b (placements compared on every GPU of the machine); multi (all three);
# all-reduce (decode-sized all-reduces in CUDA graphs, each way); wave2 (the mixtures' and quantized
# kernels on CUDA, then llama3-8b bf16/int4/fp8, qwen3-30b-a3b and deepseek-v3:4 benches); serve (64
# requests through one engine: TTFT, tokens/s, steps and kernels).
# Logs and results go to $OUT (or ./artifacts/gpu when run elsewhere).
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT="${OUT:-$PWD/artifacts/gpu}"
mkdir -p "$OUT"
status=0
for task in "$@"; do
  echo "=== $task"
  case "$task" in
    env)
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
      python3 -c 'import torch, transformers, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__)'
      ;;
    correctness)
      for dtype in float32 bfloat16; do
        TANDEM_TEST_DEVICE=cuda TANDEM_TEST_DTYPE=$dtype python3 -m pytest -q -p no:cacheprovider \
          ${CORRECTNESS_TESTS:-tests/kernels tests/engine} 2>&1 | tee "$OUT/correctness-$dtype.log" | tail -15 || status=1
      done
      ;;
    bench)
      python3 -m tandem.cli.main bench --shape llama3-8b --baseline --json "$OUT/bench-llama3-8b.json" \
        2>&1 | tee "$OUT/bench-llama3-8b.log" || status=1
      ;;
    profile)
      python3 tools/profile_decode.py 2>&1 | tee "$OUT/profile-decode.log" || status=1
      ;;
    tp-check)
      # Tensor parallel on two GPUs against one GPU, token for token.
      timeout "${TP_CHECK_TIMEOUT:-300}" python3 tools/check_tensor_parallel_gpu.py --gpus 2 \
        2>&1 | tee "$OUT/tp-check.log" || { echo "tensor-parallel check failed: no benchmarks"; exit 1; }
      ;;
    plans-8b|plans-70b)
      # The placements compared on every GPU of the machine. Progress lines (each plan's tokens/s
      # as it ends) reach $OUT at once; the per-plan reports are packed at the end (the tool
      # brings back at most eight files).
      gpus=$(nvidia-smi -L | wc -l)
      if [ "$task" = plans-8b ]; then
        shape=llama3-8b; plans="1,tp2,pp2,auto"; lengths=128,2048
        [ "$gpus" -ge 4 ] && plans="1,tp2,tp4,pp2,auto"
      else
        shape=llama3-70b; plans="tp2"; lengths=128
        [ "$gpus" -ge 4 ] && plans="tp2,tp4"
      fi
      # PLANS, PLANS_LENGTHS, PLANS_CONCURRENCY override the defaults (e.g. for a quick profile)
      plans=${PLANS:-$plans}; lengths=${PLANS_LENGTHS:-$lengths}
      # PLANS_PROFILE=1: also each plan's decode-graph replay alone and its kernels (in its log);
      # TANDEM_STACKS_AFTER=S: every rank of a plan prints its threads' stacks every S seconds
      timeout "${PLANS_TIMEOUT:-420}" python3 -m tandem.cli.main bench --shape $shape --plans "$plans" \
        --prompt-lengths $lengths --decode-tokens 128 --concurrency ${PLANS_CONCURRENCY:-64} --json /tmp/plans-$shape.json \
        ${PLANS_PROFILE:+--profile} \
        2>&1 | tee "$OUT/plans-$shape.log"
      tar -C /tmp -czf "$OUT/plans-$shape.tar.gz" --ignore-failed-read plans-$shape.json plans-$shape-plans
      ;;
    all-reduce)
      # decode-sized all-reduces inside CUDA graphs, every way, on 2 GPUs and (where there are) 4
      gpus=$(nvidia-smi -L | wc -l)
      for n in 2 4; do
        [ "$gpus" -ge $n ] && timeout 120 python3 -m torch.distributed.run --standalone --nproc_per_node $n \
          tools/measure_all_reduce.py 2>&1 | grep -E "GPUs|Error" | tee -a "$OUT/all-reduce.log"
      done
      ;;
    wave2)
      # The mixtures and quantized weights on one GPU: their kernels for real (the interpreter
      # checks logic only), then llama3-8b in bf16 / int4 / fp8 and the mixture shapes, each
      # bench with its floors (WAVE2_DECODE tokens, default 128, after a 128-token prompt).
      TANDEM_TEST_DEVICE=cuda timeout "${WAVE2_TEST_TIMEOUT:-100}" python3 -m pytest -q -p no:cacheprovider \
        tests/kernels/test_moe_kernels.py tests/kernels/test_quant_kernels.py 2>&1 \
        | tee "$OUT/wave2-kernels.log" | tail -8 || status=1
      decode=${WAVE2_DECODE:-128}
      for run in "llama3-8b" "llama3-8b int4" "llama3-8b fp8" "qwen3-30b-a3b" "deepseek-v3:4"; do
        set -- $run
        name=$1${2:+-$2}; name=${name//:/-}
        timeout "${WAVE2_BENCH_TIMEOUT:-170}" python3 -m tandem.cli.main bench --shape "$1" ${2:+--quantize $2} \
          --prompt-lengths 128 --decode-tokens "$decode" --json "$OUT/bench-$name.json" \
          2>&1 | tee "$OUT/bench-$name.log" | tail -6 || status=1
      done
      ;;
    serve)
      # many requests through the engine a runner serves: a fresh prompt's TTFT, a round of
      # SERVE_REQUESTS (64) requests of 128 tokens, its steps and kernels (tools/profile_step.py)
      timeout "${SERVE_TIMEOUT:-200}" python3 tools/profile_step.py --shape "${SERVE_SHAPE:-llama3-8b}" \
        --requests "${SERVE_REQUESTS:-64}" 2>&1 | tee "$OUT/serve.log" | grep -E "^round|steps|first token|loaded" || status=1
      ;;
    multi)
      "$0" tp-check plans-8b plans-70b || status=1
      ;;
    demo)
      python3 tools/demo_model/train.py --data build/demo-data --out /tmp/demo-model --steps "${DEMO_STEPS:-1000}" \
        2>&1 | tee "$OUT/demo-train.log" || status=1
      tar -C /tmp -cf "$OUT/demo-model.tar" demo-model  # one file: the tool brings back at most eight
      ;;
    *)
      echo "unknown task $task"; status=2
      ;;
  esac
done
exit $status
