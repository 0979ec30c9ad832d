#!/usr/bin/env bash
# Launch `jaxalign train` on GPUs: one process driving all GPUs of a node, or one process per node across
# several nodes (jax.distributed over a coordinator address). See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh [extra `jaxalign train` arguments]

Single node (one process sees every visible GPU; the mesh spans them):
  CONFIG=configs/rlev_smollm2_demo.py WORKDIR=runs/demo launch/gpu.sh

Several nodes: run the same command on every node, with the same COORDINATOR and NUM_NODES and each
node's own NODE_RANK (0 on the coordinator node):
  COORDINATOR=10.0.0.1:12345 NUM_NODES=2 NODE_RANK=0 WORKDIR=/shared/runs/x launch/gpu.sh   # node 0
  COORDINATOR=10.0.0.1:12345 NUM_NODES=2 NODE_RANK=1 WORKDIR=/shared/runs/x launch/gpu.sh   # node 1
Under SLURM (one task per node), NUM_NODES and NODE_RANK default to SLURM_NNODES / SLURM_NODEID, and
COORDINATOR to the first host of the allocation on port 12345:
  srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 launch/gpu.sh

Exit status (the trainer's): 0 finished, 75 stopped by SIGTERM after saving a checkpoint (requeue: the
same command resumes), 2 bad input, anything else a failure.

Environment (defaults in brackets):
  CONFIG          config file, optionally with :variant      [configs/rlev_smollm2_demo.py]
  WORKDIR         run directory (shared by all nodes, e.g. NFS or gs://bucket/dir)  (required)
  GPUS            comma-separated GPU ids to use on this node  [all visible]
  COORDINATOR     host:port of process 0 (multi-node only)     [unset: single node]
  NUM_NODES       number of nodes / processes                   [1]
  NODE_RANK       this node's index, 0 .. NUM_NODES-1          [0]
  MEM_FRACTION    fraction of GPU memory JAX preallocates       [0.90]
  JAXALIGN        the jaxalign command                          [.venv/bin/jaxalign if present, else jaxalign]
  TRAIN_ARGS      extra `jaxalign train` arguments (also: the script's arguments)
  DRY_RUN         1 = print the environment and command instead of running it   [0]
EOF
}

die() { echo "gpu.sh: error: $*" >&2; exit 1; }

case "${1:-}" in -h|--help|help) usage; exit 0 ;; esac

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="${CONFIG:-configs/rlev_smollm2_demo.py}"
WORKDIR="${WORKDIR:-}"
GPUS="${GPUS:-}"
NUM_NODES="${NUM_NODES:-${SLURM_NNODES:-1}}"
NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
COORDINATOR="${COORDINATOR:-}"
MEM_FRACTION="${MEM_FRACTION:-0.90}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
DRY_RUN="${DRY_RUN:-0}"
if [[ -z "${JAXALIGN:-}" ]]; then
  if [[ -x "$REPO_ROOT/.venv/bin/jaxalign" ]]; then JAXALIGN="$REPO_ROOT/.venv/bin/jaxalign"; else JAXALIGN=jaxalign; fi
fi

[[ -n "$WORKDIR" ]] || { usage >&2; die "set WORKDIR to the run directory"; }
[[ "$NUM_NODES" =~ ^[1-9][0-9]*$ ]] || die "NUM_NODES must be a positive integer, got '$NUM_NODES'"
[[ "$NODE_RANK" =~ ^[0-9]+$ ]] && (( NODE_RANK < NUM_NODES )) \
  || die "NODE_RANK must be in 0..$((NUM_NODES - 1)), got '$NODE_RANK'"

if (( NUM_NODES > 1 )); then
  if [[ -z "$COORDINATOR" && -n "${SLURM_JOB_NODELIST:-}" ]]; then
    COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):12345"
  fi
  [[ "$COORDINATOR" == *:* ]] || die "multi-node runs need COORDINATOR=host:port (the node with NODE_RANK=0)"
  # Read by the training loop, which calls jax.distributed.initialize() with them.
  export JAX_COORDINATOR_ADDRESS="$COORDINATOR" JAX_NUM_PROCESSES="$NUM_NODES" JAX_PROCESS_ID="$NODE_RANK"
else
  # A single process: do not mistake a one-task SLURM step for a distributed job.
  export JAXALIGN_DISTRIBUTED=0
fi
if [[ -n "$GPUS" ]]; then export CUDA_VISIBLE_DEVICES="$GPUS"; fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION"
# Overlaps collectives with compute in multi-GPU steps.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"

# TRAIN_ARGS is split on spaces on purpose (several flags in one variable).
# shellcheck disable=SC2206
cmd=("$JAXALIGN" train "--config=$CONFIG" "--workdir=$WORKDIR" $TRAIN_ARGS "$@")
echo "gpu.sh: node $NODE_RANK of $NUM_NODES${COORDINATOR:+ (coordinator $COORDINATOR)}: ${cmd[*]}" >&2
if [[ "$DRY_RUN" == "1" ]]; then
  env | grep -E '^(JAX_|JAXALIGN_|CUDA_VISIBLE_DEVICES|XLA_)' | sort
  exit 0
fi
cd "$REPO_ROOT"
# exec: SIGTERM from the scheduler reaches the trainer, which saves a checkpoint and exits. The exit status
# is the trainer's: 0 finished (or already finished), 75 stopped by SIGTERM after saving a checkpoint
# (requeue the job: the same command resumes), 2 bad input (a one-line error; requeuing will not help),
# anything else a failure.
exec "${cmd[@]}"
