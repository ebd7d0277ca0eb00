#!/usr/bin/env bash
# Train on one node with N GPUs through the DeepSpeed launcher.
set -euo pipefail
usage() {
  cat <<'USAGE'
usage: scripts/train_single_node.sh [--num_gpus N] [--master_port PORT] [--dry_run] CONFIG.yaml [fmtspec train options ...]

Runs `fmtspec train CONFIG.yaml ...` in N processes on this node (default: every visible GPU) with
`deepspeed --num_gpus N`. Everything after CONFIG.yaml goes to `fmtspec train` unchanged, e.g.
  scripts/train_single_node.sh --num_gpus 8 configs/promot/mt5_xxl/rte/promot.yaml \
      --set engine.deepspeed=zero2 --output runs/rte_promot
  scripts/train_single_node.sh --num_gpus 8 configs/promot/mt5_xxl/rte/promot.yaml --output runs/rte_promot --resume

  --num_gpus N        processes (one per GPU); default: every GPU CUDA_VISIBLE_DEVICES lists, else
                      torch.cuda.device_count()
  --master_port PORT  rendezvous port on this node (default 29500; change it to run two jobs at once)
  --dry_run           print the launcher command instead of running it

Environment: DEEPSPEED (launcher command, default `deepspeed`), PYTHON (for counting GPUs, default `python`),
CUDA_VISIBLE_DEVICES (device numbers, e.g. 4,5,6,7): the GPUs to run on, the first N of them with --num_gpus N
(passed to DeepSpeed as --include localhost:4,5,6,7: its --num_gpus alone takes GPUs 0..N-1 whatever
CUDA_VISIBLE_DEVICES says); NCCL_* settings pass through (NCCL_DEBUG=INFO to diagnose).
Without GPUs (a test), DS_ACCELERATOR=cpu runs N CPU processes over gloo.
USAGE
}
die() { echo "train_single_node.sh: $*" >&2; exit 2; }
num_gpus=""; port=29500; dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --num_gpus) [[ $# -ge 2 ]] || die "--num_gpus needs a value"; num_gpus="$2"; shift 2 ;;
    --master_port) [[ $# -ge 2 ]] || die "--master_port needs a value"; port="$2"; shift 2 ;;
    --dry_run) dry=1; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || die "missing CONFIG.yaml (see --help)"
[[ -f "$1" ]] || die "config not found: $1"
[[ -z "$num_gpus" || "$num_gpus" =~ ^[1-9][0-9]*$ ]] || die "--num_gpus must be a positive integer, got '$num_gpus'"
[[ "$port" =~ ^[0-9]+$ ]] || die "--master_port must be a port number, got '$port'"
visible="${CUDA_VISIBLE_DEVICES:-}"
if [[ "$visible" =~ ^[0-9]+(,[0-9]+)*$ && "${DS_ACCELERATOR:-}" != cpu ]]; then
  IFS=, read -r -a ids <<< "$visible"
  if [[ -n "$num_gpus" ]]; then
    (( num_gpus <= ${#ids[@]} )) ||
      die "--num_gpus $num_gpus, but CUDA_VISIBLE_DEVICES=$visible lists ${#ids[@]} GPU(s)"
    ids=("${ids[@]:0:num_gpus}")
  fi
  resources=(--include "localhost:$(IFS=,; echo "${ids[*]}")")
else
  if [[ -z "$num_gpus" ]]; then
    num_gpus=$(${PYTHON:-python} -c 'import torch; print(max(torch.cuda.device_count(), 1))')
  fi
  resources=(--num_gpus "$num_gpus")
fi
cmd=(${DEEPSPEED:-deepspeed} "${resources[@]}" --master_port "$port" --no_local_rank --module fmtspec train "$@")
if (( dry )); then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"
