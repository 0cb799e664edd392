//! RUN for a foreign platform: the kernel hands the platform's ELF binaries to an interpreter
//! registered in binfmt_misc (QEMU's user-mode emulator), so the container needs nothing of its
//! own. Before such a step runs, the worker checks that a handler exists for the platform's
//! binaries, and it tallies how long emulated steps take.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_oci::Platform;

/// Where the kernel's binfmt_misc handlers are listed.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// How a step for a platform runs on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulation {
    /// The CPU runs the platform's binaries itself.
    Native,
    /// Through the binfmt_misc handler `name`, whose interpreter is `interpreter`.
    Handler { name: String, interpreter: String },
}

#[derive(Debug, thiserror::Error)]
pub enum EmulationError {
    #[error(
        "RUN for {platform} needs emulation on this {host} machine, but {reason}: install QEMU's \
         user-mode emulators and register them (Debian: `apt-get install qemu-user-static \
         binfmt-support`; or `docker run --privileged --rm tonistiigi/binfmt --install {arch}`)"
    )]
    NoHandler {
        platform: String,
        host: String,
        arch: String,
        reason: String,
    },
    #[error(
        "RUN for {platform}: kiln does not know that platform's ELF header, so it cannot tell whether this machine can run it"
    )]
    UnknownPlatform { platform: String },
}

/// The first 20 bytes of a `platform` executable (ELF ident, type EXEC, machine): what
/// binfmt_misc's magic and mask are matched against.
fn elf_header(p: &Platform) -> Option<[u8; 20]> {
    // (64-bit, big endian, e_machine)
    let (wide, big, machine): (bool, bool, u16) =
        match (p.architecture.as_str(), p.variant.as_deref()) {
            ("amd64", _) => (true, false, 0x3e),
            ("386", _) => (false, false, 0x03),
            ("arm64", _) => (true, false, 0xb7),
            ("arm", _) => (false, false, 0x28),
            ("ppc64le", _) => (true, false, 0x15),
            ("ppc64", _) => (true, true, 0x15),
            ("s390x", _) => (true, true, 0x16),
            ("riscv64", _) => (true, false, 0xf3),
            ("mips64le", _) => (true, false, 0x08),
            ("mips64", _) => (true, true, 0x08),
            ("loong64", _) => (true, false, 0x102),
            _ => return None,
        };
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = if wide { 2 } else { 1 };
    h[5] = if big { 2 } else { 1 };
    h[6] = 1;
    let (e_type, e_machine) = if big {
        (2u16.to_be_bytes(), machine.to_be_bytes())
    } else {
        (2u16.to_le_bytes(), machine.to_le_bytes())
    };
    h[16..18].copy_from_slice(&e_type);
    h[18..20].copy_from_slice(&e_machine);
    Some(h)
}

/// Platforms this machine's CPU runs without help: its own, and the 32-bit one of its family.
fn native(host: &Platform, p: &Platform) -> bool {
    host.os == p.os
        && (host.architecture == p.architecture
            || matches!(
                (host.architecture.as_str(), p.architecture.as_str()),
                ("amd64", "386")
            ))
}

/// One handler as `/proc/sys/fs/binfmt_misc/NAME` describes it.
#[derive(Debug, PartialEq, Eq)]
struct Handler {
    enabled: bool,
    interpreter: String,
    offset: usize,
    magic: Vec<u8>,
    mask: Option<Vec<u8>>,
}

fn parse_handler(text: &str) -> Option<Handler> {
    let mut h = Handler {
        enabled: false,
        interpreter: String::new(),
        offset: 0,
        magic: Vec::new(),
        mask: None,
    };
    for line in text.lines() {
        match line.split_once(' ') {
            None if line == "enabled" => h.enabled = true,
            Some(("interpreter", v)) => h.interpreter = v.to_string(),
            Some(("offset", v)) => h.offset = v.parse().ok()?,
            Some(("magic", v)) => h.magic = hex(v)?,
            Some(("mask", v)) => h.mask = Some(hex(v)?),
            _ => {}
        }
    }
    // Extension handlers (`E`) have no magic: they never match an ELF file.
    (!h.magic.is_empty()).then_some(h)
}

fn hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

impl Handler {
    fn matches(&self, file: &[u8]) -> bool {
        let Some(window) = file.get(self.offset..self.offset + self.magic.len()) else {
            return false;
        };
        window
            .iter()
            .zip(&self.magic)
            .enumerate()
            .all(|(i, (b, m))| {
                let mask = self
                    .mask
                    .as_ref()
                    .and_then(|k| k.get(i))
                    .copied()
                    .unwrap_or(0xff);
                b & mask == m & mask
            })
    }
}

/// How this machine runs `platform`'s binaries, looking at the handlers under `dir`.
pub fn emulation_in(dir: &Path, platform: &Platform) -> Result<Emulation, EmulationError> {
    let host = Platform::host();
    if native(&host, platform) {
        return Ok(Emulation::Native);
    }
    let header = elf_header(platform).ok_or_else(|| EmulationError::UnknownPlatform {
        platform: platform.to_string(),
    })?;
    let missing = |reason: String| EmulationError::NoHandler {
        platform: platform.to_string(),
        host: host.to_string(),
        arch: platform.architecture.clone(),
        reason,
    };
    if !dir.join("status").exists() {
        return Err(missing(format!(
            "binfmt_misc is not mounted on {} (`mount -t binfmt_misc binfmt_misc {}`)",
            dir.display(),
            dir.display()
        )));
    }
    if std::fs::read_to_string(dir.join("status")).is_ok_and(|s| s.trim() == "disabled") {
        return Err(missing("binfmt_misc is disabled".into()));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| missing(format!("{} cannot be read ({e})", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name == "status" || name == "register" {
            continue;
        }
        let Some(h) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| parse_handler(&t))
        else {
            continue;
        };
        if h.enabled && h.matches(&header) {
            return Ok(Emulation::Handler {
                name: name.into_owned(),
                interpreter: h.interpreter,
            });
        }
    }
    Err(missing(format!(
        "no binfmt_misc handler for {} binaries is registered",
        platform.architecture
    )))
}

/// [`emulation_in`] the kernel's binfmt_misc.
pub fn emulation(platform: &Platform) -> Result<Emulation, EmulationError> {
    emulation_in(Path::new(BINFMT_MISC), platform)
}

/// Platforms a builder may offer, in the order BuildKit lists what it detects.
const CANDIDATES: [&str; 11] = [
    "linux/amd64",
    "linux/arm64",
    "linux/riscv64",
    "linux/ppc64le",
    "linux/s390x",
    "linux/386",
    "linux/mips64le",
    "linux/mips64",
    "linux/loong64",
    "linux/arm/v7",
    "linux/arm/v6",
];

/// What this machine can build for, looking at the handlers under `dir`: its own platform
/// first, then those it runs natively or through a registered handler.
pub fn available_platforms_in(dir: &Path) -> Vec<Platform> {
    let host = Platform::host();
    let mut out = vec![host.clone()];
    for p in CANDIDATES.iter().filter_map(|c| c.parse::<Platform>().ok()) {
        if p != host && emulation_in(dir, &p).is_ok() {
            out.push(p);
        }
    }
    out
}

/// [`available_platforms_in`] the kernel's binfmt_misc.
pub fn available_platforms() -> Vec<Platform> {
    available_platforms_in(Path::new(BINFMT_MISC))
}

/// Emulated steps of a build: how many, for which platforms, and how long they took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmulationStats {
    pub steps: usize,
    pub time: Duration,
    pub platforms: std::collections::BTreeSet<String>,
}

impl EmulationStats {
    /// `2 steps for linux/arm64 ran under emulation: 1.4s`, or `None` without any.
    pub fn summary(&self) -> Option<String> {
        if self.steps == 0 {
            return None;
        }
        let platforms: Vec<&str> = self.platforms.iter().map(String::as_str).collect();
        Some(format!(
            "{} step{} for {} ran under emulation (QEMU): {:.1}s",
            self.steps,
            if self.steps == 1 { "" } else { "s" },
            platforms.join(", "),
            self.time.as_secs_f64()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n\
        flags: PF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\n\
        mask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn binfmt(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        std::fs::write(dir.path().join("register"), "").unwrap();
        for (name, text) in entries {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn available_platforms_are_the_host_then_what_runs() {
        if Platform::host().architecture != "amd64" {
            return;
        }
        let none = binfmt(&[]);
        let names = |d: &tempfile::TempDir| -> Vec<String> {
            available_platforms_in(d.path())
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(names(&none), ["linux/amd64", "linux/386"]);
        let arm = binfmt(&[("qemu-aarch64", DEBIAN_AARCH64)]);
        assert_eq!(names(&arm), ["linux/amd64", "linux/arm64", "linux/386"]);
    }

    #[test]
    fn debian_handler_matches_arm64_only() {
        let dir = binfmt(&[("qemu-aarch64", DEBIAN_AARCH64)]);
        if Platform::host().architecture != "amd64" {
            return;
        }
        assert_eq!(
            emulation_in(dir.path(), &p("linux/arm64")).unwrap(),
            Emulation::Handler {
                name: "qemu-aarch64".into(),
                interpreter: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into()
            }
        );
        assert_eq!(
            emulation_in(dir.path(), &p("linux/amd64")).unwrap(),
            Emulation::Native
        );
        let err = emulation_in(dir.path(), &p("linux/arm/v7")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "RUN for linux/arm/v7 needs emulation on this linux/amd64 machine, but no binfmt_misc \
             handler for arm binaries is registered: install QEMU's user-mode emulators and \
             register them (Debian: `apt-get install qemu-user-static binfmt-support`; or \
             `docker run --privileged --rm tonistiigi/binfmt --install arm`)"
        );
    }

    #[test]
    fn disabled_handler_and_unmounted_binfmt_are_missing() {
        if Platform::host().architecture != "amd64" {
            return;
        }
        let disabled = DEBIAN_AARCH64.replace("enabled\n", "disabled\n");
        let dir = binfmt(&[("qemu-aarch64", &disabled)]);
        assert!(matches!(
            emulation_in(dir.path(), &p("linux/arm64")),
            Err(EmulationError::NoHandler { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        let err = emulation_in(empty.path(), &p("linux/arm64")).unwrap_err();
        assert!(
            err.to_string().contains("binfmt_misc is not mounted"),
            "{err}"
        );
    }

    #[test]
    fn elf_headers_follow_the_handlers_magic() {
        let h = parse_handler(DEBIAN_AARCH64).unwrap();
        assert!(h.matches(&elf_header(&p("linux/arm64")).unwrap()));
        assert!(!h.matches(&elf_header(&p("linux/amd64")).unwrap()));
        assert!(!h.matches(&elf_header(&p("linux/riscv64")).unwrap()));
        // qemu-user-static's s390x handler (big endian).
        let s390x = parse_handler(
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/s390x-binfmt-P\noffset 0\n\
             magic 7f454c4602020100000000000000000000020016\n\
             mask ffffffffffffff00fffffffffffffffffffeffff\n",
        )
        .unwrap();
        assert!(s390x.matches(&elf_header(&p("linux/s390x")).unwrap()));
        assert!(!s390x.matches(&elf_header(&p("linux/arm64")).unwrap()));
    }

    #[test]
    fn summary_counts_steps_and_platforms() {
        let mut s = EmulationStats::default();
        assert_eq!(s.summary(), None);
        s.steps = 2;
        s.time = Duration::from_millis(1400);
        s.platforms.insert("linux/arm64".into());
        assert_eq!(
            s.summary().unwrap(),
            "2 steps for linux/arm64 ran under emulation (QEMU): 1.4s"
        );
    }
}
