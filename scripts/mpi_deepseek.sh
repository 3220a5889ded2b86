#!/usr/bin/env bash
# `deepseek` with the commands that run a model under `mpirun -np ${DEEPSEEK_RANKS:-2}
# deepseek --expert-parallel`, so the server tests run through it unchanged
# (DEEPSEEK_BIN=scripts/mpi_deepseek.sh). A SIGTERM or Ctrl-C goes to rank 0 alone, which drains
# its requests and then lets the other ranks go: Open MPI's mpirun, signalled itself, ends every
# rank at once and exits 1 whatever they did.
BIN=${DEEPSEEK_MPI_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/deepseek}
case "$1" in
  serve | generate | forward | bench | eval | chat | info) ;;
  *) exec "$BIN" "$@" ;;
esac
mpirun --oversubscribe --bind-to none -np "${DEEPSEEK_RANKS:-2}" "$BIN" --expert-parallel "$@" &
job=$!
rank0() {
  for p in $(pgrep -P "$job"); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=0'; then
      echo "$p"
    fi
  done
}
trap 'kill -TERM $(rank0) 2>/dev/null' TERM INT
while :; do
  wait "$job"
  code=$?
  kill -0 "$job" 2>/dev/null || break
done
exit "$code"
