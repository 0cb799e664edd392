#!/usr/bin/env bash
# Issue 15: a context tarball on stdin against `tar -x` of the same tarball (not yet a phase of
# `cargo xtask bench`). The W4 context (20,000 files of 10 KiB, 205 MB) is tarred once, then each
# run alternates: `tar -xf` into an empty dir, `kiln build -` with `COPY . /ctx/`, with one small
# `COPY app.txt`, the same from a gzip tarball, and `tar -xzf`. Prints "name seconds..." per case.
# Usage: bench/stdin-context/measure.sh [KILN_BINARY] [WORKDIR]   (RUNS=5 by default)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kiln=${1:-$here/../../target/release/kiln}
work=${2:-/var/tmp/kiln-bench/stdin-context}
mkdir -p "$work"
cd "$work"
if [ ! -f ctx.tar ]; then
    rm -rf ctx
    bash "$here/../workloads/w4-big-context/gen.sh" ctx
    printf 'FROM scratch\nCOPY . /ctx/\n' >ctx/Dockerfile
    printf 'FROM scratch\nCOPY app.txt /app.txt\n' >ctx/Dockerfile.small
    (cd ctx && tar -cf ../ctx.tar .)
    gzip -1 -k -f ctx.tar
    rm -rf ctx
fi
printf '' >kiln.toml
k=("$kiln" --root "$work/root" --config "$work/kiln.toml" build --progress quiet --no-cache)
settle() { sync; sleep 0.5; }
t() { local name=$1; shift; settle; /usr/bin/time -f "$name %e" "$@" >/dev/null; }
for _ in $(seq 1 "${RUNS:-5}"); do
    rm -rf x root && mkdir x
    t tar-x tar -xf ctx.tar -C x
    rm -rf x
    t kiln-copy-all "${k[@]}" - <ctx.tar
    t kiln-copy-one "${k[@]}" -f Dockerfile.small - <ctx.tar
    t kiln-copy-all-gz "${k[@]}" - <ctx.tar.gz
    mkdir x
    t tar-xz tar -xzf ctx.tar.gz -C x
    rm -rf x
done 2>&1 | awk '{a[$1] = a[$1] " " $2} END {for (k in a) print k a[k]}'
rm -rf x root
