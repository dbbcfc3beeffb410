#!/usr/bin/env bash
# Run COMMAND on this worker with its environment snapshot and log under logs/<run id>/.
#
#   HEADLAB_RUN_ID=abc bash tpu/worker.sh COMMAND...
#
# Writes logs/<run id>/worker-<id>.env (host, versions, device-related variables),
# worker-<id>.log (stdout and stderr) and worker-<id>.status (the exit status), and exits with
# COMMAND's status. SIGTERM (a preemption notice) is passed on to COMMAND. <id> is TPU_WORKER_ID, SLURM_PROCID or HEADLAB_PROCESS_ID (else 0).
set -uo pipefail
RUN_ID="${HEADLAB_RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}"
ID="${TPU_WORKER_ID:-${SLURM_PROCID:-${HEADLAB_PROCESS_ID:-0}}}"
DIR="${HEADLAB_LOG_DIR:-logs}/$RUN_ID"
mkdir -p "$DIR"
{
  echo "host=$(hostname)"
  echo "date=$(date -u +%FT%TZ)"
  echo "worker=$ID"
  echo "command=$*"
  echo "python=$(python --version 2>&1)"
  python - <<'PY' 2>&1
import importlib.metadata as m
for name in ("jax", "jaxlib", "libtpu", "flax", "optax", "orbax-checkpoint", "grain"):
    try:
        print(f"{name}={m.version(name)}")
    except m.PackageNotFoundError:
        pass
PY
  env | grep -E '^(HEADLAB_|JAX_|XLA_|TPU_|LIBTPU|CUDA_VISIBLE|NCCL_|SLURM_)' | sort
} > "$DIR/worker-$ID.env"
# On a preemption notice the OS sends SIGTERM: hand it to COMMAND (the training loop then saves
# the step all workers agree on and exits 0) and keep waiting until COMMAND has finished.
"$@" > >(tee "$DIR/worker-$ID.log") 2>&1 &
child=$!
trap 'echo "worker $ID: SIGTERM, passed to the command" >&2; kill -TERM "$child" 2>/dev/null' TERM
status=
while [[ -z "$status" ]]; do
  wait "$child"; code=$?
  kill -0 "$child" 2>/dev/null || status=$code   # a trapped signal interrupts wait: wait again
done
wait   # and for tee (the process substitution) to write the last lines of the log
echo "$status" > "$DIR/worker-$ID.status"
exit "$status"
