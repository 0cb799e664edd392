#!/usr/bin/env bash
# W6 needs no context files.
set -euo pipefail
mkdir -p "$1"
