#!/usr/bin/env bash
# W10 needs no context files.
set -euo pipefail
mkdir -p "$1"
