#!/usr/bin/env bash
# Prepares this machine (Debian bookworm, root) for kiln's demo and tests. Idempotent: each step
# checks what is already there, so a second run only confirms.
#
#   1. installs the Debian packages kiln and its tests use
#   2. builds target/release/kiln
#   3. starts a local registry on $KILN_DEV_REGISTRY that kiln's config names as docker.io's mirror
#   4. seeds that registry with base images made here, with kiln itself:
#      library/busybox:latest, library/debian:bookworm-slim, library/python:3.11-slim, and the
#      differential corpus' bases (tests/oracle): library/busybox:bare (bin/ only, no /etc/passwd
#      or /etc/group) and library/busybox:users (fixed users and groups); library/busybox:multi,
#      an OCI index for linux/amd64 and linux/arm64 made from Debian's busybox-static for both
#      architectures (each also tagged alone: busybox:multi-amd64, busybox:multi-arm64);
#      library/gcc:bookworm-cross (images/gcc-cross: gcc and the arm64 cross compiler, on the
#      debian image) for the cross-compilation workload and test
#   5. QEMU for foreign-platform RUN steps: qemu-user-static's aarch64 handler registered in
#      binfmt_misc (mounted first where missing) with the F flag, so containers can use it
#   6. the object storage servers the s3 and azblob cache tests start: moto's S3 server (pip,
#      in a venv at $KILN_DEV/moto) and Azurite's blob service (npm, in $KILN_DEV/node)
#
# Environment: KILN_DEV (default /var/tmp/kiln-dev) holds all state; delete it to start over.
# KILN_DEV_REGISTRY (default 127.0.0.1:5123) is the registry's address.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PACKAGES=(
    runc docker-registry busybox-static debootstrap debian-archive-keyring docker.io
    curl ca-certificates tar gzip
    # Git sources (ADD <git url>, Git URL contexts) and their tests (git daemon)
    git
    # RUN --mount=type=ssh: ssh-agent and ssh-add for `kiln build --ssh ID=KEYFILE` and its tests
    openssh-client
    # seccomp: kiln compiles the sandbox profile with libseccomp (runc uses the same library)
    libseccomp-dev
    # tests: certificates for the TLS registry
    openssl
    # cargo build: a C toolchain for the crypto crates (rustls' aws-lc-rs, ring)
    gcc libc6-dev make
    # multi-platform builds: RUN for a foreign platform through binfmt_misc and QEMU
    qemu-user-static binfmt-support
    # s3 cache tests: moto_server, pip-installed into a venv
    python3-venv
)
# The cache tests' object storage servers (crates/kiln-test/src/buckets.rs finds them here).
MOTO_VERSION=5.2.5
AZURITE_VERSION=3.37.0
# The foreign architectures whose handlers the tests need, as qemu-user-static names them.
QEMU_ARCHES=(aarch64)
DEBIAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SUMMARY=()

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        info "packages: all ${#PACKAGES[@]} present"
        return
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    SUMMARY+=("installed packages: ${missing[*]}")
}

find_cargo() {
    if ! command -v cargo >/dev/null; then
        PATH="${HOME:-/root}/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null ||
        die "cargo not found: install a Rust toolchain (rustup; see rust-version in Cargo.toml)"
}

build_kiln() {
    find_cargo
    local t0
    t0=$(now)
    log "building kiln (cargo build --profile $KILN_PROFILE -p kiln-cli)"
    (cd "$REPO_ROOT" && cargo build --profile "$KILN_PROFILE" -p kiln-cli --quiet)
    [[ -x $KILN ]] || die "cargo did not produce $KILN"
    info "kiln: $KILN ($(elapsed "$t0"))"
}

write_if_changed() {
    local path="$1" content="$2"
    if [[ ! -f $path || $(<"$path") != "$content" ]]; then
        printf '%s\n' "$content" >"$path"
    fi
}

prepare_dirs() {
    mkdir -p "$KILN_DEV"/{registry,cache,logs,work} "$KILN_ROOT"
    write_if_changed "$KILN_DEV/registry.yml" "version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $KILN_DEV/registry
  delete:
    enabled: true
http:
  addr: $KILN_DEV_REGISTRY"
    # Unmodified Dockerfiles (`FROM python:3.11-slim`) resolve through the mirror.
    write_if_changed "$KILN_CONFIG" "[registry.\"docker.io\"]
mirrors = [\"$KILN_DEV_REGISTRY\"]

[registry.\"$KILN_DEV_REGISTRY\"]
http = true"
}

registry_up() {
    curl -fsS -o /dev/null --max-time 2 "http://$KILN_DEV_REGISTRY/v2/" 2>/dev/null
}

start_registry() {
    if registry_up; then
        info "registry: already answering on $KILN_DEV_REGISTRY"
        return
    fi
    log "starting docker-registry on $KILN_DEV_REGISTRY"
    # Its own session, so it outlives this script and the terminal that started it.
    setsid nohup docker-registry serve "$KILN_DEV/registry.yml" \
        >>"$KILN_DEV/logs/registry.log" 2>&1 </dev/null &
    echo $! >"$KILN_DEV/registry.pid"
    for _ in $(seq 50); do
        registry_up && break
        kill -0 "$(<"$KILN_DEV/registry.pid")" 2>/dev/null ||
            die "docker-registry exited; see $KILN_DEV/logs/registry.log"
        sleep 0.2
    done
    registry_up || die "docker-registry is not answering after 10s; see $KILN_DEV/logs/registry.log"
    SUMMARY+=("started registry on $KILN_DEV_REGISTRY (pid $(<"$KILN_DEV/registry.pid"))")
}

# Whether the registry has REPO:TAG, asking for the manifest types kiln pushes.
has_manifest() {
    curl -fsS -o /dev/null --head --max-time 10 \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' \
        -H 'Accept: application/vnd.oci.image.index.v1+json' \
        "http://$KILN_DEV_REGISTRY/v2/$1/manifests/$2" 2>/dev/null
}

# The URI this machine's apt uses for SUITE (one-line .list and deb822 .sources files).
apt_uri() {
    local suite="$1" f
    {
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -f $f ]] || continue
            awk -v suite="$suite" '$1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) print $i
            }' "$f"
        done
        for f in /etc/apt/sources.list.d/*.sources; do
            [[ -f $f ]] || continue
            awk -v suite="$suite" '
                function flush() {
                    if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && enabled != "no" && uris != "") {
                        split(uris, u, " "); print u[1]
                    }
                    types = uris = suites = enabled = ""
                }
                /^[ \t]*$/ { flush(); next }
                /^#/ { next }
                { key = tolower($1); $1 = ""; sub(/^ +/, "") }
                key == "types:" { types = $0 } key == "uris:" { uris = $0 }
                key == "suites:" { suites = $0 } key == "enabled:" { enabled = tolower($0) }
                END { flush() }' "$f"
        done
    } | awk 'NR == 1' | sed 's:/*$::'
}

unmount_under() {
    local dir="$1" m
    [[ -d $dir ]] || return 0
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
}

make_busybox_tar() {
    local out="$1" dir="$KILN_DEV/work/busybox-rootfs" applet
    rm -rf "$dir"
    mkdir -p "$dir"/{bin,etc,root,tmp}
    install -m 0755 /bin/busybox "$dir/bin/busybox"
    while read -r applet; do
        [[ $applet == busybox ]] || ln -s busybox "$dir/bin/$applet"
    done < <("$dir/bin/busybox" --list)
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' \
        >"$dir/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$dir/etc/group"
    chmod 1777 "$dir/tmp"
    chmod 0700 "$dir/root"
    tar --numeric-owner -C "$dir" -cf "$out" .
    rm -rf "$dir"
}

seed_busybox() {
    local repo=library/busybox tag=latest
    if has_manifest "$repo" "$tag"; then
        info "$repo:$tag: in the registry"
        return
    fi
    local t0 tarball="$KILN_DEV/work/busybox.tar"
    t0=$(now)
    log "seeding $repo:$tag from $(readlink -f /bin/busybox) (busybox-static)"
    make_busybox_tar "$tarball"
    "$KILN" import --change 'CMD ["sh"]' "$tarball" "$KILN_DEV_REGISTRY/$repo:$tag" >/dev/null
    "$KILN" push "$KILN_DEV_REGISTRY/$repo:$tag" >"$KILN_DEV/logs/push-busybox.log" 2>&1 ||
        { tail -n 20 "$KILN_DEV/logs/push-busybox.log" >&2; die "pushing $repo:$tag failed"; }
    rm -f "$tarball"
    SUMMARY+=("seeded $repo:$tag ($(elapsed "$t0"))")
}

# The package mirror is always the one this machine's apt uses: the project never names a
# package host of its own.
debian_mirror() {
    local mirror
    mirror=$(apt_uri bookworm)
    [[ -n $mirror ]] ||
        die "no 'bookworm' source in this machine's apt sources (/etc/apt/sources.list*): the debian image is built from the mirror apt uses"
    printf '%s\n' "$mirror"
}

# The differential corpus' bases (tests/oracle/README.md): the same busybox, with fixed file
# times so that what a step copies beside them records the same everywhere. VARIANT is `bare`
# (bin/ only: no /etc/passwd, no /etc/group) or `users` (the users and groups below, and the
# /dev, /proc and /sys a distribution has, so a RUN on it adds no mount points to its layer).
make_busybox_variant_tar() {
    local out="$1" variant="$2" dir="$KILN_DEV/work/busybox-$2-rootfs" applet
    rm -rf "$dir"
    mkdir -p "$dir/bin"
    install -m 0755 /bin/busybox "$dir/bin/busybox"
    while read -r applet; do
        [[ $applet == busybox ]] || ln -s busybox "$dir/bin/$applet"
    done < <("$dir/bin/busybox" --list)
    if [[ $variant == users ]]; then
        mkdir -p "$dir"/{dev,etc,proc,root,sys,tmp,home/app,home/multi}
        printf '%s\n' \
            'root:x:0:0:root:/root:/bin/sh' \
            'daemon:x:1:1:daemon:/usr/sbin:/bin/false' \
            'bin:x:2:2:bin:/bin:/bin/false' \
            'app:x:1000:1000:app:/home/app:/bin/sh' \
            'multi:x:1001:1001:multi:/home/multi:/bin/sh' \
            'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$dir/etc/passwd"
        printf '%s\n' \
            'root:x:0:' 'daemon:x:1:' 'bin:x:2:' 'staff:x:50:multi' 'app:x:1000:' \
            'multi:x:1001:' 'dev:x:2000:multi,app' 'nobody:x:65534:' >"$dir/etc/group"
        chmod 0644 "$dir/etc/passwd" "$dir/etc/group"
        chmod 1777 "$dir/tmp"
        chmod 0700 "$dir/root"
        chown 1000:1000 "$dir/home/app"
        chown 1001:1001 "$dir/home/multi"
    fi
    tar --numeric-owner --sort=name --mtime=@1577836800 -C "$dir" -cf "$out" .
    rm -rf "$dir"
}

seed_busybox_variant() {
    local repo=library/busybox tag="$1"
    if has_manifest "$repo" "$tag"; then
        info "$repo:$tag: in the registry"
        return
    fi
    local t0 tarball="$KILN_DEV/work/busybox-$tag.tar"
    t0=$(now)
    log "seeding $repo:$tag from $(readlink -f /bin/busybox) (busybox-static)"
    make_busybox_variant_tar "$tarball" "$tag"
    "$KILN" import --change 'CMD ["sh"]' "$tarball" "$KILN_DEV_REGISTRY/$repo:$tag" >/dev/null
    "$KILN" push "$KILN_DEV_REGISTRY/$repo:$tag" >"$KILN_DEV/logs/push-busybox-$tag.log" 2>&1 ||
        { tail -n 20 "$KILN_DEV/logs/push-busybox-$tag.log" >&2; die "pushing $repo:$tag failed"; }
    rm -f "$tarball"
    SUMMARY+=("seeded $repo:$tag ($(elapsed "$t0"))")
}

# binfmt_misc with qemu-user-static's handlers: the kernel runs a foreign binary through QEMU.
# The F flag (fix binary, as Debian registers them) opens the interpreter once, at registration,
# so it also works inside a container's root filesystem where /usr/bin/qemu-*-static is absent.
setup_binfmt() {
    local dir=/proc/sys/fs/binfmt_misc arch entry
    if [[ ! -e $dir/register ]]; then
        log "mounting binfmt_misc on $dir"
        mount -t binfmt_misc binfmt_misc "$dir" ||
            die "cannot mount binfmt_misc on $dir (a container needs --privileged or the host's mount)"
        SUMMARY+=("mounted binfmt_misc")
    fi
    for arch in "${QEMU_ARCHES[@]}"; do
        entry="$dir/qemu-$arch"
        if [[ ! -e $entry ]] || ! grep -qx enabled "$entry"; then
            log "registering the qemu-$arch binfmt handler"
            update-binfmts --enable "qemu-$arch" ||
                die "update-binfmts --enable qemu-$arch failed (is qemu-user-static installed?)"
            SUMMARY+=("registered qemu-$arch in binfmt_misc")
        fi
        grep -q '^flags: .*F' "$entry" ||
            die "$entry is registered without the F flag: containers cannot reach its interpreter (update-binfmts --disable qemu-$arch, then run this again)"
        info "binfmt: qemu-$arch ($(sed -n 's/^interpreter //p' "$entry"), $(grep '^flags:' "$entry"))"
    done
}

# Debian's busybox-static .deb for ARCH (amd64, arm64), downloaded once into the cache.
busybox_deb() {
    local arch="$1" cache="$KILN_DEV/cache/busybox-static" deb
    mkdir -p "$cache"
    deb=$(find "$cache" -maxdepth 1 -name "busybox-static_*_$arch.deb" | sort | tail -n 1)
    if [[ -z $deb ]]; then
        if [[ $arch != "$(dpkg --print-architecture)" ]] &&
            ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
            log "dpkg --add-architecture $arch (for apt-get download busybox-static:$arch)"
            dpkg --add-architecture "$arch"
            apt-get update -qq
        fi
        # _apt downloads into a directory it can write.
        chmod 0777 "$cache"
        (cd "$cache" && apt-get download -qq "busybox-static:$arch" >/dev/null) ||
            die "apt-get download busybox-static:$arch failed"
        chmod 0755 "$cache"
        deb=$(find "$cache" -maxdepth 1 -name "busybox-static_*_$arch.deb" | sort | tail -n 1)
        [[ -n $deb ]] || die "apt-get download busybox-static:$arch left no .deb in $cache"
    fi
    printf '%s\n' "$deb"
}

# A busybox rootfs tarball (as busybox:latest's) from ARCH's busybox-static package. The applet
# links come from the host's busybox --list: the same package version, so the same applets.
make_busybox_arch_tar() {
    local out="$1" arch="$2" dir="$KILN_DEV/work/busybox-$2-rootfs" unpacked="$KILN_DEV/work/busybox-$2-deb" applet
    rm -rf "$dir" "$unpacked"
    dpkg-deb -x "$(busybox_deb "$arch")" "$unpacked"
    [[ -f $unpacked/bin/busybox ]] || die "busybox-static:$arch has no bin/busybox"
    mkdir -p "$dir"/{bin,etc,root,tmp}
    install -m 0755 "$unpacked/bin/busybox" "$dir/bin/busybox"
    while read -r applet; do
        [[ $applet == busybox ]] || ln -s busybox "$dir/bin/$applet"
    done < <(/bin/busybox --list)
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' \
        >"$dir/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$dir/etc/group"
    chmod 1777 "$dir/tmp"
    chmod 0700 "$dir/root"
    tar --numeric-owner --sort=name --mtime=@1577836800 -C "$dir" -cf "$out" .
    rm -rf "$dir" "$unpacked"
}

# library/busybox:multi: an OCI index for linux/amd64 and linux/arm64. Each platform's image is
# imported and pushed under its own tag first, then `kiln imagetools create` joins them.
seed_busybox_multi() {
    local repo=library/busybox tag=multi arch t0 tarball sources=()
    if has_manifest "$repo" "$tag"; then
        info "$repo:$tag: in the registry"
        return
    fi
    t0=$(now)
    log "seeding $repo:$tag (linux/amd64, linux/arm64) from busybox-static"
    for arch in amd64 arm64; do
        tarball="$KILN_DEV/work/busybox-multi-$arch.tar"
        make_busybox_arch_tar "$tarball" "$arch"
        "$KILN" import --platform "linux/$arch" --change 'CMD ["sh"]' "$tarball" \
            "$KILN_DEV_REGISTRY/$repo:$tag-$arch" >/dev/null
        "$KILN" push "$KILN_DEV_REGISTRY/$repo:$tag-$arch" >"$KILN_DEV/logs/push-busybox-$tag-$arch.log" 2>&1 ||
            { tail -n 20 "$KILN_DEV/logs/push-busybox-$tag-$arch.log" >&2; die "pushing $repo:$tag-$arch failed"; }
        rm -f "$tarball"
        sources+=("$KILN_DEV_REGISTRY/$repo:$tag-$arch")
    done
    "$KILN" imagetools create -t "$KILN_DEV_REGISTRY/$repo:$tag" "${sources[@]}" \
        >"$KILN_DEV/logs/push-busybox-$tag.log" 2>&1 ||
        { tail -n 20 "$KILN_DEV/logs/push-busybox-$tag.log" >&2; die "creating the index $repo:$tag failed"; }
    SUMMARY+=("seeded $repo:$tag ($(elapsed "$t0"))")
}

debian_sources() {
    local main security
    main=$(debian_mirror)
    security=$(apt_uri bookworm-security)
    cat <<EOF
Types: deb
URIs: $main
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # Only where this machine's apt has a security source too.
    if [[ -n $security ]]; then
        cat <<EOF

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
}

make_debian_tar() {
    local out="$1" dir="$KILN_DEV/work/debian-rootfs" mirror
    mirror=$(debian_mirror)
    # A run interrupted inside debootstrap can leave /proc mounted in the target.
    unmount_under "$dir"
    rm -rf "$dir"
    info "debootstrap --variant=minbase bookworm from $mirror (log: $KILN_DEV/logs/debootstrap.log)"
    if ! debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$KILN_DEV/logs/debootstrap.log" 2>&1; then
        unmount_under "$dir"
        tail -n 20 "$KILN_DEV/logs/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    unmount_under "$dir"

    # The machine's CA bundle (it trusts the TLS-inspecting proxy), also as a local CA so that
    # update-ca-certificates in later builds (installing ca-certificates) keeps it.
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt \
        "$dir/usr/local/share/ca-certificates/kiln-host-bundle.crt"
    # The suites docker's debian image has, from this machine's mirrors.
    rm -f "$dir/etc/apt/sources.list"
    debian_sources >"$dir/etc/apt/sources.list.d/debian.sources"
    # Host files debootstrap copied in; containers get theirs from the runtime.
    rm -f "$dir/etc/resolv.conf"
    install -m 0644 /dev/null "$dir/etc/resolv.conf"
    rm -f "$dir/etc/hostname"
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
    find "$dir/var/log" -type f -delete

    # /dev, /proc and /sys are the runtime's; their contents stay out of the image.
    tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -C "$dir" -cf "$out.tmp" .
    mv "$out.tmp" "$out"
    rm -rf "$dir"
}

seed_debian() {
    local repo=library/debian tag=bookworm-slim
    if has_manifest "$repo" "$tag"; then
        info "$repo:$tag: in the registry"
        return
    fi
    local t0 tarball="$KILN_DEV/cache/debian-bookworm-slim.tar"
    t0=$(now)
    log "seeding $repo:$tag"
    if [[ -f $tarball ]]; then
        info "using the cached rootfs $tarball"
    else
        make_debian_tar "$tarball"
    fi
    "$KILN" import --change 'CMD ["bash"]' --change "ENV PATH=$DEBIAN_PATH" \
        "$tarball" "$KILN_DEV_REGISTRY/$repo:$tag" >/dev/null
    "$KILN" push "$KILN_DEV_REGISTRY/$repo:$tag" >"$KILN_DEV/logs/push-debian.log" 2>&1 ||
        { tail -n 20 "$KILN_DEV/logs/push-debian.log" >&2; die "pushing $repo:$tag failed"; }
    SUMMARY+=("seeded $repo:$tag ($(elapsed "$t0"))")
}

seed_python() {
    local repo=library/python tag=3.11-slim
    if has_manifest "$repo" "$tag"; then
        info "$repo:$tag: in the registry"
        return
    fi
    local t0 log_file="$KILN_DEV/logs/build-python.log"
    t0=$(now)
    log "seeding $repo:$tag: kiln build images/python (log: $log_file)"
    if ! "$KILN" build --progress plain -t "$KILN_DEV_REGISTRY/$repo:$tag" "$REPO_ROOT/images/python" \
        >"$log_file" 2>&1; then
        tail -n 30 "$log_file" >&2
        die "building $repo:$tag failed"
    fi
    "$KILN" push "$KILN_DEV_REGISTRY/$repo:$tag" >"$KILN_DEV/logs/push-python.log" 2>&1 ||
        { tail -n 20 "$KILN_DEV/logs/push-python.log" >&2; die "pushing $repo:$tag failed"; }
    SUMMARY+=("seeded $repo:$tag ($(elapsed "$t0"))")
}

# library/gcc:bookworm-cross: built by kiln from images/gcc-cross on the debian image seeded above
# (apt downloads only the compilers, ~15 s here) rather than a second debootstrap.
seed_gcc_cross() {
    local repo=library/gcc tag=bookworm-cross
    if has_manifest "$repo" "$tag"; then
        info "$repo:$tag: in the registry"
        return
    fi
    local t0 log_file="$KILN_DEV/logs/build-gcc-cross.log"
    t0=$(now)
    log "seeding $repo:$tag: kiln build images/gcc-cross (log: $log_file)"
    if ! "$KILN" build --progress plain -t "$KILN_DEV_REGISTRY/$repo:$tag" "$REPO_ROOT/images/gcc-cross" \
        >"$log_file" 2>&1; then
        tail -n 30 "$log_file" >&2
        die "building $repo:$tag failed"
    fi
    "$KILN" push "$KILN_DEV_REGISTRY/$repo:$tag" >"$KILN_DEV/logs/push-gcc-cross.log" 2>&1 ||
        { tail -n 20 "$KILN_DEV/logs/push-gcc-cross.log" >&2; die "pushing $repo:$tag failed"; }
    SUMMARY+=("seeded $repo:$tag ($(elapsed "$t0"))")
}

# moto's S3 server in its own venv; reinstalled only when the version differs.
install_moto() {
    local venv="$KILN_DEV/moto" have
    have=$("$venv/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null || true)
    if [[ $have == "$MOTO_VERSION" && -x $venv/bin/moto_server ]]; then
        info "moto: $MOTO_VERSION ($venv/bin/moto_server)"
        return
    fi
    log "installing moto[server] $MOTO_VERSION into $venv"
    [[ -x $venv/bin/pip ]] || python3 -m venv "$venv" || die "python3 -m venv $venv failed"
    "$venv/bin/pip" install -q "moto[server]==$MOTO_VERSION" >"$KILN_DEV/logs/pip-moto.log" 2>&1 ||
        { tail -n 20 "$KILN_DEV/logs/pip-moto.log" >&2; die "pip install moto[server] failed"; }
    SUMMARY+=("installed moto $MOTO_VERSION")
}

# Azurite's blob service from npm, in its own prefix; reinstalled only when the version differs.
install_azurite() {
    local prefix="$KILN_DEV/node" have
    have=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$prefix/node_modules/azurite/package.json" 2>/dev/null || true)
    if [[ $have == "$AZURITE_VERSION" && -x $prefix/node_modules/.bin/azurite-blob ]]; then
        info "azurite: $AZURITE_VERSION ($prefix/node_modules/.bin/azurite-blob)"
        return
    fi
    command -v npm >/dev/null || die "npm not found: install Node.js (with npm) for Azurite"
    log "installing azurite $AZURITE_VERSION into $prefix"
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund "azurite@$AZURITE_VERSION" \
        >"$KILN_DEV/logs/npm-azurite.log" 2>&1 ||
        { tail -n 20 "$KILN_DEV/logs/npm-azurite.log" >&2; die "npm install azurite failed"; }
    SUMMARY+=("installed azurite $AZURITE_VERSION")
}

print_summary() {
    local line
    for line in "${SUMMARY[@]}"; do
        info "$line"
    done
    cat >&2 <<EOF
==> ready ($(elapsed "$T0"))
    kiln      $KILN
    data dir  KILN_ROOT=$KILN_ROOT
    config    KILN_CONFIG=$KILN_CONFIG (docker.io -> $KILN_DEV_REGISTRY)
    registry  http://$KILN_DEV_REGISTRY/v2/ (data $KILN_DEV/registry, log $KILN_DEV/logs/registry.log)
    images    busybox:latest busybox:bare busybox:users busybox:multi debian:bookworm-slim python:3.11-slim
              gcc:bookworm-cross
    test S3   $KILN_DEV/moto/bin/moto_server; Azure: $KILN_DEV/node/node_modules/.bin/azurite-blob
EOF
}

main() {
    require_root
    T0=$(now)
    log "kiln dev setup in $KILN_DEV"
    install_packages
    build_kiln
    prepare_dirs
    setup_binfmt
    start_registry
    seed_busybox
    seed_busybox_variant bare
    seed_busybox_variant users
    seed_busybox_multi
    seed_debian
    seed_python
    seed_gcc_cross
    install_moto
    install_azurite
    print_summary
}

main "$@"
