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
# Rank 0 among mpirun's children (read from /proc, so no procps is needed).
rank0() {
  for stat in /proc/[0-9]*/stat; do
    read -r pid _ _ ppid _ <"$stat" 2>/dev/null || continue
    [ "$ppid" = "$job" ] || continue
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=0'; then
      echo "$pid"
    fi
  done
}
# Where rank 0 is not a child here (ranks started by Open MPI's daemons), mpirun gets it.
trap 'r0=$(rank0); kill -TERM "${r0:-$job}" 2>/dev/null' TERM INT
while :; do
  wait "$job"
  code=$?
  kill -0 "$job" 2>/dev/null || break
done
exit "$code"
