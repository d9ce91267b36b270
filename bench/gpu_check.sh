#!/usr/bin/env bash
# The whole GPU check in one command, on a bare GPU machine, from any folder:
#
#     bash bench/gpu_check.sh OUT_DIR [--rehearse] [--steps a,b,...] [--budget SECONDS]
#
# About 5 minutes on one H100. The steps run in this order, each under its own time limit and
# all within --budget (default 540 s; a step that no longer fits is skipped and says so). A
# failing step is recorded and the next one runs; the exit status is 1 if a step failed, timed
# out or found no time left, 0 otherwise (a step whose script the tree lacks is only reported).
#   env        the machine, its packages, one NCCL collective (bench/gpu_check.py env)
#   attention  the fusion's attention on a fused SDPA kernel with the math path forbidden, in
#              fp32, fp16 and bf16, at 16x256x256 with backward and at 3840x2160
#              (bench/fused_attention.py)
#   inference  mixcl-s at 1024x1024, 2048x2048 and 3840x2160 in fp32 and fp16, the authors'
#              computation against ours, and each speed option at 1024 (bench/bench_inference.py)
#   train      mixcl-s training steps, batch 16 at 256x256, fp16 autocast + GradScaler, L1 + CR
#              (random ResNet-152): the authors' computation against ours, each speed option,
#              and ours under torch.compile (bench/bench_train.py)
#   auto       what speed.*: auto picks on this GPU for training (mixcl-s, 16x256, fp16), test.py
#              and predict.py, how long measuring took, and auto's training step against NCHW
#              and channels-last (bench/bench_auto.py)
#   pytest     the test suite with CUDA visible: the CUDA-only tests run instead of skipping
#   data       data-loader pairs/s on RESIDE-sized synthetic pairs with the machine's cores, to
#              set beside the training images/s (bench/bench_data.py)
#   checkpoint the write and verified read of a mixcl-s last.pth with the defaults (digest,
#              keep 2) and its overhead at train.checkpoint_every_minutes
#              (bench/checkpoint_overhead.py)
#   e2e        in a scratch copy: the quickstart through train.sh with AMP, --resume, test.py,
#              and the training under torchrun with one process (bench/gpu_check.py e2e)
#   ddp        2 processes sharing the GPU with SyncBatchNorm reach the weights of 1 process,
#              without it they do not (bench/ddp_equality.py, where the tree has it)
# OUT_DIR receives three files: gpu_check.log (everything printed), gpu_check.json (every
# figure, each step's status and the verdicts on the targets) and pytest.xml.
#
# Packages the GPU machine lacks (open_clip_torch, ftfy, wcwidth, pytorch-msssim) travel as
# wheels in the repository's git-ignored folder .whl/, downloaded on a machine with internet:
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 \
#       wcwidth==0.9.4 pytorch-msssim==1.0.0
# (one version of each; .whl/ travels with the working tree). When .whl/ holds wheels, the
# first step installs them into a temporary folder (pip --no-index --no-deps --target) and puts
# that folder first on PYTHONPATH, for every later step and the processes they start.
#
# --rehearse runs the same steps on the CPU at tiny sizes (fp32 attention only, training steps
# without CR or compiling, a trivial test selection, the ddp step's command line only), so that
# CI proves the script between GPU loans (tests/test_gpu_check.py); --steps runs only the named
# steps, e.g. to redo a failed one.
set -euo pipefail

usage() {
  echo "usage: bash bench/gpu_check.sh OUT_DIR [--rehearse] [--steps a,b,...] [--budget SECONDS]"
  exit 2
}
[[ $# -ge 1 && $1 != -* ]] || usage
out=$1
shift
rehearse=0
steps=all
budget=540
while [[ $# -gt 0 ]]; do
  case $1 in
    --rehearse) rehearse=1 ;;
    --steps) steps=${2:?--steps needs a list}; shift ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    *) usage ;;
  esac
  shift
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
reserve=15  # seconds kept for the summary
deadline=$((SECONDS + budget))

selected() {
  [[ $1 == wheels || $steps == all || ",$steps," == *",$1,"* ]]
}

record() {  # record NAME STATUS RC SECONDS NOTE
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$work/steps.tsv"
}

step() {  # step NAME LIMIT COMMAND...: run COMMAND within LIMIT seconds and what the budget has left
  local name=$1 limit=$2
  shift 2
  selected "$name" || return 0
  local left=$((deadline - SECONDS - reserve))
  if ((left < (rehearse ? 1 : 20))); then
    echo "== $name: skipped, the budget is spent"
    record "$name" skipped "" 0 "budget spent"
    return 0
  fi
  ((limit <= left)) || limit=$left
  echo
  echo "== $name (at most $limit s): $*"
  local start=$SECONDS rc=0 status=ok
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  if ((rc == 124 || (rc == 137 && SECONDS - start >= limit))); then
    status=timeout
  elif ((rc != 0)); then
    status=failed
  fi
  echo "== $name: $status after $((SECONDS - start)) s"
  record "$name" "$status" "$rc" "$((SECONDS - start))" ""
}

main() {
  echo "GPU check $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "rehearse=$rehearse steps=$steps budget=${budget}s python=$(command -v "$py")"
  if compgen -G ".whl/*.whl" >/dev/null; then
    step wheels 120 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$work/site" .whl/*.whl
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
  fi

  local dev=cuda ddp_args=(--device cuda --json "$work/ddp.json")
  local pytest_args=(-q -rs -p no:cacheprovider -o addopts= --junitxml="$out/pytest.xml")
  local attention=(--model mixcl-s --train 16x256 --large 3840x2160)
  local inference=(--models mixcl-s --sizes 1024 2048 3840x2160 --option-size 1024
    --precisions none fp16 --repeats 3)
  local train=(--models mixcl-s --shapes 16x256 --option-shape 16x256 --cr --compile --repeats 8
    --warmup 2)
  local auto=(--model mixcl-s --shape 16x256 --precision fp16 --inference --repeats 5 --warmup 2)
  local default_workers  # data.num_workers, train.py's loader workers
  default_workers=$("$py" -c "from utils.config import DataConfig; print(DataConfig.num_workers)")
  local data=(--size 620x460 --pairs 512 --patch 256 --batch 16 --pin-memory --repeats 3
    --workers $(printf '%s\n' 4 "$default_workers" "$(nproc)" | sort -nu))
  local checkpoint=(--repeats 5)
  local e2e=()
  if ((rehearse)); then
    dev=cpu
    ddp_args=(--help)
    pytest_args+=(--noconftest tests/test_protocol.py)
    attention=(--model mixcl-t --train 2x32 --large 64x48 --precisions none --threads 1)
    inference=(--models mixcl-t --sizes 48 64x48 --option-size 48 --settings straightforward
      optimised --repeats 1 --in-process --threads 1)
    train=(--models mixcl-t --shapes 2x32 --option-shape 2x32 --settings straightforward
      optimised --repeats 1 --warmup 1 --threads 1)
    auto=(--model mixcl-t --shape 2x32 --inference --repeats 1 --threads 1)
    data=(--size 64x48 --pairs 8 --patch 32 --batch 4 --workers 0 1 --repeats 1 --threads 1)
    checkpoint=(--config configs/quickstart.yaml --repeats 1)
    e2e=(--rehearse)
  fi

  step env 60 "$py" -m bench.gpu_check env --device "$dev" --json "$work/env.json"
  step attention 120 "$py" -m bench.fused_attention --device "$dev" "${attention[@]}" \
    --json "$work/attention.json"
  step inference 150 "$py" -m bench.bench_inference --device "$dev" "${inference[@]}" \
    --json "$work/inference.json"
  step train 210 "$py" -m bench.bench_train --device "$dev" --precision fp16 "${train[@]}" \
    --json "$work/train.json"
  step auto 120 "$py" -m bench.bench_auto --device "$dev" "${auto[@]}" --json "$work/auto.json"
  step pytest 300 "$py" -m pytest "${pytest_args[@]}"
  step data 90 "$py" -m bench.bench_data "${data[@]}" --json "$work/data.json"
  step checkpoint 60 "$py" -m bench.checkpoint_overhead --device "$dev" "${checkpoint[@]}" \
    --dir "$work" --json "$work/checkpoint.json"
  step e2e 240 "$py" -m bench.gpu_check e2e "${e2e[@]}" --timeout 200 --json "$work/e2e.json"
  if [[ -f bench/ddp_equality.py ]]; then
    step ddp 150 "$py" -m bench.ddp_equality "${ddp_args[@]}"
  elif selected ddp; then
    echo "== ddp: skipped, bench/ddp_equality.py is not in this tree"
    record ddp skipped "" 0 "not in this tree"
  fi

  "$py" -m bench.gpu_check summary --work "$work" --junit "$out/pytest.xml" \
    --json "$out/gpu_check.json"
}

main 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
