#!/usr/bin/env bash
# Train, then test the best checkpoint once every epoch is trained:
#   bash train.sh [CONFIG] [section.key=value ...] [--resume MODE] [--stop-after-epochs N]
# CONFIG defaults to configs/reside6k/mixcl-s.yaml. Relative paths (CONFIG, data, runs) are
# relative to the folder you run it from, as with `python train.py` (--help lists its options).
# The same command starts the run or continues it (--resume auto unless told otherwise), so a
# --stop-after-epochs chunk, a stopped or a requeued job goes on where it ended; only the chunk
# that trains the last epoch tests. With several GPUs visible, torchrun runs one process per GPU.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

for arg in "$@"; do
  if [[ "$arg" == -h || "$arg" == --help ]]; then
    sed -n '2,8p' "$0" | cut -c3-
    exit 0
  fi
done

config=$here/configs/reside6k/mixcl-s.yaml
if [[ $# -gt 0 && "$1" != *=* && "$1" != -* ]]; then
  config=$1
  shift
fi

# Check the data and classify every image with CLIP once, in one process, before training.
python "$here/train.py" "$config" --resume auto "$@" --prepare-domains

gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [[ "$gpus" -gt 1 ]]; then
  torchrun --standalone --nproc_per_node="$gpus" "$here/train.py" "$config" --resume auto "$@"
else
  python "$here/train.py" "$config" --resume auto "$@"
fi

best=$(python "$here/train.py" "$config" "$@" --print-test-ckpt)
if [[ -n "$best" ]]; then
  python "$here/test.py" --ckpt "$best" --overwrite
fi
