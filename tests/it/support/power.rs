//! A power cut of NATS hosts, as their disks see it: each server loses every write since a
//! moment the test chooses, what it had acknowledged included.
//!
//! nats-server writes its store through the page cache and syncs every `sync_interval` (two
//! minutes by default, so never within a test): what a power cut leaves on disk is the store as
//! it was at some earlier moment. [`image`] takes that moment: every server frozen (SIGSTOP, so
//! the copies of a cluster are one consistent instant), each store folder copied, every server
//! resumed; they go on acknowledging publishes. [`cut`] is the cut itself: every server killed
//! (SIGKILL), its store replaced by its copy, and started again on the same ports.

use std::path::Path;

use mes_events::demo::local_nats::LocalNats;

/// What the disks of some servers hold: their stores as of one moment.
pub struct DiskImage {
    copies: Vec<tempfile::TempDir>,
}

fn signal(node: &LocalNats, sig: i32) {
    let pid = node.pid().expect("the server runs") as i32;
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal {sig} to {pid}");
}

/// Freezes every server, copies each one's store, resumes them.
pub fn image(nodes: &[&LocalNats]) -> DiskImage {
    for n in nodes {
        signal(n, libc::SIGSTOP);
    }
    let copies = nodes
        .iter()
        .map(|n| {
            let copy = tempfile::Builder::new()
                .prefix("mes-disk-")
                .tempdir()
                .unwrap();
            copy_dir(&n.store_dir(), copy.path());
            copy
        })
        .collect();
    for n in nodes {
        signal(n, libc::SIGCONT);
    }
    DiskImage { copies }
}

/// Kills every server, puts its disk image in place of its store, starts it again.
pub fn cut(nodes: &mut [&mut LocalNats], image: DiskImage) {
    assert_eq!(nodes.len(), image.copies.len());
    for n in nodes.iter_mut() {
        n.kill();
    }
    for (n, copy) in nodes.iter_mut().zip(&image.copies) {
        let store = n.store_dir();
        std::fs::remove_dir_all(&store).unwrap();
        copy_dir(copy.path(), &store);
    }
    // A cluster's nodes wait for each other: start them all before any must be ready.
    for n in nodes.iter_mut() {
        n.restart()
            .expect("starting nats-server again after the cut");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
