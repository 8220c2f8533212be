# Shared settings for the Chorus dev and test scripts. Source it; do not run it.
# Everything built or started lives under CHORUS_CACHE (outside the repository),
# so a fresh clone reuses earlier builds and `git clean` never loses them.
set -euo pipefail

CHORUS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHORUS_CACHE=${CHORUS_CACHE:-$HOME/.cache/chorus}
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$CHORUS_ROOT/tests/control-plane/go.mod")
CP_BIN=$CHORUS_CACHE/control-plane/$K8S_VERSION
TOOLS_BIN=$CHORUS_CACHE/tools/bin
export GOCACHE=${GOCACHE:-$CHORUS_CACHE/go-build}
# -buildvcs=false: the control plane is built from the module cache, not from
# a VCS checkout; kept when the caller sets GOFLAGS too.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CHORUS_CACHE/target}
export PATH=$TOOLS_BIN:$PATH
mkdir -p "$CHORUS_CACHE"

say() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# step "message": a progress line with the elapsed time of the whole command.
CHORUS_T0=${CHORUS_T0:-$(date +%s)}
export CHORUS_T0
step() { printf '[%4ss] %s\n' "$(( $(date +%s) - CHORUS_T0 ))" "$*" >&2; }

# hash_of FILE...: a short content hash, for cache keys.
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# pid_alive PID: true when the process exists.
pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# need_packages WHY CMD:PACKAGE...: installs the Debian PACKAGE of each CMD
# that is not on PATH (as root; otherwise says what to install and fails),
# so `make test` works on a fresh machine. WHY names who needs them.
need_packages() {
  local why=$1 missing=() pair
  shift
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    die "$why needs: sudo apt-get install ${missing[*]}"
  fi
  step "installing ${missing[*]} ($why)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  }
}
