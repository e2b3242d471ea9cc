//! A disk that fails under two open databases (a replica has two: its Raft log and its state).
//! Found by the chaos run (docs/reliability.md, "Chaos"): when one database met the failure,
//! dropping the other, which had nothing left to write, panicked in sled's `Drop for Log`
//! (`sync_all().unwrap()` on a read-only file system), so a replica stopping on a failed disk
//! could print a panic on its way out. Its own test binary: once a disk failed, this process
//! keeps its sled databases open until it exits.
//!
//! Needs root (a loop device with ext4); skipped, and says so, without it.
#![allow(clippy::unwrap_used, missing_docs)]

use keyraft_storage::{Batch, SledStorage, Storage, StorageError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// An ext4 file system on a loop device, mounted so that an error makes it read-only;
/// unmounted on drop.
struct FailingDisk {
    mount_point: PathBuf,
}

impl FailingDisk {
    fn mount(dir: &Path) -> Option<FailingDisk> {
        let image = dir.join("disk.img");
        std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
        let mount_point = dir.join("mnt");
        std::fs::create_dir(&mount_point).unwrap();
        let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
        if !ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)) {
            return None;
        }
        let mounted = ok(Command::new("mount").args(["-o", "loop,errors=remount-ro"]).arg(&image).arg(&mount_point));
        mounted.then_some(FailingDisk { mount_point })
    }

    /// From now on every write fails with EROFS, through open files too.
    fn fail(&self) {
        let out = Command::new("findmnt").args(["-n", "-o", "SOURCE"]).arg(&self.mount_point).output().unwrap();
        let source = String::from_utf8(out.stdout).unwrap();
        let device = Path::new(source.trim()).file_name().unwrap().to_owned();
        std::fs::write(Path::new("/sys/fs/ext4").join(device).join("trigger_fs_error"), "test\n").unwrap();
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount_point).status();
    }
}

fn put(store: &SledStorage, key: &[u8], bytes: usize) -> Result<(), StorageError> {
    let mut b = Batch::new();
    b.put(key.to_vec(), vec![7; bytes]);
    store.write(b)?;
    store.flush()
}

#[test]
fn databases_on_a_disk_that_fails_are_dropped_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = FailingDisk::mount(dir.path()) else {
        eprintln!("skipped: mounting an ext4 image needs root (or CAP_SYS_ADMIN) and mkfs.ext4");
        return;
    };
    let log = SledStorage::open(&disk.mount_point.join("log")).unwrap();
    let state = SledStorage::open(&disk.mount_point.join("state")).unwrap();
    put(&log, b"a", 100).unwrap();
    // Large values go to the value log, small ones to sled itself: both on disk now.
    put(&state, b"b", 100).unwrap();
    put(&state, b"c", 10_000).unwrap();
    disk.fail();
    let e = put(&log, b"d", 100).unwrap_err();
    assert!(e.to_string().contains("Read-only file system"), "{e}");
    // The state database met no error itself and has nothing left to write.
    drop(log);
    drop(state);
    drop(disk);
}
