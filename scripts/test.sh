#!/usr/bin/env bash
# Sets the machine up (setup.sh), then runs the whole test suite against the seeded registry.
# Everything is built once, in the dev profile (hot dependencies are optimised, see Cargo.toml),
# which keeps CI's compile time low. External tools (runc, the registry, dockerd) are required,
# not skipped. Extra arguments go to `cargo test`.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

main() {
    require_root
    local t0
    t0=$(now)
    KILN_PROFILE=dev bash "$REPO_ROOT/scripts/setup.sh"
    if ! command -v cargo >/dev/null; then
        PATH="${HOME:-/root}/.cargo/bin:$PATH"
    fi
    log "cargo test --workspace"
    (
        cd "$REPO_ROOT"
        # The CLI's remote tests start target/debug/kilnd, another package's binary.
        cargo build -p kilnd
        KILN_TEST_REQUIRE_EXTERNAL=1 KILN_TEST_REGISTRY="$KILN_DEV_REGISTRY" \
            cargo test --workspace "$@"
    )
    log "tests passed ($(elapsed "$t0"))"
}

main "$@"
