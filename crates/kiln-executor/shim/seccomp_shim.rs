//! kiln's seccomp shim: the first program of a sandboxed container. runc starts it through a
//! preserved file descriptor (`/proc/self/fd/3`, nothing is added to the rootfs); it installs the
//! BPF program it reads from fd 4, closes both descriptors and executes the step's command, found
//! on `PATH` as runc finds it.
//!
//! Why it exists: runc compiles the profile with libseccomp in every container, about 20 ms for
//! Docker's profile on three architectures; kiln compiles it once (`seccomp_bpf.rs`) and this
//! shim installs the finished program in microseconds. It must run in any image, so it is static
//! and uses no C library: a few raw system calls, built by `build.rs` with the host's rustc.
//!
//! Exit codes when the command cannot be started follow the shells: 127 not found, 126 found but
//! not executable; 125 for a filter that cannot be read or installed. The reason goes to stderr
//! and, when kiln passed one, to descriptor 5, which tells kiln the command never started.

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

const MAX_FILTER: usize = 4096 * 8; // BPF_MAXINSNS instructions of 8 bytes
const SHIM_FD: usize = 3;
const FILTER_FD: usize = 4;
/// Where a failure to execute the command is reported to kiln (if open), so that kiln can tell
/// it from the command's own exit; closed by a successful execve.
const STATUS_FD: usize = 5;
const F_SETFD: usize = 2;
const FD_CLOEXEC: usize = 1;
const SECCOMP_SET_MODE_FILTER: usize = 1;

const ENOENT: isize = 2;
const ENOTDIR: isize = 20;
const EACCES: isize = 13;
const ENOEXEC: isize = 8;
const ENAMETOOLONG: isize = 36;

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const PREAD64: usize = 17;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const EXECVE: usize = 59;
    pub const EXIT_GROUP: usize = 231;
    pub const SECCOMP: usize = 317;
    pub const FCNTL: usize = 72;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const PREAD64: usize = 67;
    pub const WRITE: usize = 64;
    pub const CLOSE: usize = 57;
    pub const EXECVE: usize = 221;
    pub const EXIT_GROUP: usize = 94;
    pub const SECCOMP: usize = 277;
    pub const FCNTL: usize = 25;
}

// The kernel enters with the stack holding argc, argv[], NULL, envp[], NULL.
#[cfg(target_arch = "x86_64")]
global_asm!(
    ".globl _start",
    "_start:",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym entry,
);

#[cfg(target_arch = "aarch64")]
global_asm!(
    ".globl _start",
    "_start:",
    "mov x0, sp",
    "bl {entry}",
    "brk #0",
    entry = sym entry,
);

#[cfg(target_arch = "x86_64")]
unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller passes arguments valid for system call `n`.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b,
             in("rdx") c, in("r10") d, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[cfg(target_arch = "aarch64")]
unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller passes arguments valid for system call `n`.
    unsafe {
        asm!("svc 0", inlateout("x0") a as isize => ret, in("x1") b, in("x2") c, in("x3") d,
             in("x8") n, options(nostack));
    }
    ret
}

fn write_err(bytes: &[u8]) {
    // SAFETY: a valid buffer; a failed write to stderr is ignored.
    unsafe { syscall4(nr::WRITE, 2, bytes.as_ptr() as usize, bytes.len(), 0) };
}

fn exit(code: usize) -> ! {
    loop {
        // SAFETY: exit_group takes a plain integer and does not return.
        unsafe { syscall4(nr::EXIT_GROUP, code, 0, 0, 0) };
    }
}

fn die(parts: &[&[u8]], code: usize) -> ! {
    for p in parts {
        write_err(p);
    }
    write_err(b"\n");
    exit(code)
}

/// The bytes of a NUL-terminated string.
unsafe fn cstr<'a>(p: *const u8) -> &'a [u8] {
    let mut n = 0;
    // SAFETY: the kernel passes NUL-terminated strings.
    unsafe {
        while *p.add(n) != 0 {
            n += 1;
        }
        core::slice::from_raw_parts(p, n)
    }
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const u8,
}

static mut FILTER: [u8; MAX_FILTER] = [0; MAX_FILTER];
static mut PATH_BUF: [u8; 4096] = [0; 4096];

fn install_filter() {
    // SAFETY: single-threaded program; FILTER is only touched here.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(FILTER) };
    let mut len = 0;
    loop {
        // pread: the descriptor may be shared with other containers, so no shared offset.
        // SAFETY: the slice bounds the read.
        let n = unsafe {
            syscall4(
                nr::PREAD64,
                FILTER_FD,
                buf[len..].as_mut_ptr() as usize,
                MAX_FILTER - len,
                len,
            )
        };
        if n < 0 {
            die(&[b"kiln seccomp shim: cannot read the filter"], 125);
        }
        if n == 0 {
            break;
        }
        len += n as usize;
        if len == MAX_FILTER {
            die(&[b"kiln seccomp shim: filter too long"], 125);
        }
    }
    if len == 0 || len % 8 != 0 {
        die(&[b"kiln seccomp shim: malformed filter"], 125);
    }
    let prog = SockFprog {
        len: (len / 8) as u16,
        filter: buf.as_ptr(),
    };
    // SAFETY: prog points at `len / 8` instructions that outlive the call.
    let r = unsafe {
        syscall4(
            nr::SECCOMP,
            SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const SockFprog as usize,
            0,
        )
    };
    if r < 0 {
        die(&[b"kiln seccomp shim: the kernel refused the filter"], 125);
    }
}

/// Tries `dir/name`; returns the error when execve returns.
unsafe fn try_exec(
    dir: &[u8],
    name: &[u8],
    argv: *const *const u8,
    envp: *const *const u8,
) -> isize {
    // SAFETY: single-threaded program; PATH_BUF is only touched here.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(PATH_BUF) };
    let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
    let total = dir.len() + 1 + name.len();
    if total >= buf.len() {
        return -ENAMETOOLONG;
    }
    let mut i = 0;
    for &b in dir.iter().chain(b"/").chain(name) {
        buf[i] = b;
        i += 1;
    }
    buf[i] = 0;
    // SAFETY: a NUL-terminated path and the kernel's own argv/envp arrays.
    unsafe {
        syscall4(
            nr::EXECVE,
            buf.as_ptr() as usize,
            argv as usize,
            envp as usize,
            0,
        )
    }
}

fn exec_failed(name: &[u8], err: isize) -> ! {
    let (what, code): (&[u8], usize) = match -err {
        ENOENT => (b"no such file or directory", 127),
        EACCES => (b"permission denied", 126),
        ENOEXEC => (b"exec format error", 126),
        ENOTDIR => (b"not a directory", 127),
        ENAMETOOLONG => (b"file name too long", 127),
        _ => (b"cannot execute", 126),
    };
    not_started(&[b"exec: \"", name, b"\": ", what], code)
}

/// The command could not be executed: says why on stderr and on the status descriptor.
fn not_started(parts: &[&[u8]], code: usize) -> ! {
    for p in parts {
        // SAFETY: a valid buffer; the descriptor may be closed, which is harmless.
        unsafe { syscall4(nr::WRITE, STATUS_FD, p.as_ptr() as usize, p.len(), 0) };
    }
    die(parts, code)
}

unsafe extern "C" fn entry(sp: *const usize) -> ! {
    // SAFETY: the stack layout the kernel sets up for a new program.
    let (argc, argv, envp) = unsafe {
        let argc = *sp;
        let argv = sp.add(1) as *const *const u8;
        (argc, argv, argv.add(argc + 1))
    };
    if argc < 2 {
        die(&[b"kiln seccomp shim: no command"], 125);
    }
    install_filter();
    // SAFETY: plain descriptors; the command must not inherit them.
    unsafe {
        syscall4(nr::CLOSE, SHIM_FD, 0, 0, 0);
        syscall4(nr::CLOSE, FILTER_FD, 0, 0, 0);
        syscall4(nr::FCNTL, STATUS_FD, F_SETFD, FD_CLOEXEC, 0);
    }
    // SAFETY: argv has argc entries, envp is NULL-terminated.
    unsafe {
        let cmd_argv = argv.add(1);
        let name = cstr(*cmd_argv);
        if name.contains(&b'/') {
            let err = syscall4(
                nr::EXECVE,
                *cmd_argv as usize,
                cmd_argv as usize,
                envp as usize,
                0,
            );
            exec_failed(name, err);
        }
        // As runc (Go's exec.LookPath): search PATH, skip what is missing or not executable.
        let mut path: &[u8] = b"";
        let mut e = envp;
        while !(*e).is_null() {
            if let Some(v) = cstr(*e).strip_prefix(b"PATH=") {
                path = v;
                break;
            }
            e = e.add(1);
        }
        let mut denied = false;
        if !name.is_empty() {
            for dir in path.split(|&b| b == b':') {
                match -try_exec(dir, name, cmd_argv, envp) {
                    ENOENT | ENOTDIR | ENAMETOOLONG => {}
                    EACCES => denied = true,
                    err => exec_failed(name, -err),
                }
            }
        }
        if denied {
            exec_failed(name, -EACCES);
        }
        not_started(
            &[b"exec: \"", name, b"\": executable file not found in $PATH"],
            127,
        )
    }
}

// No C library, so the memory functions the compiler may call are defined here. Volatile
// accesses keep the compiler from turning these loops back into calls to themselves.
#[unsafe(no_mangle)]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
    dst
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) {
        // SAFETY: forwards copy is safe when dst precedes src.
        return unsafe { memcpy(dst, src, n) };
    }
    let mut i = n;
    while i > 0 {
        i -= 1;
        // SAFETY: the caller guarantees both ranges.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
    dst
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller guarantees the range.
        unsafe { core::ptr::write_volatile(dst.add(i), c as u8) };
    }
    dst
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller passes a NUL-terminated string.
    while unsafe { core::ptr::read_volatile(s.add(n)) } != 0 {
        n += 1;
    }
    n
}

// The precompiled `core` refers to this symbol; with `panic=abort` nothing ever calls it.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    die(&[b"kiln seccomp shim: internal error"], 125)
}
