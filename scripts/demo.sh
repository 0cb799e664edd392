#!/usr/bin/env bash
# The tutorial's first image, with kiln instead of docker: sets the machine up (setup.sh), builds
# examples/hello-world-flask, runs it (host network, port 5000), fetches the page and stops the
# container again. Run it twice: the second run is all cache hits.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

IMAGE=hello-world-flask
URL=http://127.0.0.1:5000/
EXPECTED="Hello, my first docker images!"
RUN_LOG="$KILN_DEV/logs/demo-run.log"
RUN_PID=

runc_list() {
    runc --root "$KILN_ROOT/executor/runc" list -q 2>/dev/null || true
}

# SIGTERM to `kiln run`, which kills and removes its container; KILL after 20s (a kiln bug).
# Sets RUN_STATUS to its exit status. Also the EXIT trap: the container must not outlive the demo.
RUN_STATUS=
stop_container() {
    [[ -n $RUN_PID ]] || return 0
    local pid=$RUN_PID
    RUN_PID=
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        printf 'error: kiln run (pid %s) ignored SIGTERM for 20s; killing it\n' "$pid" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    RUN_STATUS=0
    wait "$pid" 2>/dev/null || RUN_STATUS=$?
}

build() {
    log "kiln build -t $IMAGE examples/hello-world-flask"
    local t0
    t0=$(now)
    (cd "$REPO_ROOT/examples/hello-world-flask" && "$KILN" build --progress plain -t "$IMAGE" .)
    info "built $IMAGE ($(elapsed "$t0"))"
    "$KILN" images >&2
}

run_and_fetch() {
    if curl -fsS -o /dev/null --max-time 2 "$URL" 2>/dev/null; then
        die "something already answers on $URL; stop it first"
    fi
    log "kiln run $IMAGE (in the background; log: $RUN_LOG)"
    "$KILN" run "$IMAGE" >"$RUN_LOG" 2>&1 &
    RUN_PID=$!

    local t0 page=""
    t0=$(now)
    for _ in $(seq 120); do
        if page=$(curl -fsS --max-time 2 "$URL" 2>/dev/null); then
            break
        fi
        if ! kill -0 "$RUN_PID" 2>/dev/null; then
            cat "$RUN_LOG" >&2
            die "\`kiln run $IMAGE\` exited before serving $URL"
        fi
        sleep 0.5
    done
    if [[ -z $page ]]; then
        cat "$RUN_LOG" >&2
        die "no answer from $URL within 60s"
    fi
    info "answered after $(elapsed "$t0"): curl $URL"
    printf '%s\n' "$page"
    [[ $page == *"$EXPECTED"* ]] || die "the page does not contain \"$EXPECTED\""
}

stop_and_check() {
    log "stopping the container (SIGTERM to kiln run, pid $RUN_PID)"
    local t0 left
    t0=$(now)
    stop_container
    info "kiln run exited with status $RUN_STATUS after $(elapsed "$t0")"
    left=$(runc_list)
    [[ -z $left ]] || die "containers left after SIGTERM (a kiln bug): $left"
    if curl -fsS -o /dev/null --max-time 2 "$URL" 2>/dev/null; then
        die "$URL still answers after kiln run exited"
    fi
    info "no containers left (runc --root $KILN_ROOT/executor/runc list)"
}

main() {
    require_root
    local t0
    t0=$(now)
    bash "$REPO_ROOT/scripts/setup.sh"
    trap stop_container EXIT
    build
    run_and_fetch
    stop_and_check
    log "demo done ($(elapsed "$t0"))"
}

main "$@"
