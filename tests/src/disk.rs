//! Disks that fail under a running replica: a small tmpfs that fills up, and an ext4 file
//! system on a loop device that turns read-only (as ext4 does with `errors=remount-ro` when
//! the device fails). Both need root (or `CAP_SYS_ADMIN`); without it they are `None` and the
//! caller skips the fault.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What a [`Disk`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// A tmpfs of a given size, to fill.
    Tmpfs,
    /// An ext4 image on a loop device, to turn read-only.
    Ext4,
}

/// A file system mounted at `mount_point` for a replica's data (in `data()`), unmounted on drop.
#[derive(Debug)]
pub struct Disk {
    pub kind: DiskKind,
    pub mount_point: PathBuf,
    image: Option<PathBuf>,
}

fn run(program: &str, args: &[&str], path: &Path) -> Result<String, String> {
    let out = Command::new(program).args(args).arg(path).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {args:?} {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Disk {
    /// Mounts a new file system of `size_bytes` at `mount_point`; `Err` says why not (e.g. no
    /// right to mount).
    pub fn mount(kind: DiskKind, mount_point: &Path, size_bytes: u64) -> Result<Disk, String> {
        std::fs::create_dir_all(mount_point).map_err(|e| e.to_string())?;
        let image = match kind {
            DiskKind::Tmpfs => {
                run("mount", &["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"], mount_point)?;
                None
            }
            DiskKind::Ext4 => {
                let image = mount_point.with_extension("img");
                let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
                file.set_len(size_bytes).map_err(|e| e.to_string())?;
                run("mkfs.ext4", &["-q", "-F"], &image)?;
                let disk = Disk { kind, mount_point: mount_point.to_owned(), image: Some(image) };
                disk.mount_image()?;
                return Ok(disk);
            }
        };
        Ok(Disk { kind, mount_point: mount_point.to_owned(), image })
    }

    fn mount_image(&self) -> Result<(), String> {
        let image = self.image.as_ref().ok_or("not an image")?;
        let out = Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(image)
            .arg(&self.mount_point)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("mounting {}: {}", image.display(), String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(())
    }

    /// Where the replica's data goes (a directory of the mount, not its root, which holds
    /// ext4's `lost+found`).
    pub fn data(&self) -> PathBuf {
        self.mount_point.join("data")
    }

    /// Fills the file system until it has no space left; the filler file.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.mount_point.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&chunk).and_then(|()| f.flush()) {
                assert_eq!(e.raw_os_error(), Some(28), "filling {}: {e}", self.mount_point.display());
                return path;
            }
        }
    }

    /// Gives the space back: removes `filler` and grows the tmpfs to `size_bytes`.
    pub fn free(&self, filler: &Path, size_bytes: u64) -> Result<(), String> {
        std::fs::remove_file(filler).map_err(|e| e.to_string())?;
        run("mount", &["-o", &format!("remount,size={size_bytes}")], &self.mount_point).map(drop)
    }

    /// Makes the file system fail as ext4 does on a device error with `errors=remount-ro`:
    /// from now on every write, through files already open too, fails with EROFS.
    pub fn fail_read_only(&self) -> Result<(), String> {
        let source = run("findmnt", &["-n", "-o", "SOURCE"], &self.mount_point)?;
        let device = Path::new(source.trim()).file_name().ok_or("no device")?.to_owned();
        let trigger = Path::new("/sys/fs/ext4").join(device).join("trigger_fs_error");
        std::fs::write(&trigger, "keyraft chaos: the disk fails\n").map_err(|e| format!("{}: {e}", trigger.display()))
    }

    /// After [`Disk::fail_read_only`], with the replica stopped: unmounts, repairs the file
    /// system as an operator would (`e2fsck -fy`), and mounts it writable again.
    pub fn repair(&self) -> Result<(), String> {
        run("umount", &[], &self.mount_point)?;
        let image = self.image.as_ref().ok_or("not an image")?;
        let out = Command::new("e2fsck").args(["-f", "-y"]).arg(image).output().map_err(|e| e.to_string())?;
        // 0: clean; 1: errors corrected. Anything else leaves the file system damaged.
        if !matches!(out.status.code(), Some(0 | 1)) {
            return Err(format!("e2fsck {}: {}", image.display(), String::from_utf8_lossy(&out.stdout)));
        }
        self.mount_image()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        // Lazily: a replica may still hold files open; its directory must not stay mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.mount_point).status();
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

/// Copies the directory `from` to `to` (which must not exist), keeping permissions, and
/// syncs the file system it went to: a disk that fails later loses what was not synced, and
/// the copy is the operator's move, not the replica's writes under test.
pub fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "cp -a {} {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    run("sync", &["-f"], to).map(drop)
}
