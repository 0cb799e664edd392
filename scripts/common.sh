# shellcheck shell=bash
# Shared by setup.sh, demo.sh and test.sh: paths, the dev environment and logging helpers.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KILN_DEV="${KILN_DEV:-/var/tmp/kiln-dev}"
# The local registry that stands in for Docker Hub. Not 5000: the example app serves there.
KILN_DEV_REGISTRY="${KILN_DEV_REGISTRY:-127.0.0.1:5123}"
# Which cargo profile builds kiln: release for the demo; test.sh uses dev so that the test
# suite and the binary are compiled once, in one profile.
KILN_PROFILE="${KILN_PROFILE:-release}"
if [[ $KILN_PROFILE == release ]]; then
    KILN_PROFILE_DIR=release
else
    KILN_PROFILE_DIR=debug
fi
# shellcheck disable=SC2034 # used by the scripts that source this file
KILN="$REPO_ROOT/target/$KILN_PROFILE_DIR/kiln"

# Every kiln command in these scripts uses the dev data dir and the mirror config.
export KILN_ROOT="$KILN_DEV/root"
export KILN_CONFIG="$KILN_DEV/kiln.toml"

log() { printf '==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Seconds since the epoch with a fraction, for the timings the scripts print.
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

require_root() {
    [[ $(id -u) -eq 0 ]] || die "$(basename "$0") must run as root (kiln mounts overlayfs and runs runc)"
}
