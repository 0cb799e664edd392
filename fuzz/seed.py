#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets from the conformance vectors of kiln-dockerfile.

Usage: python3 fuzz/seed.py OUT_DIR   (creates OUT_DIR/parse and OUT_DIR/lex)
Seeds are then merged into fuzz/corpus/<target> with `cargo fuzz cmin` (see README.md).
"""

import hashlib
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "crates/kiln-dockerfile/tests"
MAX = 4096  # libFuzzer's default -max_len; longer seeds would be truncated anyway


def write(out, data):
    data = data[:MAX]
    out.mkdir(parents=True, exist_ok=True)
    (out / hashlib.sha1(data).hexdigest()).write_bytes(data)


def lex_seed(out, word, env, opts=(0, 1, 2, 4, 8, 14)):
    for o in opts:
        w = word.replace("\\", "`") if o & 1 else word
        parts = [w] + [f"{k}={v}" for k, v in env]
        write(out, bytes([o]) + "\0".join(parts).encode())


def main():
    out = pathlib.Path(sys.argv[1])
    parse, lex = out / "parse", out / "lex"
    for f in ROOT.rglob("Dockerfile"):
        write(parse, f.read_bytes())
    for f in ROOT.glob("conformance/*/*.json"):
        for case in json.loads(f.read_text())["cases"]:
            for key in ("dockerfile", "line"):
                if isinstance(case.get(key), str):
                    write(parse, case[key].encode())
            if "instruction" in case and "rest" in case:
                write(parse, f"FROM a\n{case['instruction']} {case['rest']}\n".encode())
            if "input" in case and isinstance(case["input"], str):
                env = case.get("env", [])
                if isinstance(env, dict):
                    env = list(env.items())
                else:
                    env = [tuple(e.split("=", 1)) if "=" in e else (e, "") for e in env]
                lex_seed(lex, case["input"], env, opts=(0, 1))
    base_env = [("PWD", "/home"), ("SHELL", "bash"), ("KOREAN", "한국어"), ("NULL", "")]
    for line in (ROOT / "conformance/shell-lexer/envVarTest").read_text().splitlines():
        if line.startswith("#") or "|" not in line:
            continue
        word = line.split("|", 1)[1].rsplit("|", 1)[0].strip()
        lex_seed(lex, word, base_env)
    env = []
    for line in (ROOT / "conformance/shell-lexer/wordsTest").read_text().splitlines():
        if line.startswith("ENV "):
            env.append(tuple(line[4:].split("=", 1)))
        elif "|" in line and not line.startswith("#"):
            lex_seed(lex, line.rsplit("|", 1)[0].strip(), env)


main()
