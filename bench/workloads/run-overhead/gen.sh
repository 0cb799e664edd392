#!/usr/bin/env bash
# run-overhead needs no context files.
set -euo pipefail
mkdir -p "$1"
