//! The newest version of every page, kept in memory so that applying an epoch reads nothing
//! from storage once warm.

use super::page::PageId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The newest version of every page read or written so far, encoded.
///
/// Applying an epoch reads the newest version of each page it touches. The state machine
/// keeps them in memory (about 90k pages, some 40 MB, per million entries) so that an epoch
/// reads nothing from storage once warm. The cache holds bytes that are in storage, or on
/// their way there: it is filled from reads, and from an epoch's pages once that epoch's batch
/// was written (replicas) or queued to a writer that stops everything if it fails (verifiers,
/// see `verifier::VerifierState::commit`). It never evicts, so a page not in it has not been
/// written since the process started and storage holds its newest version.
#[derive(Debug, Default)]
pub struct PageCache {
    pages: Mutex<HashMap<PageId, Arc<Vec<u8>>>>,
}

impl PageCache {
    pub(super) fn get(&self, id: &PageId) -> Option<Arc<Vec<u8>>> {
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

/// Pages written by an epoch, to put into the [`PageCache`] once the batch is written.
pub type WrittenPages = Vec<(PageId, Arc<Vec<u8>>)>;
