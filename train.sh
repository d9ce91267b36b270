#!/usr/bin/env bash
# Train, then test the best checkpoint:  bash train.sh [CONFIG] [section.key=value ...]
# Uses torchrun with one process per GPU when more than one GPU is visible.
set -euo pipefail
cd "$(dirname "$0")"

config=configs/reside6k/mixcl-s.yaml
if [[ $# -gt 0 && "$1" != *=* && "$1" != --* ]]; then
  config=$1
  shift
fi

# Check the data and classify every image with CLIP once, in one process, before training.
python train.py "$config" "$@" --prepare-domains

gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [[ "$gpus" -gt 1 ]]; then
  torchrun --standalone --nproc_per_node="$gpus" train.py "$config" "$@"
else
  python train.py "$config" "$@"
fi

run_dir=$(python train.py "$config" "$@" --print-config | python -c "
import sys, yaml
from utils.config import config_from_dict
print(config_from_dict(yaml.safe_load(sys.stdin)).run_dir)")
python test.py --ckpt "$run_dir/best.pth"
