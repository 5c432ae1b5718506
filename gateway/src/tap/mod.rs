//! The tap: after a response is built, the served request goes into a bounded, lossy channel
//! (a full channel drops and counts; serving never waits). One thread consumes it: sampled
//! rows go to Parquet part files ([`files`], [`columns`]), every tapped row feeds the drift
//! monitor, and labels from the feedback API ([`labels`]) land in their own Parquet files.
//!
//! Sampling is deterministic by request id: the same id is sampled or not on every replica.

pub mod columns;
pub mod files;
pub mod journal;
pub mod labels;
pub mod recent;
pub mod relay;
pub mod store_ack;
pub mod upload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select};
use flywheel_registry::{Registry, Remote, samples};
use serde::Deserialize;
use tokio::sync::oneshot;

use self::columns::{Plan, Rows};
use self::files::{PartFile, Rotation, clean_leftovers, date_of};
use self::journal::Journal;
use self::labels::{Label, LabelIndex, LabelRows};
use crate::drift::{DriftMonitor, DriftSettings};
use crate::health;
use crate::metrics::{LABELS, SAMPLE_FILES, SAMPLE_ROWS, SAMPLE_WRITE_ERRORS, TAP_DROPPED};
use crate::model::table::fnv1a;
use crate::protocol::Tensor;

/// `[sampling]` settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingSettings {
    /// Folder for `samples/` and `labels/`; default: `samples` beside the model repository.
    pub dir: Option<PathBuf>,
    /// Share of requests written to Parquet (per-model `sample_rate` overrides it).
    pub rate: f64,
    /// Always keep canary requests.
    pub keep_canary: bool,
    /// Always keep failed requests.
    pub keep_errors: bool,
    /// Always keep predictions closer to 0.5 than this (0 disables).
    pub keep_uncertain_within: f64,
    /// Served requests waiting for the tap thread; beyond it they are dropped and counted.
    pub channel_capacity: usize,
    pub max_rows_per_file: usize,
    pub max_file_bytes: usize,
    pub max_file_age_ms: u64,
    pub row_group_rows: usize,
    /// How long a tapped prediction waits for its label to score live quality.
    pub label_window_ms: u64,
    /// Object store URL finalized part files are copied to (see [`upload`]); default
    /// `<registry URL>/.data` when the registry is in object storage, none otherwise;
    /// `"none"` turns it off.
    pub store_url: Option<String>,
    /// How often the sample folder is scanned for part files to upload.
    pub upload_interval_ms: u64,
    /// With a sample store: `"store"` (default) answers `/feedback` once the labels are in the
    /// store as well as fsynced in the local journal ([`store_ack`]), so losing a replica's disk
    /// loses no acknowledged label; `"disk"` answers after the local fsync only (the store gets
    /// them with the label file, up to `max_file_age_ms` plus an upload later).
    pub label_ack: LabelAck,
}

/// When `/feedback` answers (see [`SamplingSettings::label_ack`]).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LabelAck {
    #[default]
    Store,
    Disk,
}

impl Default for SamplingSettings {
    fn default() -> Self {
        Self {
            dir: None,
            rate: 0.0,
            keep_canary: false,
            keep_errors: false,
            keep_uncertain_within: 0.0,
            channel_capacity: 8192,
            max_rows_per_file: 1_000_000,
            max_file_bytes: 128 << 20,
            max_file_age_ms: 60_000,
            row_group_rows: 65_536,
            label_window_ms: 3_600_000,
            store_url: None,
            upload_interval_ms: 2_000,
            label_ack: LabelAck::Store,
        }
    }
}

impl SamplingSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(format!("sampling.rate must be in 0..=1, given {}", self.rate));
        }
        let range =
            |key: &str, value: u64, lo: u64, hi: u64| crate::config::check_range("sampling", key, value, lo, hi);
        // The channel is preallocated: its bound is memory.
        range("channel_capacity", self.channel_capacity as u64, 1, 1_000_000)?;
        range("max_rows_per_file", self.max_rows_per_file as u64, 1, 100_000_000)?;
        range("max_file_bytes", self.max_file_bytes as u64, 4096, 1 << 40)?;
        range("max_file_age_ms", self.max_file_age_ms, 100, 86_400_000)?;
        range("row_group_rows", self.row_group_rows as u64, 1, 10_000_000)?;
        range("label_window_ms", self.label_window_ms, 1_000, 7 * 86_400_000)?;
        range("upload_interval_ms", self.upload_interval_ms, 100, 3_600_000)?;
        if let Some(url) = self.store_url.as_deref().filter(|u| *u != "none") {
            flywheel_registry::Remote::shared(url).map_err(|e| format!("sampling.store_url: {e}"))?;
        }
        if !(0.0..=0.5).contains(&self.keep_uncertain_within) {
            return Err(format!(
                "sampling.keep_uncertain_within must be in 0..=0.5 (distance from 0.5), given {}",
                self.keep_uncertain_within
            ));
        }
        Ok(())
    }
}

/// One answered request as the tap sees it.
pub struct Served {
    /// The gateway's unique id of the request (the label join key).
    pub request_id: String,
    /// The client's own `x-request-id`, if it sent one.
    pub client_request_id: Option<String>,
    pub time: SystemTime,
    pub model: String,
    pub version: u64,
    pub arm: &'static str,
    pub status: u16,
    pub latency: Duration,
    /// Inputs in the model's order (empty when the request failed before they were known).
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
    /// Write to Parquet.
    pub sampled: bool,
    /// The drift detectors take its rows (`drift.rate`, within `drift.max_rows_per_second`).
    pub drift: bool,
    /// The answer's score per row ([`crate::model::score::ScoreSpec`]) and, for a classifier,
    /// its decision threshold.
    pub scores: Option<Vec<f64>>,
    pub threshold: Option<f64>,
    /// The route evidence (this request's step) and the arm that answered, for a routed
    /// request: a label joined to it later counts in that arm's labelled quality.
    pub route: labels::RouteArm,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("request_id", &self.request_id)
            .field("model", &self.model)
            .field("version", &self.version)
            .field("arm", &self.arm)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Served {
    /// Rows this request carried (1 when unknown).
    pub fn rows(&self) -> usize {
        self.inputs.first().and_then(|t| t.shape.first()).map_or(1, |r| (*r).max(1) as usize)
    }
}

/// Where a request id falls in [0, 1): the same on every replica and restart.
pub fn id_fraction(request_id: &str) -> f64 {
    (fnv1a(request_id.as_bytes()) % 1_000_000) as f64 / 1_000_000.0
}

/// Labels and their answer channel.
type LabelMsg = (String, Vec<Label>, oneshot::Sender<Result<usize, String>>);

/// The tap thread's other inputs: the stop signal, labels relayed by other replicas, and label
/// groups back from the sample store.
struct Channels {
    stop: Receiver<()>,
    relayed: Receiver<(String, Vec<Label>)>,
    acked: Receiver<store_ack::Acked>,
}

/// The handle the server holds: cheap sends, never blocking.
pub struct Tap {
    served: Sender<Box<Served>>,
    labels: Sender<LabelMsg>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    stop: Sender<()>,
    /// In a fleet: the thread fetching other replicas' relayed labels.
    relay_in: Mutex<Option<crate::rollout::background::Background>>,
    pub sampling: SamplingSettings,
    pub drift: DriftSettings,
}

impl Tap {
    /// Starts the tap thread writing under `dir` (leftover temporary files are removed first).
    /// `replica` is the fleet name (labels are relayed through the registry store with one);
    /// `label_store` the sample store labels are acknowledged from (with this process's name).
    pub fn start(
        sampling: SamplingSettings,
        drift: DriftSettings,
        dir: PathBuf,
        registry: Option<Registry>,
        replica: Option<String>,
        label_store: Option<(Arc<Remote>, String)>,
    ) -> std::io::Result<Self> {
        let removed = clean_leftovers(&dir);
        if removed > 0 {
            tracing::warn!(removed, dir = %dir.display(), "removed unfinished part files left by a crash");
        }
        // Labels acknowledged before a crash are in the journal: into Parquet before serving.
        let replayed = journal::replay(&dir);
        if replayed.journals > 0 {
            tracing::warn!(
                labels = replayed.labels,
                journals = replayed.journals,
                torn_lines = replayed.skipped_lines,
                "replayed acknowledged labels left in the journal by a crash"
            );
        }
        let (served_tx, served_rx) = bounded(sampling.channel_capacity);
        let (labels_tx, labels_rx) = bounded(1024);
        let (stop_tx, stop_rx) = bounded(1);
        let fleet = registry.as_ref().and_then(|r| Some((Arc::clone(r.remote()?), r.root().to_path_buf())));
        let drift_monitor = DriftMonitor::new(drift.clone(), registry).with_replica(replica.clone());
        let mut worker = Worker::new(&sampling, dir, drift_monitor);
        let mut channels =
            Channels { stop: stop_rx, relayed: crossbeam_channel::never(), acked: crossbeam_channel::never() };
        if let Some((remote, name)) = label_store.filter(|_| sampling.label_ack == LabelAck::Store) {
            let (ack, done) = store_ack::StoreAck::start(remote, name)?;
            worker.store_ack = Some(ack);
            channels.acked = done;
        }
        let mut relay_in = None;
        if let (Some((remote, root)), Some(replica)) = (fleet, replica)
            && let Some(writer) = crate::rollout::store_writer::StoreWriter::start(&remote)
        {
            let (relayed_tx, relayed_rx) = bounded(1024);
            worker.relay = Some(relay::RelayOut::new(writer, replica.clone()));
            relay_in = Some(relay::spawn_receiver(remote, root, replica, relayed_tx)?);
            channels.relayed = relayed_rx;
        }
        let thread = std::thread::Builder::new().name("tap".into()).spawn(move || {
            // Items are guarded one by one; should the loop itself panic, it is counted and
            // entered again with the same state (files, buffers, detectors), never left dead.
            while health::guard("tap", || worker.run(&served_rx, &labels_rx, &channels)).is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
        })?;
        Ok(Self {
            served: served_tx,
            labels: labels_tx,
            thread: Mutex::new(Some(thread)),
            stop: stop_tx,
            relay_in: Mutex::new(relay_in),
            sampling,
            drift,
        })
    }

    /// Offers a served request; a full channel drops it (counted).
    pub fn offer(&self, served: Served) {
        if let Err(TrySendError::Full(s) | TrySendError::Disconnected(s)) = self.served.try_send(Box::new(served)) {
            metrics::counter!(TAP_DROPPED, "model" => s.model.clone()).increment(1);
        }
    }

    /// Hands labels to the tap thread; resolves once they are in the journal on disk (fsynced).
    pub async fn feedback(&self, model: &str, labels: Vec<Label>) -> Result<usize, String> {
        let (tx, rx) = oneshot::channel();
        self.labels
            .try_send((model.to_owned(), labels, tx))
            .map_err(|_| "the label writer is busy; retry".to_owned())?;
        rx.await.map_err(|_| "the label writer stopped".to_owned())?
    }

    /// Stops the thread after it has written and finalized everything it holds.
    pub fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send_timeout((), grace);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        // The tap is done with relayed labels: stop fetching them.
        drop(self.relay_in.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// Buffered rows and the open file of one model (samples or labels).
struct Sink<R> {
    rows: R,
    file: Option<PartFile>,
    /// Rows taken, for samples (`flywheel_sample_rows_total` of the model, resolved once).
    counter: Option<metrics::Counter>,
}

/// The tap thread's state.
struct Worker {
    dir: PathBuf,
    rotation: Rotation,
    samples: HashMap<String, Sink<Rows>>,
    labels: HashMap<String, Sink<LabelRows>>,
    journal: Journal,
    index: LabelIndex,
    drift: DriftMonitor,
    /// Finished sample files per model with their finish time, for drift events.
    finished: HashMap<String, Vec<(SystemTime, String)>>,
    /// In a fleet: where labels this replica stored but could not join are relayed.
    relay: Option<relay::RelayOut>,
    /// With a sample store: the thread putting labels there before they are acknowledged.
    store_ack: Option<store_ack::StoreAck>,
    /// Per model, the store's journal objects of labels buffered since its last label file.
    journal_objects: HashMap<String, Vec<String>>,
}

/// Rows buffered before they are handed to the Parquet writer.
const BATCH_ROWS: usize = 1024;
/// How often the tap takes the served requests queued for it (at 100k requests/s, 500 of the
/// channel's `sampling.channel_capacity`, default 8192).
const SERVED_TICK: Duration = Duration::from_millis(5);
/// Served requests taken at once before labels and the stop signal are looked at.
const SERVED_BATCH: usize = 1024;
/// How long a stopping tap waits for label groups still at the sample store (the store's own
/// retries take up to 15 s).
const STORE_ACK_GRACE: Duration = Duration::from_secs(20);

impl Worker {
    fn new(sampling: &SamplingSettings, dir: PathBuf, drift: DriftMonitor) -> Self {
        Self {
            journal: Journal::new(&dir),
            dir,
            rotation: Rotation {
                max_rows: sampling.max_rows_per_file,
                max_bytes: sampling.max_file_bytes,
                max_age: Duration::from_millis(sampling.max_file_age_ms),
                row_group_rows: sampling.row_group_rows,
            },
            samples: HashMap::new(),
            labels: HashMap::new(),
            index: LabelIndex::new(Duration::from_millis(sampling.label_window_ms), 200_000),
            drift,
            finished: HashMap::new(),
            relay: None,
            store_ack: None,
            journal_objects: HashMap::new(),
        }
    }

    fn run(&mut self, served: &Receiver<Box<Served>>, labels: &Receiver<LabelMsg>, channels: &Channels) {
        let (stop, relayed, acked) = (&channels.stop, &channels.relayed, &channels.acked);
        let mut last_check = Instant::now();
        // Served requests are taken on a tick, never waited on: a request's sender then
        // never wakes this thread (a futex call and a context switch on a serving core
        // per request: 100% sampling cost over a third of c=64's requests/s).
        while let Ok(more) = self.take_queued(served) {
            // Behind (a full batch taken and more waiting): labels and stops are looked at,
            // then it goes straight on.
            let tick = if more { Duration::ZERO } else { SERVED_TICK };
            select! {
                // Labels join the predictions served before them: those are taken first.
                recv(relayed) -> msg => if let Ok((model, batch)) = msg {
                    let _ = self.take_queued(served);
                    health::guard("tap", || for label in &batch {
                        if let Some((model, version, mistake)) = self.index.join_relayed(&model, label) {
                            self.drift.observe_outcome(&model, version, mistake);
                        }
                    });
                },
                recv(labels) -> msg => if let Ok(first) = msg {
                    let _ = self.take_queued(served);
                    // Group commit: every label message waiting now shares one fsync.
                    let mut group = vec![first];
                    group.extend(labels.try_iter().take(255));
                    health::guard("tap", || self.commit_labels(group));
                },
                recv(acked) -> msg => if let Ok(round) = msg {
                    let _ = self.take_queued(served);
                    health::guard("tap", || self.labels_acked(round));
                },
                recv(stop) -> _ => break,
                default(tick) => {},
            }
            if last_check.elapsed() >= Duration::from_millis(200) {
                health::guard("tap", || self.rotate_due());
                if let Some(relay) = &mut self.relay {
                    relay.flush();
                }
                last_check = Instant::now();
            }
        }
        // Drain what is already queued, then finalize every file.
        while let Ok(s) = served.try_recv() {
            health::guard("tap", || self.take_served(*s));
        }
        let waiting: Vec<LabelMsg> = labels.try_iter().collect();
        if !waiting.is_empty() {
            health::guard("tap", || self.commit_labels(waiting));
        }
        // Groups still at the store are answered before the files are finalized.
        let until = Instant::now() + STORE_ACK_GRACE;
        while self.store_ack.as_ref().is_some_and(|a| a.in_flight > 0) {
            match acked.recv_deadline(until) {
                Ok(round) => {
                    health::guard("tap", || self.labels_acked(round));
                }
                Err(_) => break,
            }
        }
        health::guard("tap", || self.finish_all());
        if let Some(relay) = &mut self.relay {
            relay.flush();
        }
    }

    /// Takes the served requests queued now, at most [`SERVED_BATCH`] (so labels and the stop
    /// signal are never starved by a tap that falls behind), each under a guard: a panic (a bad
    /// profile, a bug) skips that item, is counted, and the thread goes on sampling, labelling
    /// and detecting. `Ok(true)` when more are waiting; `Err` once every sender is gone.
    fn take_queued(&mut self, served: &Receiver<Box<Served>>) -> Result<bool, ()> {
        for _ in 0..SERVED_BATCH {
            match served.try_recv() {
                Ok(s) => {
                    health::guard("tap", || self.take_served(*s));
                }
                Err(crossbeam_channel::TryRecvError::Empty) => return Ok(false),
                Err(crossbeam_channel::TryRecvError::Disconnected) => return Err(()),
            }
        }
        Ok(!served.is_empty())
    }

    fn take_served(&mut self, served: Served) {
        // Only a classifier's answers are scored against labels (AUC, log loss, mistakes).
        if let (200, false, Some(scores), Some(threshold)) =
            (served.status, served.arm == "shadow", served.scores.as_deref(), served.threshold)
        {
            let route = served.route.clone();
            let key = (served.model.as_str(), served.version, threshold);
            self.index.remember(&served.request_id, key, (served.arm, route), scores);
        }
        let finished = &self.finished;
        self.drift.observe(&served, |model, since| {
            finished.get(model).map_or_else(Vec::new, |files| {
                files.iter().filter(|(t, _)| *t >= since).map(|(_, f)| f.clone()).collect()
            })
        });
        if !served.sampled {
            return;
        }
        let model = served.model.as_str();
        match self.samples.get(model) {
            None => {
                let counter = Some(metrics::counter!(SAMPLE_ROWS, "model" => model.to_owned()));
                let sink = Sink { rows: Rows::new(Plan::for_served(&served)), file: None, counter };
                self.samples.insert(model.to_owned(), sink);
            }
            Some(sink) if !sink.rows.plan().fits(&served) => {
                // A new shape (another version's outputs): close the file, start one with the
                // new plan.
                self.flush_samples(model, true);
                if let Some(sink) = self.samples.get_mut(model) {
                    sink.rows = Rows::new(Plan::for_served(&served));
                }
            }
            Some(_) => {}
        }
        let Some(sink) = self.samples.get_mut(model) else { return };
        sink.rows.push(&served);
        if let Some(counter) = &sink.counter {
            counter.increment(served.rows() as u64);
        }
        if sink.rows.len() >= BATCH_ROWS.min(self.rotation.max_rows) {
            self.flush_samples(model, false);
        }
    }

    /// Takes a group of label messages (repeats of stored labels dropped): with a sample store
    /// they go there first ([`store_ack`]) and are stored when they come back; otherwise they
    /// are stored now.
    fn commit_labels(&mut self, group: Vec<LabelMsg>) {
        let group = self.without_repeats(group);
        let Some(ack) = &mut self.store_ack else {
            return self.store_labels(group, SystemTime::now(), Vec::new());
        };
        if let Err(refused) = ack.send(group) {
            for (model, _, reply) in refused {
                metrics::counter!(SAMPLE_WRITE_ERRORS, "model" => model, "kind" => "label_store").increment(1);
                let _ = reply.send(Err("the label store writer is busy; retry".to_owned()));
            }
        }
    }

    /// A round back from the sample store: stored, or refused with the store's error.
    fn labels_acked(&mut self, round: store_ack::Acked) {
        if let Some(ack) = &mut self.store_ack {
            ack.in_flight = ack.in_flight.saturating_sub(round.sends);
        }
        match round.result {
            Ok(objects) => self.store_labels(round.group, round.at, objects),
            Err(e) => {
                tracing::error!(error = %e, "labels not written to the sample store; they were refused");
                for (model, _, reply) in round.group {
                    metrics::counter!(SAMPLE_WRITE_ERRORS, "model" => model, "kind" => "label_store").increment(1);
                    let _ = reply.send(Err(format!("labels could not be written to the sample store ({e}); retry")));
                }
            }
        }
    }

    /// Each message's labels less those already stored (and repeats within the message).
    fn without_repeats(&self, group: Vec<LabelMsg>) -> Vec<LabelMsg> {
        let mut accepted: Vec<LabelMsg> = Vec::new();
        for (model, batch, reply) in group {
            let mut here = std::collections::HashSet::new();
            let (new, repeats): (Vec<Label>, Vec<Label>) = batch
                .into_iter()
                .partition(|l| !self.index.is_repeat(l) && here.insert((l.id.clone(), l.row, l.label.to_bits())));
            if !repeats.is_empty() {
                metrics::counter!(LABELS, "model" => model.clone(), "outcome" => "duplicate")
                    .increment(repeats.len() as u64);
            }
            accepted.push((model, new, reply));
        }
        accepted
    }

    /// Stores each message's new labels: journaled and fsynced once for the whole group, then
    /// buffered for Parquet, acknowledged, and only then recorded as seen and scored. If the
    /// journal cannot be written, nothing of the group is recorded and every sender gets the
    /// error (a retry stores them). `objects` are the store's journal objects of the group.
    fn store_labels(&mut self, group: Vec<LabelMsg>, now: SystemTime, objects: Vec<(String, String)>) {
        // A group back from the store may repeat labels stored while it was there.
        let accepted = if objects.is_empty() { group } else { self.without_repeats(group) };
        let durable = accepted
            .iter()
            .try_for_each(|(model, new, _)| self.journal.append(model, &new.iter().collect::<Vec<_>>(), now))
            .and_then(|()| self.journal.sync());
        if let Err(e) = durable {
            tracing::error!(error = %e, "label journal not written; the labels were refused");
            for (model, _, reply) in accepted {
                metrics::counter!(SAMPLE_WRITE_ERRORS, "model" => model, "kind" => "label_journal").increment(1);
                let _ = reply.send(Err(format!("labels could not be written to disk ({e}); retry")));
            }
            return;
        }
        for (model, key) in objects {
            self.journal_objects.entry(model).or_default().push(key);
        }
        for (model, new, reply) in accepted {
            let sink = self.labels.entry(model.clone()).or_insert_with(|| Sink {
                rows: LabelRows::default(),
                file: None,
                counter: None,
            });
            for label in &new {
                sink.rows.push(label, now);
            }
            // Scoring may do I/O (drift events, a webhook): after the labels are safe, before
            // the answer, so a caller that reads the quality metrics next sees its labels.
            let mut unjoined = Vec::new();
            for label in &new {
                if !self.accept_label(&model, label) {
                    unjoined.push(label.clone());
                }
            }
            // Another replica may have answered these: the fleet's store takes them there.
            if let Some(relay) = &mut self.relay {
                relay.send(&model, unjoined);
            }
            let _ = reply.send(Ok(new.len()));
        }
    }

    /// Records a stored label as seen and scores it against its prediction, if recent;
    /// returns whether it joined one.
    fn accept_label(&mut self, model: &str, label: &Label) -> bool {
        let accepted = self.index.accept(model, label);
        let joined = accepted.scored.is_some();
        if let Some((model, version, mistake)) = accepted.scored {
            self.drift.observe_outcome(&model, version, mistake);
        }
        joined
    }

    /// Writes buffered sample rows of `model`; with `close`, finalizes its file too.
    fn flush_samples(&mut self, model: &str, close: bool) {
        let (dir, rotation) = (self.dir.clone(), self.rotation.clone());
        let Some(sink) = self.samples.get_mut(model) else { return };
        let schema = sink.rows.plan().schema.clone();
        if let Ok(Some(path)) =
            write_sink(&dir, samples::SAMPLES, model, sink, schema, &rotation, close, |r| r.take(), |r| r.len())
        {
            let name = path.strip_prefix(&dir).unwrap_or(&path).display().to_string();
            self.finished.entry(model.to_owned()).or_default().push((SystemTime::now(), name));
        }
    }

    fn flush_labels(&mut self, model: &str, close: bool) {
        let (dir, rotation) = (self.dir.clone(), self.rotation.clone());
        let Some(sink) = self.labels.get_mut(model) else { return };
        match write_sink(
            &dir,
            samples::LABELS,
            model,
            sink,
            labels::schema(),
            &rotation,
            close,
            |r| r.take(),
            |r| r.len,
        ) {
            // Every journaled label of this model is now in a finished file: the store's
            // journal objects of these labels can go once the file is up there.
            Ok(Some(path)) => {
                self.journal.finalized(model);
                if let Some(objects) = self.journal_objects.remove(model) {
                    store_ack::note_covered(&path, &objects);
                }
            }
            Ok(None) => {}
            // The rows are lost from Parquet but not from the journal: keep it for replay (and
            // the store's objects for good).
            Err(()) => {
                self.journal.keep(model);
                self.journal_objects.remove(model);
            }
        }
    }

    /// Flushes buffers and closes files that reached a limit or a new day.
    fn rotate_due(&mut self) {
        let today = date_of(SystemTime::now());
        let new_day = |file: &Option<PartFile>| file.as_ref().is_some_and(|f| f.date != today);
        let sample_models: Vec<(String, bool)> =
            self.samples.iter().map(|(m, s)| (m.clone(), new_day(&s.file))).collect();
        for (model, close) in sample_models {
            self.flush_samples(&model, close);
        }
        let label_models: Vec<(String, bool)> =
            self.labels.iter().map(|(m, s)| (m.clone(), new_day(&s.file))).collect();
        for (model, close) in label_models {
            self.flush_labels(&model, close);
        }
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for files in self.finished.values_mut() {
            files.retain(|(t, _)| *t >= hour_ago);
        }
    }

    fn finish_all(&mut self) {
        let models: Vec<String> = self.samples.keys().cloned().collect();
        for model in models {
            self.flush_samples(&model, true);
        }
        let models: Vec<String> = self.labels.keys().cloned().collect();
        for model in models {
            self.flush_labels(&model, true);
        }
    }
}

/// Moves a sink's buffered rows into its part file (opening one if needed) and, with `close`
/// or when the file reached a rotation limit, finalizes the file. Returns the finished file's
/// path, if one was finished. Errors are logged and counted (`Err`); the rows involved are lost
/// from Parquet, serving is not affected.
#[allow(clippy::too_many_arguments)]
fn write_sink<R>(
    dir: &std::path::Path,
    kind: &str,
    model: &str,
    sink: &mut Sink<R>,
    schema: arrow_schema::SchemaRef,
    rotation: &Rotation,
    close: bool,
    take: impl Fn(&mut R) -> Result<arrow_array::RecordBatch, arrow_schema::ArrowError>,
    len: impl Fn(&R) -> usize,
) -> Result<Option<PathBuf>, ()> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(model, kind, error = %e, "{what}");
        metrics::counter!(SAMPLE_WRITE_ERRORS, "model" => model.to_owned(), "kind" => kind.to_owned()).increment(1);
    };
    if len(&sink.rows) > 0 {
        let batch = match take(&mut sink.rows) {
            Ok(b) => b,
            Err(e) => {
                fail("building a record batch", &e);
                return Err(());
            }
        };
        if sink.file.is_none() {
            let date = date_of(SystemTime::now());
            let folder = dir.join(samples::partition(kind, model, &date));
            match PartFile::open(&folder, schema, rotation, date) {
                Ok(f) => sink.file = Some(f),
                Err(e) => {
                    fail("opening a part file", &e);
                    return Err(());
                }
            }
        }
        if let Some(file) = sink.file.as_mut()
            && let Err(e) = file.write(&batch)
        {
            fail("writing a part file", &e);
            if let Some(f) = sink.file.take() {
                f.abandon();
            }
            return Err(());
        }
    }
    if !close && !sink.file.as_ref().is_some_and(|f| f.full(rotation)) {
        return Ok(None);
    }
    let Some(file) = sink.file.take() else { return Ok(None) };
    match file.finish() {
        Ok(path) => {
            metrics::counter!(SAMPLE_FILES, "model" => model.to_owned(), "kind" => kind.to_owned()).increment(1);
            Ok(Some(path))
        }
        Err(e) => {
            fail("finalizing a part file", &e);
            Err(())
        }
    }
}
