#!/usr/bin/env bash
# The one short GPU check (about 5 minutes on one H100): training tokens/s of eightfold vs a
# plain-torch loop on a Qwen2-0.5B-shaped model (sdpa), SFT and DPO, padded and packed, each row
# also against the H100 anchor (docs/performance.md#the-gpu-anchor); and rollouts/s of the per-step
# DPO engine vs `generate`. Writes its outputs to $OUT (or ./gpu-check-out); summary.txt holds
# the precision-policy and anchor lines.
#
# The eightfold rows run the precision policy of a real run (docs/real-models.md#precision): the
# model arrives in bf16 (--load-dtype bfloat16, as model.dtype=bfloat16 loads it), the objective's
# own LightningModule (PolicyModule.setup) makes the trained weights and AdamW state fp32, and
# bf16-mixed computes in bf16. Each row prints the dtypes it trained with; a row whose master
# weights are not fp32 stops the check (exit status 1).
#
# The lent GPU image has torch, lightning, transformers and peft but not hydra-core, omegaconf,
# submitit or math-verify: bring them as wheels first (docs/performance.md#gpu-check):
#   make gpu-wheels          # downloads them into .whl/ (ignored by git)
# then, with the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"]).
#
# SMOKE=1 runs the same script on a CPU in about 4 minutes (one decoder layer, a few steps): it
# checks the script and the wheel set, not the speed. A loaded CPU takes longer: the smoke's
# timeouts allow 10 minutes per part (the GPU's are the 5-minute budget).
set -uo pipefail
OUT=${OUT:-gpu-check-out}
if [ "${SMOKE:-0}" = 1 ]; then
    DEVICE=cpu; SFT="--layers 1 --steps 3 --warmup 1 --batch-size 2 --seq-len 300"
    DPO="--layers 1 --steps 2 --warmup 1 --batch-size 2 --seq-len 300"; ROLL="--train-steps 100 --negatives 20"
    T_SFT=600; T_DPO=600; T_ROLL=600
else
    DEVICE=cuda; SFT="--steps 30 --warmup 8"; DPO="--steps 20 --warmup 6 --batch-size 4"
    ROLL="--train-steps 600 --negatives 400"
    T_SFT=200; T_DPO=150; T_ROLL=120
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
status=0; rm -f "$OUT/failures.txt"
part_done() {  # $1: the part's exit status, $2: its name
    if [ "$1" != 0 ]; then status=1; echo "$2: exit status $1 (124 = timed out)" | tee -a "$OUT/failures.txt"; fi
}
timeout $T_SFT python3 benchmarks/bench_train.py --model qwen0.5b --device $DEVICE --objective sft $SFT \
    --load-dtype bfloat16 --repeats 1 --varied 2>&1 | quiet | tee "$OUT/bench_train_sft.txt"
part_done "${PIPESTATUS[0]}" bench_train_sft
timeout $T_DPO python3 benchmarks/bench_train.py --model qwen0.5b --device $DEVICE --objective dpo $DPO \
    --load-dtype bfloat16 --repeats 1 --varied 2>&1 | quiet | tee "$OUT/bench_train_dpo.txt"
part_done "${PIPESTATUS[0]}" bench_train_dpo
timeout $T_ROLL python3 benchmarks/bench_rollouts.py --device $DEVICE $ROLL 2>&1 | quiet \
    | tee "$OUT/bench_rollouts.txt"
part_done "${PIPESTATUS[0]}" bench_rollouts
echo "== summary: precision policy and tokens/s vs the anchor" | tee "$OUT/summary.txt"
grep -h -E "master weights|policy broken|^(SFT|DPO):|^row|^plain|^eightfold|anchor" \
    "$OUT"/bench_train_*.txt | tee -a "$OUT/summary.txt"
[ -f "$OUT/failures.txt" ] && tee -a "$OUT/summary.txt" < "$OUT/failures.txt"
echo "gpu_check: exit status $status" | tee -a "$OUT/summary.txt"
exit $status
