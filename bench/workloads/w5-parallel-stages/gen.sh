#!/usr/bin/env bash
# W5 needs no context files.
set -euo pipefail
mkdir -p "$1"
