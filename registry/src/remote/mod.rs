//! The registry in object storage (`s3://`, `gs://`, `az://`; `memory://` for tests), through
//! Apache Arrow's `object_store`. The layout is the local one under the URL's prefix:
//!
//! ```text
//! <prefix>/<model>/<version>/model.onnx      create-only
//! <prefix>/<model>/<version>/profile.json    create-only, before the manifest
//! <prefix>/<model>/<version>/manifest.sig    Ed25519 signature of the manifest, before it
//! <prefix>/<model>/<version>/manifest.json   create-only, written last: the commit marker
//! <prefix>/<model>/aliases.json              replaced by compare-and-set on its ETag
//! <prefix>/<model>/rollout-state.json        replaced whole
//! ```
//! A version without its manifest is being uploaded (or its uploader died): readers ignore it
//! and publishers skip its number. Credentials and endpoints come from the store's standard
//! environment variables (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...).
//!
//! The calls are blocking: each runs on this handle's own runtime and the caller waits, so
//! they work from plain threads and from `spawn_blocking` alike.

mod lease;
mod mirror;
mod ops;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{GetOptions, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

pub use lease::{Claim, Lease, now_ms};
pub use mirror::{Mirror, SyncReport, copy_down};
pub(crate) use mirror::{copy_lock, write_local_aliases};
pub use ops::Published;

use crate::store::RegistryError;

/// Whether `location` names an object store rather than a local folder.
pub fn is_remote(location: &str) -> bool {
    location.split_once("://").is_some_and(|(scheme, _)| scheme != "file")
}

/// A registry root in object storage.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    runtime: tokio::runtime::Runtime,
    requests: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish_non_exhaustive()
    }
}

/// An object's bytes and the version to compare-and-set against.
pub(crate) struct Fetched {
    pub bytes: Vec<u8>,
    pub version: UpdateVersion,
}

/// What a conditional read found.
pub(crate) enum Read {
    Absent,
    Unchanged,
    Fetched(Fetched),
}

/// What a conditional write did.
#[derive(Debug)]
pub(crate) enum Written {
    Done,
    /// The object exists (create) or changed since it was read (update): nothing written.
    Lost,
}

impl Remote {
    /// The process's one handle for `url` (handles own a runtime; they live as long as the
    /// process, so a handle is never dropped inside an async context).
    pub fn shared(url: &str) -> Result<Arc<Remote>, RegistryError> {
        Self::shared_with(url, &[])
    }

    /// Like [`Remote::shared`], with store options (e.g. `aws_endpoint`, `aws_allow_http`)
    /// applied over the environment's.
    pub fn shared_with(url: &str, options: &[(&str, &str)]) -> Result<Arc<Remote>, RegistryError> {
        static OPEN: OnceLock<Mutex<HashMap<String, Arc<Remote>>>> = OnceLock::new();
        let mut open = OPEN.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        let id = format!("{url} {options:?}");
        if let Some(remote) = open.get(&id) {
            return Ok(Arc::clone(remote));
        }
        let remote = Arc::new(Self::connect(url, options)?);
        open.insert(id, Arc::clone(&remote));
        Ok(remote)
    }

    fn connect(url: &str, options: &[(&str, &str)]) -> Result<Self, RegistryError> {
        let bad = |reason: String| RegistryError::Store { url: url.to_owned(), reason };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("not a URL (scheme://bucket/prefix)".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the URL names no bucket".into()));
        }
        // A store that does not answer fails a call within seconds, not the crate's default
        // of minutes: the caller (a poll, a publish) retries on its own schedule.
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(15),
            ..Default::default()
        };
        macro_rules! configured {
            ($builder:expr) => {
                options.iter().try_fold($builder, |builder, (key, value)| {
                    key.parse()
                        .map(|key| builder.with_config(key, *value))
                        .map_err(|e| bad(format!("option {key}: {e}")))
                })?
            };
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" | "s3a" => Arc::new(
                configured!(object_store::aws::AmazonS3Builder::from_env())
                    .with_url(url)
                    .with_retry(retry)
                    // Compare-and-set on aliases needs If-Match / If-None-Match (AWS S3 since
                    // 2024, MinIO, R2, moto).
                    .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "gs" => Arc::new(
                configured!(object_store::gcp::GoogleCloudStorageBuilder::from_env())
                    .with_url(url)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "az" | "azure" | "abfs" | "abfss" => Arc::new(
                configured!(object_store::azure::MicrosoftAzureBuilder::from_env())
                    .with_url(url)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "memory" => Arc::new(object_store::memory::InMemory::new()),
            other => {
                return Err(bad(format!("scheme '{other}' is not supported: use s3://, gs://, az:// or a local path")));
            }
        };
        let prefix = Key::parse(prefix.trim_matches('/')).map_err(|e| bad(format!("prefix: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("registry-io")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("starting its I/O runtime: {e}")))?;
        let requests = Default::default();
        Ok(Self { url: url.trim_end_matches('/').to_owned(), store, prefix, runtime, requests })
    }

    /// The URL this handle was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Requests this handle has sent to the store (a listing page counts once).
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The full URL of a key below the root, for messages.
    pub(crate) fn display(&self, parts: &[&str]) -> String {
        format!("{}/{}", self.url, parts.join("/"))
    }

    fn key(&self, parts: &[&str]) -> Key {
        parts.iter().fold(self.prefix.clone(), |key, part| key.clone().join(*part))
    }

    fn error(&self, parts: &[&str], e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Store { url: self.display(parts), reason: e.to_string() }
    }

    /// Runs `future` on this handle's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        parts: &[&str],
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, RegistryError> {
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().map_err(|_| self.error(parts, "the request's task ended without an answer"))
    }

    /// Reads an object; with `if_none_match`, an unchanged object is not transferred.
    pub(crate) fn read(&self, parts: &[&str], if_none_match: Option<&str>) -> Result<Read, RegistryError> {
        let (store, key) = (Arc::clone(&self.store), self.key(parts));
        let options = GetOptions { if_none_match: if_none_match.map(str::to_owned), ..Default::default() };
        let result = self.run(parts, async move {
            let got = store.get_opts(&key, options).await?;
            let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
            Ok::<_, object_store::Error>((got.bytes().await?.to_vec(), version))
        })?;
        match result {
            Ok((bytes, version)) => Ok(Read::Fetched(Fetched { bytes, version })),
            Err(object_store::Error::NotFound { .. }) => Ok(Read::Absent),
            Err(object_store::Error::NotModified { .. }) => Ok(Read::Unchanged),
            Err(e) => Err(self.error(parts, e)),
        }
    }

    /// Reads an object, `None` when absent.
    pub(crate) fn get(&self, parts: &[&str]) -> Result<Option<Fetched>, RegistryError> {
        match self.read(parts, None)? {
            Read::Fetched(f) => Ok(Some(f)),
            Read::Absent | Read::Unchanged => Ok(None),
        }
    }

    /// Writes an object: `Overwrite`, `Create` (only if absent) or `Update` (only if unchanged).
    pub(crate) fn write(&self, parts: &[&str], bytes: Vec<u8>, mode: PutMode) -> Result<Written, RegistryError> {
        let (store, key) = (Arc::clone(&self.store), self.key(parts));
        let options = PutOptions { mode, ..Default::default() };
        match self.run(parts, async move { store.put_opts(&key, PutPayload::from(bytes), options).await })? {
            Ok(_) => Ok(Written::Done),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Written::Lost)
            }
            Err(e) => Err(self.error(parts, e)),
        }
    }

    /// Names directly below `parts` ("folders").
    pub(crate) fn children(&self, parts: &[&str]) -> Result<Vec<String>, RegistryError> {
        let (store, key) = (Arc::clone(&self.store), self.key(parts));
        let listed = self.run(parts, async move { store.list_with_delimiter(Some(&key)).await })?;
        let listed = listed.map_err(|e| self.error(parts, e))?;
        Ok(listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_owned)).collect())
    }

    /// Every object below `parts`: its path relative to `parts` and its size.
    pub(crate) fn objects(&self, parts: &[&str]) -> Result<Vec<(String, u64)>, RegistryError> {
        self.objects_after(parts, None)
    }

    /// Like [`Remote::objects`], only those whose relative path sorts after `after` (the
    /// store lists from there: a cursor, not a scan).
    pub(crate) fn objects_after(
        &self,
        parts: &[&str],
        after: Option<&str>,
    ) -> Result<Vec<(String, u64)>, RegistryError> {
        let (store, key) = (Arc::clone(&self.store), self.key(parts));
        let base = key.clone();
        let offset = after.map(|a| a.split('/').fold(key.clone(), |k, p| k.join(p)));
        let listed = self.run(parts, async move {
            match offset {
                Some(offset) => store.list_with_offset(Some(&key), &offset).try_collect::<Vec<_>>().await,
                None => store.list(Some(&key)).try_collect::<Vec<_>>().await,
            }
        })?;
        let listed = listed.map_err(|e| self.error(parts, e))?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let relative: Vec<String> = meta.location.prefix_match(&base)?.map(|p| p.as_ref().to_owned()).collect();
                Some((relative.join("/"), meta.size))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
