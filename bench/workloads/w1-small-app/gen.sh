#!/usr/bin/env bash
# Context for W1-W3: 40 small source files and a top-level app file that the late `COPY . .` reads.
set -euo pipefail
out="$1"
mkdir -p "$out/src"
for i in $(seq 1 40); do
    printf 'module %d\nvalue=%d\n' "$i" "$((i * 7))" >"$out/src/m$i.txt"
done
printf 'name=bench\nthreads=4\nlevel=debug\nport=8080\nmode=fast\nextra=1\n' >"$out/src/config.txt"
printf 'main app v0\n' >"$out/app.txt"
