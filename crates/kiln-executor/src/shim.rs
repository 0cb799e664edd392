//! Seccomp through the shim: the profile of a container is compiled once (`seccomp_bpf.rs`,
//! cached by hash under `<state>/seccomp/`) and installed by the static shim that runc starts in
//! place of the command, instead of runc compiling the profile in every container.
//!
//! The shim and the program reach the container as sealed memory files on descriptors 3 and 4
//! (`runc --preserve-fds 2`): nothing is added to the rootfs, and a process in the container that
//! reopens them through /proc cannot change them for the next container. The shim closes both
//! before it executes the command. Descriptor 5, the write end of a pipe, carries the reason
//! when the command cannot be executed, so that such a run reads as "not started", as it does
//! when runc itself looks the command up.
//!
//! `KILN_SECCOMP_SHIM=0` turns it off: runc then gets the profile in `config.json`, as before.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_spec::runtime::{LinuxSeccomp, Spec};
use rustix::fs::{MemfdFlags, SealFlags};
use sha2::{Digest, Sha256};

use crate::seccomp_bpf;

/// What runc executes: the shim, through descriptor 3.
pub(crate) const SHIM_ARG0: &str = "/proc/self/fd/3";
/// The shim's memory file, and how /proc shows a process executing it.
const SHIM_NAME: &str = "kiln-seccomp-shim";
const SHIM_EXE: &str = "/memfd:kiln-seccomp-shim";
/// The program's file in a bundle, for `runc exec` into the container later.
pub(crate) const BUNDLE_PROGRAM: &str = "seccomp.bpf";
/// Bumped when the program's layout (stub or settings) changes, to retire cached programs.
const FORMAT: &str = "kiln-seccomp-v1";

#[cfg(kiln_seccomp_shim)]
const SHIM: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("OUT_DIR"),
    "/kiln-seccomp-shim"
)));
#[cfg(not(kiln_seccomp_shim))]
const SHIM: Option<&[u8]> = None;

#[derive(Debug)]
pub(crate) struct SeccompShim {
    shim: OwnedFd,
    cache_dir: PathBuf,
    /// Compiled programs by key; `None`: a profile the compiler does not handle.
    programs: Mutex<HashMap<String, Option<Arc<OwnedFd>>>>,
}

/// The descriptors a shimmed container needs until runc has started.
pub(crate) struct ShimFds {
    shim: RawFd,
    program: Arc<OwnedFd>,
    /// Write end of the status pipe (descriptor 5), where the shim reports a command it could
    /// not execute. Drop `ShimFds` once runc is spawned so that only runc holds it.
    status: Option<OwnedFd>,
}

/// Read end of the status pipe.
pub(crate) struct StatusPipe(OwnedFd);

impl StatusPipe {
    /// After the container ended: whether the shim reported that the command never started.
    pub(crate) fn not_started(&self) -> bool {
        let mut b = [0u8; 1];
        // Non-blocking: nothing written means the command was executed.
        matches!(rustix::io::read(&self.0, &mut b), Ok(n) if n > 0)
    }
}

impl SeccompShim {
    /// `None` when the shim cannot be used here: not built for this architecture, or the kernel
    /// refuses to execute memory files (`vm.memfd_noexec = 2`).
    pub(crate) fn new(state_dir: &Path) -> Option<SeccompShim> {
        let bytes = SHIM?;
        let noexec =
            std::fs::read_to_string("/proc/sys/vm/memfd_noexec").is_ok_and(|v| v.trim() == "2");
        if noexec {
            tracing::info!("memfd_noexec=2: runc compiles the seccomp profile itself");
            return None;
        }
        let shim = match sealed(SHIM_NAME, bytes, true) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("seccomp shim unavailable: {e}");
                return None;
            }
        };
        Some(SeccompShim {
            shim,
            cache_dir: state_dir.join("seccomp"),
            programs: Mutex::new(HashMap::new()),
        })
    }

    /// Moves the spec's seccomp profile into a compiled program and makes the shim the process
    /// to start. Leaves the spec alone (runc applies the profile) when there is no profile,
    /// when no-new-privileges is off (the shim could not install a filter), or when the profile
    /// uses something the compiler does not handle.
    pub(crate) fn apply(
        &self,
        spec: &mut Spec,
        bundle: &Path,
    ) -> io::Result<Option<(ShimFds, StatusPipe)>> {
        let nnp = spec
            .process()
            .as_ref()
            .and_then(|p| p.no_new_privileges())
            .unwrap_or(false);
        let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().clone()) else {
            return Ok(None);
        };
        if !nnp {
            return Ok(None);
        }
        let Some(program) = self.program(&profile)? else {
            return Ok(None);
        };
        std::fs::write(bundle.join(BUNDLE_PROGRAM), read_all(&program)?)?;
        if let Some(linux) = spec.linux_mut() {
            linux.set_seccomp(None);
        }
        if let Some(process) = spec.process_mut() {
            let mut args = vec![SHIM_ARG0.to_string()];
            args.extend(process.args().iter().flatten().cloned());
            process.set_args(Some(args));
        }
        let (rx, tx) = status_pipe()?;
        Ok(Some((
            ShimFds {
                shim: self.shim.as_raw_fd(),
                program,
                status: Some(tx),
            },
            StatusPipe(rx),
        )))
    }

    /// The shim's descriptors for `runc exec` into a container started by [`Self::apply`],
    /// or `None` when it was not (no program in its bundle).
    pub(crate) fn for_exec(&self, bundle: &Path) -> io::Result<Option<ShimFds>> {
        let bytes = match std::fs::read(bundle.join(BUNDLE_PROGRAM)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(ShimFds {
            shim: self.shim.as_raw_fd(),
            program: Arc::new(sealed("kiln-seccomp-program", &bytes, false)?),
            status: None,
        }))
    }

    /// Compiles (or loads) the default sandbox's program, so that the first RUN step does not
    /// wait for it. Runs on a thread of its own while the build starts.
    pub(crate) fn warm(&self) {
        let profile = crate::seccomp::default_profile(crate::spec::DEFAULT_CAPS);
        match profile {
            Ok(p) => {
                if let Err(e) = self.program(&p) {
                    tracing::warn!("compiling the seccomp profile: {e}");
                }
            }
            Err(e) => tracing::warn!("building the seccomp profile: {e}"),
        }
    }

    fn program(&self, profile: &LinuxSeccomp) -> io::Result<Option<Arc<OwnedFd>>> {
        let json = serde_json::to_vec(profile).map_err(io::Error::other)?;
        let (major, minor, micro) = libseccomp_version();
        let mut hasher = Sha256::new();
        hasher.update(format!("{FORMAT}\0libseccomp {major}.{minor}.{micro}\0"));
        hasher.update(&json);
        let key = hex::encode(hasher.finalize());
        // Held while compiling, so a step waits for a compilation under way instead of
        // starting a second one.
        let mut programs = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = programs.get(&key) {
            return Ok(fd.clone());
        }
        let path = self.cache_dir.join(format!("{key}.bpf"));
        let bytes = match std::fs::read(&path) {
            Ok(b) if !b.is_empty() && b.len() % 8 == 0 => Some(b),
            _ => match seccomp_bpf::compile(profile) {
                Ok(b) => {
                    store(&path, &b)?;
                    Some(b)
                }
                Err(e) => {
                    tracing::debug!("{e}; runc compiles it");
                    None
                }
            },
        };
        let fd = match bytes {
            Some(b) => Some(Arc::new(sealed("kiln-seccomp-program", &b, false)?)),
            None => None,
        };
        programs.insert(key, fd.clone());
        Ok(fd)
    }
}

impl ShimFds {
    /// Has runc pass descriptors 3, 4 (and 5) on to the container, placed there by `install`.
    pub(crate) fn args(&self, cmd: &mut tokio::process::Command) {
        let n = if self.status.is_some() { "3" } else { "2" };
        cmd.args(["--preserve-fds", n]);
        let fds = [
            Some(self.shim),
            Some(self.program.as_raw_fd()),
            self.status.as_ref().map(|s| s.as_raw_fd()),
        ];
        // SAFETY: fcntl, dup2 and close are async-signal-safe, as a pre_exec closure requires.
        // Every descriptor is first copied above 5 so that no dup2 overwrites another source.
        unsafe {
            cmd.pre_exec(move || {
                let mut high = [-1; 3];
                for (h, fd) in high.iter_mut().zip(fds) {
                    if let Some(fd) = fd {
                        *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 6);
                        if *h < 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
                for (target, h) in (3..).zip(high) {
                    if h >= 0 {
                        if libc::dup2(h, target) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        libc::close(h);
                    }
                }
                Ok(())
            });
        }
    }
}

/// Whether container process `pid` runs its command: false while the shim still runs in its
/// place (or when the process is gone).
pub fn command_started(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| !exe.to_string_lossy().starts_with(SHIM_EXE))
}

fn libseccomp_version() -> (u32, u32, u32) {
    libseccomp::ScmpVersion::current()
        .map(|v| (v.major, v.minor, v.micro))
        .unwrap_or((0, 0, 0))
}

/// Writes the cache file whole or not at all.
fn store(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A memory file holding `bytes` that nobody can change any more.
fn sealed(name: &str, bytes: &[u8], exec: bool) -> io::Result<OwnedFd> {
    let base = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let extra = if exec {
        MemfdFlags::EXEC
    } else {
        MemfdFlags::NOEXEC_SEAL
    };
    // MFD_EXEC and MFD_NOEXEC_SEAL are Linux 6.3; older kernels refuse them and behave as
    // MFD_EXEC does.
    let fd = match rustix::fs::memfd_create(name, base | extra) {
        Err(rustix::io::Errno::INVAL) => rustix::fs::memfd_create(name, base)?,
        r => r?,
    };
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    let fd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )?;
    Ok(fd)
}

/// (read end, write end), both close-on-exec and non-blocking.
fn status_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors on success; each is owned exactly once below.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) != 0 {
            return Err(io::Error::last_os_error());
        }
        use std::os::fd::FromRawFd;
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

fn read_all(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = rustix::io::pread(fd, &mut buf, out.len() as u64)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_cannot_be_changed() {
        let fd = sealed("t", b"abcdefgh", false).unwrap();
        assert_eq!(read_all(&fd).unwrap(), b"abcdefgh");
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let reopened = std::fs::OpenOptions::new().write(true).open(&path);
        let write = reopened.and_then(|mut f| f.write_all(b"x"));
        assert!(write.is_err(), "a reopened sealed file took a write");
        assert_eq!(read_all(&fd).unwrap(), b"abcdefgh");
    }
}
