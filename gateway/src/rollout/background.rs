//! A named background thread that runs until its handle is dropped (then it is told to stop
//! and joined): the watcher and the controller.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A running background thread; dropping it stops and joins the thread.
pub struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Tells a background loop whether it should keep going.
#[derive(Clone)]
pub struct Running(Arc<AtomicBool>);

impl Running {
    /// False once the handle was dropped.
    pub fn keep_going(&self) -> bool {
        !self.0.load(Ordering::SeqCst)
    }
}

impl Background {
    /// Starts `body` on a thread called `name`.
    pub fn spawn(name: &str, body: impl FnOnce(Running) + Send + 'static) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let running = Running(Arc::clone(&stop));
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || body(running))?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
