//! Puts small records (audit lines, drift events) to object storage off the caller's thread:
//! one writer thread per store, fed by a bounded queue. The caller has already written the
//! record to its local log; a full queue (a store that stalls) drops the store's copy and
//! counts it, never blocks the caller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_channel::{Sender, TrySendError, bounded};
use flywheel_registry::Remote;

/// Records waiting for the store, per writer.
const QUEUE: usize = 4096;

use crate::metrics::STORE_RECORDS;

type Record = (&'static str, Vec<String>, Vec<u8>);

/// A handle on one store's writer thread.
#[derive(Debug)]
pub struct StoreWriter {
    tx: Sender<Record>,
}

impl StoreWriter {
    /// The process's writer for `remote` (started on first use).
    pub fn for_remote(remote: &Arc<Remote>) -> Option<Arc<StoreWriter>> {
        static WRITERS: OnceLock<Mutex<HashMap<String, Arc<StoreWriter>>>> = OnceLock::new();
        let mut writers = WRITERS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(writer) = writers.get(remote.url()) {
            return Some(Arc::clone(writer));
        }
        let writer = Arc::new(Self::start(remote)?);
        writers.insert(remote.url().to_owned(), Arc::clone(&writer));
        Some(writer)
    }

    /// A writer thread of its own for `remote` (a heavy stream, e.g. relayed labels, that must
    /// not hold up audit lines and drift events).
    pub fn start(remote: &Arc<Remote>) -> Option<StoreWriter> {
        let (tx, rx) = bounded::<Record>(QUEUE);
        let store = Arc::clone(remote);
        let spawned = std::thread::Builder::new().name("store-writer".into()).spawn(move || {
            for (kind, parts, bytes) in rx {
                // Guarded: a panic loses this record (counted), never the thread.
                crate::health::guard("store-writer", || {
                    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                    let result = match store.put_object(&parts, bytes) {
                        Ok(()) => "ok",
                        Err(e) => {
                            tracing::error!(kind, error = %e, "record not put to the store; it is in the local log");
                            "failed"
                        }
                    };
                    metrics::counter!(STORE_RECORDS, "kind" => kind, "result" => result).increment(1);
                });
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "store writer not started; records stay in the local logs");
            return None;
        }
        Some(StoreWriter { tx })
    }

    /// Queues `bytes` for the object at `parts`; never blocks.
    pub fn put(&self, kind: &'static str, parts: Vec<String>, bytes: Vec<u8>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send((kind, parts, bytes)) {
            metrics::counter!(STORE_RECORDS, "kind" => kind, "result" => "dropped").increment(1);
            tracing::warn!(kind, "store writer busy; this record stays in the local log only");
        }
    }
}

/// A fleet-wide, time-ordered id: `<unix ms, 13 digits>-<replica>-<n, 6 digits>`.
pub fn record_id(replica: &str, n: u64) -> String {
    format!("{:013}-{replica}-{:06}", flywheel_registry::now_ms(), n % 1_000_000)
}
