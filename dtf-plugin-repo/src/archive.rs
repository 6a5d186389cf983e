//! Defensive unpacking of `.tar.gz` plugin artifacts, and building them.
//!
//! The rules (Cargo's for crate archives, plus caps):
//! - every path is relative and made of normal components only: no absolute path, no `..`,
//!   no drive prefix;
//! - regular files and directories are unpacked; a **symbolic link** only with a relative
//!   target without `..` (so it can only point down the plugin's tree); a **hard link** only
//!   to a regular file unpacked before it; every other kind (devices, FIFOs, …) is refused;
//! - nothing is ever written through a link: each parent of an entry must be a real
//!   directory, and files are created with `create_new`;
//! - the total size unpacked and the number of entries are capped, counted on the bytes
//!   actually written, and a header announcing more than what is left stops the unpacking
//!   before anything of it is written: a decompression bomb stops early;
//! - permissions are reduced to `0o755` or `0o644` (no set-uid, no world-writable files);
//!   timestamps and owners are not restored.
//!
//! A refusal leaves whatever was unpacked so far in the target, which the caller (the
//! installer) unpacks into a temporary directory and deletes on failure.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;

/// Caps on what one artifact may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest artifact downloaded, in bytes. Default 64 MiB.
    pub max_download: u64,
    /// The most bytes unpacked (the sum of all files). Default 256 MiB.
    pub max_unpacked: u64,
    /// The most entries (files, directories, links). Default 10,000.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_download: 64 << 20,
            max_unpacked: 256 << 20,
            max_entries: 10_000,
        }
    }
}

impl Limits {
    /// Sets the largest artifact downloaded.
    pub fn max_download(mut self, bytes: u64) -> Self {
        self.max_download = bytes;
        self
    }

    /// Sets the most bytes unpacked.
    pub fn max_unpacked(mut self, bytes: u64) -> Self {
        self.max_unpacked = bytes;
        self
    }

    /// Sets the most entries unpacked.
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = entries;
        self
    }
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unpacked {
    /// Entries unpacked.
    pub entries: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Why an archive was refused: the entry (when known) and the reason.
#[derive(Debug)]
pub struct ArchiveRefusal(pub String);

impl std::fmt::Display for ArchiveRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse(entry: &Path, why: impl std::fmt::Display) -> ArchiveRefusal {
    ArchiveRefusal(format!("entry `{}`: {why}", entry.display()))
}

/// `path` as a list of normal components, or why it is not one.
fn safe_relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("a path with `..` is refused"),
            Component::RootDir | Component::Prefix(_) => return Err("an absolute path is refused"),
        }
    }
    Ok(out)
}

/// Checks that every existing ancestor of `rel` under `root` is a real directory (never a
/// link), and creates the missing ones.
fn make_parents(root: &Path, rel: &Path) -> Result<(), ArchiveRefusal> {
    let mut dir = root.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        dir.push(c);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(refuse(
                    rel,
                    "a parent is a link or a file; nothing is written through links",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&dir).map_err(|e| refuse(rel, e))?;
            }
            Err(e) => return Err(refuse(rel, e)),
        }
    }
    Ok(())
}

/// Unpacks the gzip-compressed tar `reader` into the existing, empty directory `root`,
/// following the module's rules and `limits`.
///
/// # Errors
///
/// The first entry refused and why; also a corrupt archive or an I/O error.
pub fn unpack(reader: impl Read, root: &Path, limits: &Limits) -> Result<Unpacked, ArchiveRefusal> {
    let mut archive = tar::Archive::new(GzDecoder::new(reader));
    let mut done = Unpacked::default();
    let entries = archive
        .entries()
        .map_err(|e| ArchiveRefusal(format!("not a tar.gz archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveRefusal(format!("corrupt archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| ArchiveRefusal(format!("an entry has an unreadable path: {e}")))?
            .into_owned();
        let rel = safe_relative(&raw).map_err(|why| refuse(&raw, why))?;
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(refuse(
                &raw,
                format!("the archive has more than {} entries", limits.max_entries),
            ));
        }
        if rel.as_os_str().is_empty() {
            continue; // `./` itself
        }
        let dest = root.join(&rel);
        let kind = entry.header().entry_type();
        make_parents(root, &rel)?;
        if kind.is_dir() {
            match fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(refuse(&raw, "a directory over an existing file or link")),
                Err(_) => fs::create_dir(&dest).map_err(|e| refuse(&raw, e))?,
            }
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let left = limits.max_unpacked - done.bytes;
            let announced = entry.header().size().map_err(|e| refuse(&raw, e))?;
            if announced > left {
                return Err(refuse(
                    &raw,
                    format!(
                        "{announced} bytes would exceed the cap of {} bytes unpacked",
                        limits.max_unpacked
                    ),
                ));
            }
            let mode = entry.header().mode().unwrap_or(0o644);
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&dest)
                .map_err(|e| refuse(&raw, e))?;
            // Counted on what is read, not on the header; `take` stops one byte past the cap.
            let written = io::copy(&mut (&mut entry).take(left + 1), &mut file)
                .map_err(|e| refuse(&raw, e))?;
            if written > left {
                return Err(refuse(
                    &raw,
                    format!("exceeds the cap of {} bytes unpacked", limits.max_unpacked),
                ));
            }
            file.flush().map_err(|e| refuse(&raw, e))?;
            done.bytes += written;
            set_mode(&file, mode).map_err(|e| refuse(&raw, e))?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|e| refuse(&raw, e))?
                .ok_or_else(|| refuse(&raw, "a symbolic link without a target"))?
                .into_owned();
            if target.as_os_str().is_empty() || safe_relative(&target).is_err() {
                return Err(refuse(
                    &raw,
                    format!(
                        "a symbolic link to `{}` could leave the plugin's directory (only relative targets without `..` are allowed)",
                        target.display()
                    ),
                ));
            }
            symlink(&target, &dest).map_err(|e| refuse(&raw, e))?;
        } else if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| refuse(&raw, e))?
                .ok_or_else(|| refuse(&raw, "a hard link without a target"))?
                .into_owned();
            let target_rel = safe_relative(&target).map_err(|why| {
                refuse(
                    &raw,
                    format!("a hard link to `{}`: {why}", target.display()),
                )
            })?;
            let source = root.join(&target_rel);
            let is_inside_file = !target_rel.as_os_str().is_empty()
                && make_parents(root, &target_rel).is_ok()
                && fs::symlink_metadata(&source).is_ok_and(|m| m.is_file());
            if !is_inside_file {
                return Err(refuse(
                    &raw,
                    format!(
                        "a hard link to `{}`, which is not a file unpacked before it",
                        target.display()
                    ),
                ));
            }
            fs::hard_link(&source, &dest).map_err(|e| refuse(&raw, e))?;
        } else {
            return Err(refuse(
                &raw,
                format!("entries of type {kind:?} are refused"),
            ));
        }
    }
    Ok(done)
}

#[cfg(unix)]
fn set_mode(file: &fs::File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &fs::File, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "symbolic links in plugin archives are only supported on Unix",
    ))
}

/// Writes a reproducible `.tar.gz` of the folder `dir` to `out`: files sorted by path, mtime
/// 0, owner 0, modes `0o755`/`0o644`; hidden entries (`.git`, …) and `__pycache__` are left
/// out; symbolic links are kept as links. Returns the number of entries.
///
/// # Errors
///
/// Reading `dir` or writing `out` failed.
pub fn pack_dir(dir: &Path, out: impl Write) -> io::Result<u64> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::best());
    let mut builder = tar::Builder::new(gz);
    builder.follow_symlinks(false);
    let count = pack_tree(&mut builder, dir, Path::new(""))?;
    builder.into_inner()?.finish()?.flush()?;
    Ok(count)
}

fn pack_tree<W: Write>(builder: &mut tar::Builder<W>, dir: &Path, rel: &Path) -> io::Result<u64> {
    let mut names: Vec<_> = fs::read_dir(dir.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.retain(|n| {
        let n = n.to_string_lossy();
        !n.starts_with('.') && n != "__pycache__"
    });
    names.sort();
    let mut count = 0;
    for name in names {
        let child = rel.join(&name);
        let path = dir.join(&child);
        let meta = fs::symlink_metadata(&path)?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        count += 1;
        if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            builder.append_data(&mut header, &child, io::empty())?;
            count += pack_tree(builder, dir, &child)?;
        } else if meta.file_type().is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            builder.append_link(&mut header, &child, fs::read_link(&path)?)?;
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if is_executable(&meta) { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            builder.append_data(&mut header, &child, fs::File::open(&path)?)?;
        }
    }
    Ok(count)
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_normal_relative_paths_are_safe() {
        assert_eq!(
            safe_relative(Path::new("./a/b")).unwrap(),
            PathBuf::from("a/b")
        );
        assert!(safe_relative(Path::new("a/../b")).is_err());
        assert!(safe_relative(Path::new("/etc/passwd")).is_err());
    }
}
