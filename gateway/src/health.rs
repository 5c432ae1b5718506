//! Health of the background threads (tap, watcher, controller, inference): each runs its items
//! under [`guard`], so a panic in one item is logged, counted and skipped instead of killing
//! the thread. A component that panicked in the last [`DEGRADED_FOR`] is reported degraded in
//! `/v2/health/ready` and in `flywheel_component_degraded`.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::metrics::{COMPONENT_DEGRADED, COMPONENT_PANICS};

/// How long a component stays degraded after its last panic.
pub const DEGRADED_FOR: Duration = Duration::from_secs(600);

/// What `/v2/health/ready` says about one degraded component.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Degraded {
    pub component: &'static str,
    pub panics: u64,
    /// The last panic's message.
    pub last_error: String,
    /// Seconds since the last panic.
    pub seconds_ago: u64,
}

struct State {
    panics: u64,
    last: Instant,
    last_error: String,
}

fn states() -> &'static Mutex<BTreeMap<&'static str, State>> {
    static STATES: OnceLock<Mutex<BTreeMap<&'static str, State>>> = OnceLock::new();
    STATES.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Runs one item of `component`'s work; a panic is recorded and becomes `None`.
pub fn guard<T>(component: &'static str, work: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(value) => Some(value),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            record_panic(component, &message);
            None
        }
    }
}

/// Records a panic of `component` (logged, counted, degraded for a while).
pub fn record_panic(component: &'static str, message: &str) {
    tracing::error!(
        component,
        error = message,
        "background work panicked; the item was skipped and the thread goes on"
    );
    metrics::counter!(COMPONENT_PANICS, "component" => component).increment(1);
    metrics::gauge!(COMPONENT_DEGRADED, "component" => component).set(1.0);
    let mut states = states().lock().unwrap_or_else(|p| p.into_inner());
    let state =
        states.entry(component).or_insert_with(|| State { panics: 0, last: Instant::now(), last_error: String::new() });
    state.panics += 1;
    state.last = Instant::now();
    state.last_error = message.to_owned();
}

/// Components that panicked within [`DEGRADED_FOR`].
pub fn degraded() -> Vec<Degraded> {
    let states = states().lock().unwrap_or_else(|p| p.into_inner());
    states
        .iter()
        .filter_map(|(component, s)| {
            let ago = s.last.elapsed();
            if ago > DEGRADED_FOR {
                metrics::gauge!(COMPONENT_DEGRADED, "component" => *component).set(0.0);
                return None;
            }
            Some(Degraded { component, panics: s.panics, last_error: s.last_error.clone(), seconds_ago: ago.as_secs() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_item_is_skipped_and_its_component_reported_degraded() {
        assert_eq!(guard("test-ok", || 7), Some(7));
        let skipped: Option<()> = guard("test-panics", || panic!("bad profile: proportions is empty"));
        assert_eq!(skipped, None);
        assert_eq!(guard("test-panics", || 1), Some(1), "the next item runs");
        let found = degraded().into_iter().find(|d| d.component == "test-panics").unwrap();
        assert_eq!(found.panics, 1);
        assert!(found.last_error.contains("proportions is empty"), "{found:?}");
        assert!(degraded().iter().all(|d| d.component != "test-ok"));
    }
}
