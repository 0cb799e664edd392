#!/usr/bin/env bash
# W7 needs no context files.
set -euo pipefail
mkdir -p "$1"
