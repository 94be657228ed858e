#!/usr/bin/env bash
# launch.sh: run darkhorse over several machines with Open MPI.
#   deploy/launch.sh HOSTFILE MODEL_DIR [darkhorse command and options...]
# e.g.
#   deploy/launch.sh deploy/hostfile.example /srv/models/genesis-5b serve --port 8080
#   deploy/launch.sh hosts /srv/models/genesis-5b generate --prompt "Hello" --max-tokens 64
# MODEL_DIR must exist at the same path on every host (a shared filesystem or a copy), with
# the same bytes: the workers check the model identity at start-up and refuse a mismatch.
# Every host needs the same darkhorse build (DARKHORSE=path, default build/cli/darkhorse from
# this checkout, which must be at the same path everywhere, else the darkhorse on PATH, as the
# .deb installs it) and password-less ssh from here.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,11p' "$0"; exit 2; }
hostfile=$1 model=$2
shift 2
cmd=$1
shift
# the checkout's build next to this script, else the installed one (the .deb's /usr/bin/darkhorse)
bin=${DARKHORSE:-$(cd "$(dirname "$0")/.." && pwd)/build/cli/darkhorse}
[ -n "${DARKHORSE:-}" ] || [ -x "$bin" ] || bin=$(command -v darkhorse) || { echo "launch: no darkhorse: build it or install the .deb" >&2; exit 2; }
np=$(awk '!/^#/ && NF { n += 1; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, s, "="); n += s[2] - 1 } } END { print n }' "$hostfile")
[ "$np" -ge 2 ] || { echo "launch: the hostfile gives $np slots; the cluster needs at least 2" >&2; exit 2; }
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
# --bind-to none: each rank runs its own thread pool across the cores of its machine.
# -x passes the environment the ranks need; a graceful stop is: kill -TERM the coordinator (rank 0)
# process, not mpirun (mpirun forwards SIGTERM to every rank and kills them a second later).
exec mpirun --hostfile "$hostfile" -np "$np" --bind-to none -x OPENBLAS_CORETYPE -x DH_LOG_LEVEL \
  "$bin" "$cmd" --model "$model" "$@"
