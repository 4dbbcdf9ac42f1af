#!/usr/bin/env bash
# The one short GPU check (about 5 minutes on one H100): training tokens/s of eightfold vs a
# plain-torch loop on a Qwen2-0.5B-shaped model (bf16 autocast, sdpa), SFT and DPO, padded and
# packed; and rollouts/s of the per-step DPO engine vs `generate`. Writes its outputs to $OUT
# (or ./gpu-check-out).
#
# The lent GPU image has torch, lightning, transformers and peft but not hydra-core, omegaconf,
# submitit or math-verify: bring them as wheels first (docs/performance.md#gpu-check):
#   make gpu-wheels          # downloads them into .whl/ (ignored by git)
# then, with the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"]).
#
# SMOKE=1 runs the same script on a CPU in about 4 minutes (one decoder layer, a few steps): it
# checks the script and the wheel set, not the speed.
set -uo pipefail
OUT=${OUT:-gpu-check-out}
if [ "${SMOKE:-0}" = 1 ]; then
    DEVICE=cpu; SFT="--layers 1 --steps 3 --warmup 1 --batch-size 2 --seq-len 300"
    DPO="--layers 1 --steps 2 --warmup 1 --batch-size 2 --seq-len 300"; ROLL="--train-steps 100 --negatives 20"
else
    DEVICE=cuda; SFT="--steps 30 --warmup 8"; DPO="--steps 20 --warmup 6 --batch-size 4"
    ROLL="--train-steps 600 --negatives 400"
fi
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"; fi
python3 -c "import torch, lightning, transformers; print(torch.__version__, lightning.__version__, transformers.__version__)" | tee -a "$OUT/gpu.txt"

quiet() { grep -v -E "Warning|warn|Tip|LOCAL_RANK|available|Epoch|stopped|^$"; }
# $SFT, $DPO, $ROLL are word lists on purpose (unquoted).
timeout 200 python3 benchmarks/bench_train.py --model qwen0.5b --device $DEVICE --objective sft $SFT \
    --repeats 1 --varied 2>&1 | quiet | tee "$OUT/bench_train_sft.txt"
timeout 150 python3 benchmarks/bench_train.py --model qwen0.5b --device $DEVICE --objective dpo $DPO \
    --repeats 1 --varied 2>&1 | quiet | tee "$OUT/bench_train_dpo.txt"
timeout 120 python3 benchmarks/bench_rollouts.py --device $DEVICE $ROLL 2>&1 | quiet \
    | tee "$OUT/bench_rollouts.txt"
