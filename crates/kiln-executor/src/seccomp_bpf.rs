//! Compiles a seccomp profile into the BPF program runc would install for it, so that a build
//! compiles it once instead of runc compiling it in every container (about 20 ms each for
//! Docker's profile on three architectures), and the seccomp shim installs it.
//!
//! Same program as runc 1.1: libseccomp (the library runc links) with the rules added the way
//! runc adds them, behind the stub runc puts in front of libseccomp's program, which answers
//! ENOSYS instead of the default action for syscall numbers above the largest one the profile
//! names, so a new C library falls back from syscalls this libseccomp does not know yet.
//! `tests/runc.rs` compares the result with the filter runc itself installs.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
/// Offsets of the syscall number and the architecture in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

/// A profile this module cannot compile; the caller leaves it to runc.
#[derive(Debug, thiserror::Error)]
#[error("seccomp profile not compiled here: {0}")]
pub(crate) struct Unsupported(String);

fn unsupported(what: impl std::fmt::Display) -> Unsupported {
    Unsupported(what.to_string())
}

/// The raw `struct sock_filter` array (host byte order) for `profile`.
pub(crate) fn compile(profile: &LinuxSeccomp) -> Result<Vec<u8>, Unsupported> {
    if profile.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(unsupported("seccomp flags"));
    }
    if profile.listener_path().is_some() {
        return Err(unsupported("a seccomp listener"));
    }
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let archs = profile
        .architectures()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|a| scmp_arch(*a))
        .collect::<Result<Vec<_>, _>>()?;

    let mut ctx = ScmpFilterContext::new(default).map_err(unsupported)?;
    for arch in &archs {
        ctx.add_arch(*arch).map_err(unsupported)?;
    }
    ctx.set_ctl_nnp(false).map_err(unsupported)?;

    let calls = profile.syscalls().as_deref().unwrap_or_default();
    for call in calls {
        let act = action(call.action(), call.errno_ret())?;
        if act == default {
            continue;
        }
        let conditions = call
            .args()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let op = match a.op() {
                    LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
                    LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
                    LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
                    LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
                    LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
                    LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
                    // OCI puts the mask first and the value second, as libseccomp does.
                    LinuxSeccompOperator::ScmpCmpMaskedEq => {
                        return Ok(ScmpArgCompare::new(
                            arg_index(a.index())?,
                            ScmpCompareOp::MaskedEqual(a.value()),
                            a.value_two().unwrap_or(0),
                        ));
                    }
                };
                Ok(ScmpArgCompare::new(arg_index(a.index())?, op, a.value()))
            })
            .collect::<Result<Vec<_>, Unsupported>>()?;
        // As runc: when one argument has several conditions, each becomes a rule of its own
        // (libseccomp ORs rules, and refuses two conditions on one argument in a rule).
        let mut per_arg = [0usize; 6];
        for a in call.args().as_deref().unwrap_or_default() {
            per_arg[a.index().min(5)] += 1;
        }
        let separate = per_arg.iter().any(|n| *n > 1);
        for name in call.names() {
            // Names this libseccomp does not know are skipped, as runc skips them.
            let Ok(nr) = ScmpSyscall::from_name(name) else {
                continue;
            };
            if conditions.is_empty() {
                ctx.add_rule(act, nr).map_err(unsupported)?;
            } else if separate {
                for c in &conditions {
                    ctx.add_rule_conditional(act, nr, std::slice::from_ref(c))
                        .map_err(unsupported)?;
                }
            } else {
                ctx.add_rule_conditional(act, nr, &conditions)
                    .map_err(unsupported)?;
            }
        }
    }

    let program = export(&ctx)?;
    let stub = enosys_stub(&archs, calls.iter().flat_map(|c| c.names()))?;
    let mut out = Vec::with_capacity((stub.len() + program.len() / 8) * 8);
    for insn in stub {
        insn.encode(&mut out);
    }
    out.extend_from_slice(&program);
    if out.len() / 8 > 4096 {
        return Err(unsupported("more than 4096 BPF instructions"));
    }
    Ok(out)
}

fn arg_index(index: usize) -> Result<u32, Unsupported> {
    if index < 6 {
        Ok(index as u32)
    } else {
        Err(unsupported(format!("argument index {index}")))
    }
}

fn action(act: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, Unsupported> {
    match act {
        LinuxSeccompAction::ScmpActAllow => Ok(ScmpAction::Allow),
        LinuxSeccompAction::ScmpActErrno => {
            let errno = errno.unwrap_or(EPERM);
            Ok(ScmpAction::Errno(
                i32::try_from(errno).map_err(|_| unsupported("errno"))?,
            ))
        }
        other => Err(unsupported(format!("action {other:?}"))),
    }
}

fn scmp_arch(arch: Arch) -> Result<ScmpArch, Unsupported> {
    Ok(match arch {
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchNative => ScmpArch::native(),
        other => return Err(unsupported(format!("architecture {other:?}"))),
    })
}

/// libseccomp writes its program to a file descriptor only (memory export is libseccomp 2.6).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, Unsupported> {
    use std::io::{Read, Seek};
    let fd = rustix::fs::memfd_create("kiln-seccomp-export", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(unsupported)?;
    ctx.export_bpf(&fd).map_err(unsupported)?;
    let mut file = std::fs::File::from(fd);
    file.rewind().map_err(unsupported)?;
    let mut program = Vec::new();
    file.read_to_end(&mut program).map_err(unsupported)?;
    if program.is_empty() || program.len() % 8 != 0 {
        return Err(unsupported("libseccomp exported a malformed program"));
    }
    Ok(program)
}

#[derive(Clone, Copy)]
enum Target {
    /// The instruction right after the jump.
    Next,
    /// A position fixed after layout.
    Label(Label),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Section(usize),
    X32(usize),
    Enosys,
    Filter,
}

#[derive(Clone, Copy)]
enum Insn {
    Load(u32),
    /// Jump if the accumulator equals / exceeds / has bits of `k`, else the other target.
    Jeq(u32, Target, Target),
    Jgt(u32, Target, Target),
    Jset(u32, Target, Target),
    Ja(Target),
    Ret(u32),
    /// Placeholder for a label's position, no instruction.
    Mark(Label),
}

struct Encoded {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

impl Encoded {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.code.to_ne_bytes());
        out.push(self.jt);
        out.push(self.jf);
        out.extend_from_slice(&self.k.to_ne_bytes());
    }
}

/// One section of the stub: an architecture whose syscall numbers are checked.
struct ArchCheck {
    audit_arch: u32,
    /// Largest number for the architecture's plain syscalls (none: x32 only).
    max: Option<u32>,
    /// x86_64 only: largest x32 syscall number (with the x32 bit), if x32 is in the profile.
    max_x32: Option<u32>,
}

/// runc's `-ENOSYS` stub: per architecture, numbers above the largest the profile names get
/// ENOSYS; everything else, and other architectures, go on to libseccomp's program.
fn enosys_stub<'a>(
    archs: &[ScmpArch],
    names: impl Iterator<Item = &'a String> + Clone,
) -> Result<Vec<Encoded>, Unsupported> {
    let largest = |arch: ScmpArch| -> Option<u32> {
        names
            .clone()
            .filter_map(|n| ScmpSyscall::from_name_by_arch(n, arch).ok())
            .map(i32::from)
            .filter(|n| *n > 0)
            .max()
            .map(|n| n as u32)
    };
    let mut sections: Vec<ArchCheck> = Vec::new();
    for arch in archs {
        let (audit_arch, x32) = match arch {
            ScmpArch::X8664 => (AUDIT_ARCH_X86_64, false),
            ScmpArch::X32 => (AUDIT_ARCH_X86_64, true),
            ScmpArch::X86 => (AUDIT_ARCH_I386, false),
            ScmpArch::Aarch64 => (AUDIT_ARCH_AARCH64, false),
            ScmpArch::Arm => (AUDIT_ARCH_ARM, false),
            other => return Err(unsupported(format!("architecture {other:?} in the stub"))),
        };
        let Some(max) = largest(*arch) else { continue };
        let i = match sections.iter().position(|s| s.audit_arch == audit_arch) {
            Some(i) => i,
            None => {
                sections.push(ArchCheck {
                    audit_arch,
                    max: None,
                    max_x32: None,
                });
                sections.len() - 1
            }
        };
        if x32 {
            sections[i].max_x32 = Some(max);
        } else {
            sections[i].max = Some(max);
        }
    }

    use Label::*;
    use Target::Label as L;
    let mut insns = vec![Insn::Load(DATA_ARCH)];
    for (i, s) in sections.iter().enumerate() {
        insns.push(Insn::Jeq(s.audit_arch, L(Section(i)), Target::Next));
    }
    insns.push(Insn::Ja(L(Filter)));
    for (i, s) in sections.iter().enumerate() {
        insns.push(Insn::Mark(Section(i)));
        insns.push(Insn::Load(DATA_NR));
        match (s.audit_arch == AUDIT_ARCH_X86_64, s.max, s.max_x32) {
            (true, Some(max), Some(max_x32)) => {
                insns.push(Insn::Jset(X32_SYSCALL_BIT, L(X32(i)), Target::Next));
                insns.push(Insn::Jgt(max, L(Enosys), L(Filter)));
                insns.push(Insn::Mark(X32(i)));
                insns.push(Insn::Jgt(max_x32, L(Enosys), L(Filter)));
            }
            (true, Some(max), None) => {
                insns.push(Insn::Jset(X32_SYSCALL_BIT, L(Filter), Target::Next));
                insns.push(Insn::Jgt(max, L(Enosys), L(Filter)));
            }
            (true, None, Some(max_x32)) => {
                insns.push(Insn::Jset(X32_SYSCALL_BIT, Target::Next, L(Filter)));
                insns.push(Insn::Jgt(max_x32, L(Enosys), L(Filter)));
            }
            (_, Some(max), _) => insns.push(Insn::Jgt(max, L(Enosys), L(Filter))),
            (_, None, _) => insns.push(Insn::Ja(L(Filter))),
        }
    }
    insns.push(Insn::Mark(Enosys));
    insns.push(Insn::Ret(SECCOMP_RET_ERRNO | ENOSYS));
    insns.push(Insn::Mark(Filter));
    assemble(&insns)
}

fn assemble(insns: &[Insn]) -> Result<Vec<Encoded>, Unsupported> {
    // Positions of labels, counting only real instructions.
    let mut positions: Vec<(Label, usize)> = Vec::new();
    let mut pc = 0;
    for insn in insns {
        match insn {
            Insn::Mark(l) => positions.push((*l, pc)),
            _ => pc += 1,
        }
    }
    let at = |t: Target, pc: usize| -> Result<usize, Unsupported> {
        let l = match t {
            Target::Next => return Ok(0),
            Target::Label(l) => l,
        };
        let pos = positions
            .iter()
            .find(|(m, _)| *m == l)
            .map(|(_, p)| *p)
            .ok_or_else(|| unsupported("stub label"))?;
        // BPF jumps are forward and relative to the next instruction.
        pos.checked_sub(pc + 1)
            .ok_or_else(|| unsupported("backward jump in the stub"))
    };
    let short = |n: usize| u8::try_from(n).map_err(|_| unsupported("stub jump too long"));
    let mut out = Vec::new();
    let mut pc = 0;
    for insn in insns {
        let e = match *insn {
            Insn::Mark(_) => continue,
            Insn::Load(off) => Encoded {
                code: LD_W_ABS,
                jt: 0,
                jf: 0,
                k: off,
            },
            Insn::Jeq(k, t, f) | Insn::Jgt(k, t, f) | Insn::Jset(k, t, f) => Encoded {
                code: match insn {
                    Insn::Jeq(..) => JMP_JEQ_K,
                    Insn::Jgt(..) => JMP_JGT_K,
                    _ => JMP_JSET_K,
                },
                jt: short(at(t, pc)?)?,
                jf: short(at(f, pc)?)?,
                k,
            },
            Insn::Ja(t) => Encoded {
                code: JMP_JA,
                jt: 0,
                jf: 0,
                k: at(t, pc)? as u32,
            },
            Insn::Ret(k) => Encoded {
                code: RET_K,
                jt: 0,
                jf: 0,
                k,
            },
        };
        out.push(e);
        pc += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::default_profile;

    fn caps() -> Vec<oci_spec::runtime::Capability> {
        crate::spec::DEFAULT_CAPS.to_vec()
    }

    fn insns(p: &[u8]) -> Vec<(u16, u8, u8, u32)> {
        p.chunks(8)
            .map(|c| {
                (
                    u16::from_ne_bytes([c[0], c[1]]),
                    c[2],
                    c[3],
                    u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect()
    }

    #[test]
    fn the_default_profile_compiles_behind_an_enosys_stub() {
        let program = compile(&default_profile(&caps()).unwrap()).unwrap();
        let code = insns(&program);
        assert!(code.len() > 100 && code.len() <= 4096, "{}", code.len());
        assert_eq!(code[0], (LD_W_ABS, 0, 0, DATA_ARCH));
        assert!(
            code.contains(&(RET_K, 0, 0, SECCOMP_RET_ERRNO | ENOSYS)),
            "the stub answers ENOSYS"
        );
        // Deterministic: the same profile gives the same bytes.
        assert_eq!(
            program,
            compile(&default_profile(&caps()).unwrap()).unwrap()
        );
    }

    /// Runs `f` in a child process under `program`, returning its exit code.
    fn in_child(program: &[u8], f: fn() -> i32) -> i32 {
        let prog = libc::sock_fprog {
            len: (program.len() / 8) as u16,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the child only makes raw system calls before _exit, which is safe after fork
        // in a multi-threaded process.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_seccomp, 1, 0, &prog) != 0
                {
                    libc::_exit(100);
                }
                libc::_exit(f());
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            assert!(libc::WIFEXITED(status), "status {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }

    fn errno_of(r: libc::c_long) -> i32 {
        if r == -1 {
            // SAFETY: reads this thread's errno.
            unsafe { *libc::__errno_location() }
        } else {
            0
        }
    }

    #[test]
    fn the_program_allows_refuses_and_answers_enosys_as_runc_would() {
        let program = compile(&default_profile(&caps()).unwrap()).unwrap();
        // getpid is allowed.
        assert_eq!(
            in_child(&program, || {
                // SAFETY: a plain system call.
                errno_of(unsafe { libc::syscall(libc::SYS_getpid) })
            }),
            0
        );
        // keyctl is refused with EPERM (the profile's default action).
        assert_eq!(
            in_child(&program, || {
                // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0).
                errno_of(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3i64, 0) })
            }),
            libc::EPERM
        );
        // A number above every syscall the profile names gets ENOSYS, so libc falls back.
        assert_eq!(
            in_child(&program, || {
                // SAFETY: an unassigned syscall number; the filter answers before the kernel.
                errno_of(unsafe { libc::syscall(1000) })
            }),
            libc::ENOSYS
        );
    }

    #[test]
    fn stub_jumps_land_inside_the_program() {
        let archs = [ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32];
        let names = ["read".to_string(), "openat".to_string()];
        let stub = enosys_stub(&archs, names.iter()).unwrap();
        let n = stub.len();
        for (pc, e) in stub.iter().enumerate() {
            match e.code {
                JMP_JEQ_K | JMP_JGT_K | JMP_JSET_K => {
                    assert!(pc + 1 + e.jt as usize <= n && pc + 1 + e.jf as usize <= n);
                }
                JMP_JA => assert!(pc + 1 + e.k as usize <= n),
                _ => {}
            }
        }
        // x86_64 and i386 sections, the x32 check inside the first.
        let jset = stub.iter().filter(|e| e.code == JMP_JSET_K).count();
        assert_eq!(jset, 1);
    }
}
