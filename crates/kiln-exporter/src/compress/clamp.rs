//! `rewrite-timestamp`: a tar stream copied with its times clamped to the build's epoch.

use std::io::{self, Read, Write};

/// Copies a tar stream, clamping each header's mtime (and a GNU header's atime and ctime, and
/// PAX `mtime`/`atime`/`ctime` records) to `epoch`; everything else is copied byte for byte.
/// Returns whether anything changed.
pub fn clamp_tar_times(mut input: impl Read, out: &mut impl Write, epoch: u64) -> io::Result<bool> {
    let mut changed = false;
    let mut block = [0u8; 512];
    loop {
        if !read_full(&mut input, &mut block)? {
            return Ok(changed);
        }
        if block.iter().all(|&b| b == 0) {
            // The end marker: the rest (more zero blocks) is copied as it is.
            out.write_all(&block)?;
            io::copy(&mut input, out)?;
            return Ok(changed);
        }
        let typeflag = block[156];
        let size = octal_field(&block[124..136]).ok_or_else(|| bad_tar("invalid size field"))?;
        let header_only = matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6');
        let data_len = if header_only { 0 } else { size };
        let padded = data_len.div_ceil(512) * 512;
        changed |= clamp_field(&mut block[136..148], epoch);
        if &block[257..265] == b"ustar  \0" {
            changed |= clamp_field(&mut block[345..357], epoch);
            changed |= clamp_field(&mut block[357..369], epoch);
        }
        if matches!(typeflag, b'x' | b'g') {
            let mut data = vec![0u8; padded as usize];
            input.read_exact(&mut data)?;
            data.truncate(size as usize);
            let (records, pax_changed) = clamp_pax(&data, epoch)?;
            if pax_changed {
                changed = true;
                set_octal(&mut block[124..136], records.len() as u64);
            }
            set_checksum(&mut block);
            out.write_all(&block)?;
            out.write_all(&records)?;
            let pad = records.len().div_ceil(512) * 512 - records.len();
            out.write_all(&vec![0u8; pad])?;
            continue;
        }
        set_checksum(&mut block);
        out.write_all(&block)?;
        let copied = io::copy(&mut (&mut input).take(padded), out)?;
        if copied != padded {
            return Err(bad_tar("truncated entry"));
        }
    }
}

fn bad_tar(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("invalid layer tar: {why}"),
    )
}

/// Fills `buf`; false at a clean end of input.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..])? {
            0 if n == 0 => return Ok(false),
            0 => return Err(bad_tar("truncated header")),
            k => n += k,
        }
    }
    Ok(true)
}

/// A numeric header field: octal digits, or base-256 when the high bit is set.
fn octal_field(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .skip_while(|&&b| b == b' ')
        .map(|&b| b as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn set_octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    let s = format!("{v:0width$o}");
    if s.len() <= width {
        field[..width].copy_from_slice(s.as_bytes());
        field[width] = 0;
    } else {
        // Too large for octal: base-256, as GNU tar writes it.
        field.fill(0);
        let mut x = v;
        for b in field.iter_mut().rev() {
            *b = (x & 0xff) as u8;
            x >>= 8;
        }
        field[0] |= 0x80;
    }
}

/// Clamps a time field to `epoch`; true when it changed.
fn clamp_field(field: &mut [u8], epoch: u64) -> bool {
    match octal_field(field) {
        Some(t) if t > epoch => {
            set_octal(field, epoch);
            true
        }
        _ => false,
    }
}

fn set_checksum(block: &mut [u8; 512]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(s.as_bytes());
}

/// PAX records with `mtime`, `atime` and `ctime` clamped (re-encoded only when one changed).
fn clamp_pax(data: &[u8], epoch: u64) -> io::Result<(Vec<u8>, bool)> {
    let mut records = Vec::new();
    let mut rest = data;
    let mut changed = false;
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad_tar("invalid PAX record"))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&l| l > sp + 1 && l <= rest.len())
            .ok_or_else(|| bad_tar("invalid PAX record length"))?;
        let body = &rest[sp + 1..len - 1];
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad_tar("invalid PAX record"))?;
        let (key, value) = (&body[..eq], &body[eq + 1..]);
        let mut value = value.to_vec();
        if matches!(key, b"mtime" | b"atime" | b"ctime") {
            let secs: f64 = std::str::from_utf8(&value)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            if secs > epoch as f64 {
                value = epoch.to_string().into_bytes();
                changed = true;
            }
        }
        records.push((key.to_vec(), value));
        rest = &rest[len..];
    }
    if !changed {
        return Ok((data.to_vec(), false));
    }
    let mut out = Vec::new();
    for (k, v) in records {
        // The length counts its own digits: grow it until it is stable.
        let base = k.len() + v.len() + 3;
        let mut len = base + 1;
        while len != base + len.to_string().len() {
            len = base + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(&k);
        out.push(b'=');
        out.extend_from_slice(&v);
        out.push(b'\n');
    }
    Ok((out, true))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn tar_with_times(mtime: u64) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        b.append_pax_extensions([("mtime", format!("{mtime}.5").as_bytes())])
            .unwrap();
        b.append_data(&mut h, "a/file", &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mtime(10);
        h.set_size(0);
        b.append_data(&mut h, "old/", io::empty()).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn clamping_rewrites_late_times_only() {
        let input = tar_with_times(2_000_000_000);
        let mut out = Vec::new();
        assert!(clamp_tar_times(&input[..], &mut out, 1_000_000_000).unwrap());
        let mut ar = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mtime = e.header().mtime().unwrap();
            let pax_mtime = e
                .pax_extensions()
                .unwrap()
                .into_iter()
                .flatten()
                .map(|x| x.unwrap())
                .find(|x| x.key() == Ok("mtime"))
                .map(|x| x.value().unwrap().to_string());
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            seen.push((path, mtime, pax_mtime, body));
        }
        assert_eq!(
            seen,
            [
                (
                    "a/file".to_string(),
                    1_000_000_000,
                    Some("1000000000".to_string()),
                    b"abc".to_vec()
                ),
                ("old/".to_string(), 10, None, Vec::new()),
            ]
        );
        // Already old enough: nothing changes, byte for byte.
        let mut again = Vec::new();
        assert!(!clamp_tar_times(&out[..], &mut again, 1_000_000_000).unwrap());
        assert_eq!(again, out);
    }
}
