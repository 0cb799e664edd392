#!/usr/bin/env bash
# Context for W4: 200 directories x 100 files of 10 KiB: half random bytes, half base64 text
# (partly compressible), plus app.txt, the file the "one file edited" run changes.
set -euo pipefail
out="$1"
mkdir -p "$out"
for d in $(seq -w 0 199); do
    mkdir -p "$out/d$d"
    if ((10#$d % 2)); then
        head -c 1024000 /dev/urandom | split -b 10240 -a 3 -d - "$out/d$d/f"
    else
        head -c 768000 /dev/urandom | base64 -w 0 | split -b 10240 -a 3 -d - "$out/d$d/t"
    fi
done
printf 'app v0\n' >"$out/app.txt"
