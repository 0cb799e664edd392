#!/usr/bin/env bash
# Context for W9: one C program that says which architecture it was compiled for and which one
# it runs on (uname, which QEMU answers as the emulated machine).
set -euo pipefail
mkdir -p "$1"
cat >"$1/hello.c" <<'C'
#include <stdio.h>
#include <sys/utsname.h>

#if defined(__aarch64__)
#define BUILT_FOR "aarch64"
#elif defined(__x86_64__)
#define BUILT_FOR "x86_64"
#else
#define BUILT_FOR "other"
#endif

int main(void) {
    struct utsname u;
    if (uname(&u) != 0) {
        perror("uname");
        return 1;
    }
    printf("hello, built for %s, running on %s\n", BUILT_FOR, u.machine);
    return 0;
}
C
