#!/usr/bin/env bash
# Context for W8: one small Python app; the "edit" run changes it.
set -euo pipefail
mkdir -p "$1"
printf 'print("hello from W8, v0")\n' >"$1/app.py"
