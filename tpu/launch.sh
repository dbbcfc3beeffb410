#!/usr/bin/env bash
# Run one command on every worker of a TPU VM slice, then collect the logs.
#
#   tpu/launch.sh [--dry-run] [--sync] [--setup] [--project P] TPU_NAME ZONE -- COMMAND...
#
#   --sync    copy this checkout to ~/headlab on every worker first (gcloud scp --worker=all)
#   --setup   pip install jax[tpu] and this checkout (editable) on every worker
#   --dry-run print the gcloud commands instead of running them
#
# Every worker runs tpu/worker.sh COMMAND with HEADLAB_DISTRIBUTED=1, so that
# `python -m common.train ...` (or `headlab train ...`) calls jax.distributed.initialize(),
# which on a TPU VM finds the coordinator and its own process id from the TPU metadata.
# Logs and an environment snapshot of each worker come back to ./logs/<run id>/.
#
# Example (v5e-16, 4 workers; `lm` is the train target projects/lm/train.py):
#   tpu/launch.sh --sync --setup my-v5e us-west4-a -- \
#     python -m common.train lm --mesh fsdp=4,tensor=4 --workdir /tmp/run1 --set train.steps=1000
set -euo pipefail

DRY=0; SYNC=0; SETUP=0; PROJECT=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --sync) SYNC=1; shift ;;
    --setup) SETUP=1; shift ;;
    --project) PROJECT=(--project "$2"); shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -lt 4 || "$3" != "--" ]]; then
  echo "usage: $0 [--dry-run] [--sync] [--setup] [--project P] TPU_NAME ZONE -- COMMAND..." >&2
  exit 2
fi
TPU="$1"; ZONE="$2"; shift 3
RUN_ID="${HEADLAB_RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}"
REMOTE_DIR="${HEADLAB_REMOTE_DIR:-headlab}"
JAX_VERSION="$(python -c 'import jax; print(jax.__version__)' 2>/dev/null || echo 0.10.2)"
CMD="$(printf '%q ' "$@")"

run() {
  if [[ $DRY -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
G=(gcloud compute tpus tpu-vm)
ON_ALL=(--zone "$ZONE" "${PROJECT[@]}" --worker=all)

if [[ $SYNC -eq 1 ]]; then
  run "${G[@]}" ssh "$TPU" "${ON_ALL[@]}" --command "mkdir -p ~/$REMOTE_DIR"
  run "${G[@]}" scp --recurse "$(git rev-parse --show-toplevel 2>/dev/null || pwd)/." \
    "$TPU:~/$REMOTE_DIR" "${ON_ALL[@]}"
fi
if [[ $SETUP -eq 1 ]]; then
  run "${G[@]}" ssh "$TPU" "${ON_ALL[@]}" --command \
    "cd ~/$REMOTE_DIR && pip install -q 'jax[tpu]==$JAX_VERSION' -e ."
fi
status=0
run "${G[@]}" ssh "$TPU" "${ON_ALL[@]}" --command \
  "cd ~/$REMOTE_DIR && HEADLAB_DISTRIBUTED=1 HEADLAB_RUN_ID=$RUN_ID bash tpu/worker.sh $CMD" \
  || status=$?
[[ $DRY -eq 1 ]] || mkdir -p "logs/$RUN_ID"
run "${G[@]}" scp --recurse "$TPU:~/$REMOTE_DIR/logs/$RUN_ID/." "logs/$RUN_ID/" "${ON_ALL[@]}" \
  || echo "warning: could not collect every worker's logs" >&2
echo "logs: logs/$RUN_ID (exit status $status)"
exit $status
