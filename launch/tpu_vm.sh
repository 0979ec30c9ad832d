#!/usr/bin/env bash
# Create a Cloud TPU VM slice, install this project on every worker and run `jaxalign train` on all hosts at
# once. Each host runs one process; the loop detects the multi-host TPU environment and calls
# jax.distributed.initialize() itself, so no coordinator flags are needed.
#
# Usage: launch/tpu_vm.sh {create|setup|train|status|ssh|stop|delete|all} [extra jaxalign train args]
# See launch/README.md for a walkthrough.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND [extra `jaxalign train` arguments]

Commands:
  create   create the TPU VM slice (gcloud compute tpus tpu-vm create)
  setup    copy this checkout to every worker and install it (pip install -e ".[tpu]" in a venv)
  train    run `jaxalign train` on all workers at once (in the background, logs to $REMOTE_DIR/train.log)
  status   show the slice, the last lines of every worker's train.log and how the trainer ended
  ssh      open a shell on worker 0
  stop     send SIGTERM to the training processes (they save a checkpoint and exit with status 75)
  delete   delete the slice
  all      create + setup + train

Environment (defaults in brackets):
  TPU_NAME        name of the slice                                  [jaxalign]
  ZONE            zone                                               [us-central2-b]
  PROJECT         GCP project                                        [gcloud's configured project]
  ACCELERATOR     accelerator type, e.g. v4-32, v5p-64, v6e-16       [v4-32]
  RUNTIME         TPU VM software version                            [tpu-ubuntu2204-base]
  SPOT            1 = spot (preemptible) capacity                    [0]
  CONFIG          config file, optionally with :arg                  [configs/rlev_qwen25_7b_tpu.py]
  WORKDIR         run directory; gs://bucket/path, or a local path   (required for train)
                  (a local path is per host: use gs:// on multi-host slices so every host sees the
                  same checkpoints)
  REMOTE_DIR      where the project lives on the workers             [~/jaxalign]
  PYTHON          python on the workers                              [python3]
  EXTRAS          pip extras to install                              [tpu]
  TRAIN_ARGS      extra `jaxalign train` arguments (also: arguments after COMMAND)

Example:
  ACCELERATOR=v5p-32 ZONE=us-east5-a WORKDIR=gs://my-bucket/runs/rlev7b \
    launch/tpu_vm.sh all --config.model.spec=/mnt/models/Qwen2.5-7B
EOF
}

TPU_NAME="${TPU_NAME:-jaxalign}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-0}"
CONFIG="${CONFIG:-configs/rlev_qwen25_7b_tpu.py}"
WORKDIR="${WORKDIR:-}"
REMOTE_DIR="${REMOTE_DIR:-~/jaxalign}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-tpu}"
TRAIN_ARGS="${TRAIN_ARGS:-}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "tpu_vm.sh: error: $*" >&2; exit 1; }

require_gcloud() {
  command -v gcloud >/dev/null 2>&1 || die "gcloud not found; install the Google Cloud SDK and run 'gcloud auth login'"
}

gcloud_tpu() {
  # gcloud compute tpus tpu-vm <verb> NAME --zone ... [--project ...] <args>
  local verb="$1"; shift
  local project_flag=()
  [[ -n "$PROJECT" ]] && project_flag=(--project "$PROJECT")
  gcloud compute tpus tpu-vm "$verb" "$TPU_NAME" --zone "$ZONE" ${project_flag[@]+"${project_flag[@]}"} "$@"
}

on_all_workers() {
  gcloud_tpu ssh --worker=all --command "$1"
}

cmd_create() {
  require_gcloud
  local spot_flag=()
  [[ "$SPOT" == "1" ]] && spot_flag=(--spot)
  echo "creating $ACCELERATOR slice '$TPU_NAME' in $ZONE"
  gcloud_tpu create --accelerator-type "$ACCELERATOR" --version "$RUNTIME" ${spot_flag[@]+"${spot_flag[@]}"}
}

cmd_setup() {
  require_gcloud
  local archive
  archive="$(mktemp -t jaxalign.XXXXXX.tar.gz)"
  # Tracked and untracked-but-not-ignored files only: no virtual environments, runs or caches.
  (cd "$REPO_ROOT" && git ls-files -co --exclude-standard -z | tar --null -czf "$archive" -T -)
  echo "copying the project ($(du -h "$archive" | cut -f1)) to every worker of '$TPU_NAME'"
  local project_flag=()
  [[ -n "$PROJECT" ]] && project_flag=(--project "$PROJECT")
  gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:/tmp/jaxalign.tar.gz" --worker=all --zone "$ZONE" \
    ${project_flag[@]+"${project_flag[@]}"}
  rm -f "$archive"
  on_all_workers "set -e; mkdir -p $REMOTE_DIR && tar -xzf /tmp/jaxalign.tar.gz -C $REMOTE_DIR && \
    cd $REMOTE_DIR && $PYTHON -m venv .venv && .venv/bin/pip install -q --upgrade pip && \
    .venv/bin/pip install -q -e '.[$EXTRAS]' && .venv/bin/python -c 'import jax; print(jax.devices())'"
}

cmd_train() {
  require_gcloud
  [[ -n "$WORKDIR" ]] || die "set WORKDIR (gs://bucket/path for a multi-host slice, or a local directory)"
  local args
  args="--config=$CONFIG --workdir=$WORKDIR $TRAIN_ARGS $*"
  echo "starting on all workers: jaxalign train $args"
  # JAXALIGN_DISTRIBUTED=1: every host calls jax.distributed.initialize(), which finds the slice's hosts
  # from the TPU metadata. nohup + background: the run survives the ssh session; every host writes its
  # own train.log and train.pid.
  # train.exit gets the trainer's exit status when it ends (see `status`).
  on_all_workers "cd $REMOTE_DIR && rm -f train.exit && nohup bash -c 'JAXALIGN_DISTRIBUTED=1 \
    .venv/bin/jaxalign train $args > train.log 2>&1 < /dev/null & echo \$! > train.pid; wait \$!; \
    echo \$? > train.exit' > /dev/null 2>&1 < /dev/null &"
  echo "started; follow with: TPU_NAME=$TPU_NAME ZONE=$ZONE $0 status"
}

cmd_status() {
  require_gcloud
  gcloud_tpu describe --format="value(state,acceleratorType,health)"
  on_all_workers "echo \"== \$(hostname)\"; tail -n 5 $REMOTE_DIR/train.log 2>/dev/null || echo '(no train.log yet)'; \
    if [ -f $REMOTE_DIR/train.exit ]; then case \$(cat $REMOTE_DIR/train.exit) in \
      0) echo 'ended: finished';; 75) echo 'ended: stopped after saving a checkpoint (train again resumes)';; \
      2) echo 'ended: bad input (see the error line in train.log)';; *) echo \"ended: failed (exit \$(cat $REMOTE_DIR/train.exit))\";; \
    esac; else echo 'running (or not started)'; fi"
}

cmd_stop() {
  require_gcloud
  # SIGTERM: the loop finishes its step, saves a checkpoint and exits; `train` again resumes from it.
  on_all_workers "test -f $REMOTE_DIR/train.pid && kill -TERM \$(cat $REMOTE_DIR/train.pid) 2>/dev/null \
    && echo \"\$(hostname): SIGTERM sent\" || echo \"\$(hostname): no running train\""
}

main() {
  local command="${1:-}"
  [[ -n "$command" ]] || { usage; exit 2; }
  shift
  case "$command" in
    create) cmd_create ;;
    setup) cmd_setup ;;
    train) cmd_train "$@" ;;
    status) cmd_status ;;
    ssh) require_gcloud; gcloud_tpu ssh --worker=0 ;;
    stop) cmd_stop ;;
    delete) require_gcloud; gcloud_tpu delete --quiet ;;
    all) cmd_create; cmd_setup; cmd_train "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; die "unknown command '$command'" ;;
  esac
}

main "$@"
