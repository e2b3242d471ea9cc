//! The newest version of every page, kept in memory so that applying an epoch reads nothing
//! from storage once warm.

use super::page::PageId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The newest version of every page read or written so far, encoded in the expanded layout
/// (every interior hash spelled out, so that applying an epoch decodes a page without
/// hashing; storage holds the compact layout, see `page`).
///
/// Applying an epoch reads the newest version of each page it touches. The state machine
/// keeps them in memory (about 90k pages, some 40 MB, per million entries) so that an epoch
/// reads nothing from storage once warm. The cache holds pages that are in storage, or on
/// their way there: it is filled from reads, and from an epoch's pages once that epoch's batch
/// was written (replicas) or queued to a writer that stops everything if it fails (verifiers,
/// see `verifier::VerifierState::commit`). It never evicts, so a page not in it has not been
/// written since the process started and storage holds its newest version.
#[derive(Debug, Default)]
pub struct PageCache {
    /// Page to the epoch its newest version was written in, and that version.
    pages: Mutex<HashMap<PageId, PageVersion>>,
}

impl PageCache {
    /// The newest version of page `id`.
    pub(super) fn get(&self, id: &PageId) -> Option<Arc<Vec<u8>>> {
        self.version(id).map(|(_, bytes)| bytes)
    }

    /// The newest version of page `id` and the epoch it was written in.
    pub(super) fn version(&self, id: &PageId) -> Option<PageVersion> {
        self.pages.lock().ok()?.get(id).cloned()
    }

    /// Records pages whose batch is now written.
    pub fn commit(&self, written: WrittenPages) {
        if let Ok(mut pages) = self.pages.lock() {
            pages.extend(written);
        }
    }

    /// Forgets everything (after a failed write, when storage and memory may disagree).
    pub fn clear(&self) {
        if let Ok(mut pages) = self.pages.lock() {
            pages.clear();
        }
    }
}

/// Pages written by an epoch (with that epoch), to put into the [`PageCache`] once the batch
/// is written.
pub type WrittenPages = Vec<(PageId, PageVersion)>;

/// The epoch a page version was written in, and the page in the expanded layout.
pub type PageVersion = (u64, Arc<Vec<u8>>);
