#!/usr/bin/env bash
# Train on several nodes listed in a DeepSpeed hostfile (the launcher reaches them over pdsh/ssh).
set -euo pipefail
usage() {
  cat <<'USAGE'
usage: scripts/train_multi_node.sh --hostfile FILE [--num_nodes N] [--num_gpus N] [--master_addr HOST]
                                   [--master_port PORT] [--launcher pdsh|openmpi|mvapich] [--venv_script FILE]
                                   [--dry_run] CONFIG.yaml [fmtspec train options ...]

Run from the first node. The hostfile has one line per node: `hostname slots=<GPUs>`. Every node needs the
same checkout at the same path, the same Python environment (activate it with --venv_script FILE, sourced on
every node), passwordless ssh from this node, and a shared file system for the run folder (rank 0 writes it,
every process reads checkpoints from it on --resume).

  --num_nodes N / --num_gpus N   use the first N hosts / N GPUs per host (default: all of the hostfile)
  --master_addr HOST             default: the first host of the hostfile
  --dry_run                      print the launcher command instead of running it

Environment: the launcher copies NCCL_*, PYTHON* and the lines of ./.deepspeed_env or ~/.deepspeed_env
(VAR=value) to every node. Useful: NCCL_SOCKET_IFNAME (the network interface between nodes, e.g. eth0 or
ib0), NCCL_IB_DISABLE=1 without InfiniBand, NCCL_DEBUG=INFO to diagnose. DEEPSPEED: launcher command.
USAGE
}
die() { echo "train_multi_node.sh: $*" >&2; exit 2; }
hostfile=""; addr=""; port=29500; launcher=pdsh; extra=(); dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --hostfile|--master_addr|--master_port|--launcher|--num_nodes|--num_gpus|--venv_script)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --hostfile) hostfile="$2" ;;
        --master_addr) addr="$2" ;;
        --master_port) port="$2" ;;
        --launcher) launcher="$2" ;;
        *) [[ "$1" != --num_* || "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"
           extra+=("$1" "$2") ;;
      esac
      shift 2 ;;
    --dry_run) dry=1; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[[ -n "$hostfile" ]] || die "--hostfile is required (see --help)"
[[ -f "$hostfile" ]] || die "hostfile not found: $hostfile"
[[ $# -ge 1 ]] || die "missing CONFIG.yaml (see --help)"
[[ -f "$1" ]] || die "config not found: $1"
case "$launcher" in pdsh|openmpi|mvapich) ;; *) die "--launcher must be pdsh, openmpi or mvapich, got '$launcher'" ;; esac
[[ -n "$addr" ]] || addr=$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$hostfile")
[[ -n "$addr" ]] || die "hostfile $hostfile names no host"
cmd=(${DEEPSPEED:-deepspeed} --hostfile "$hostfile" --master_addr "$addr" --master_port "$port"
     --launcher "$launcher" "${extra[@]}" --no_local_rank --module fmtspec train "$@")
if (( dry )); then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"
