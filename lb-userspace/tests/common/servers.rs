//! Server threads of the test pods, all watching one stop flag.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// Drop raises the stop flag and joins every thread.
#[derive(Default)]
pub struct ServerThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerThreads {
    /// Runs `serve` on a thread of its own until the stop flag it is handed
    /// goes up.
    pub fn spawn(&mut self, serve: impl FnOnce(&AtomicBool) + Send + 'static) {
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || serve(&stop)));
    }
}

impl Drop for ServerThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for server in self.threads.drain(..) {
            // A panicking server already printed why; the test's own
            // assertions say what it meant for the traffic.
            let _ = server.join();
        }
    }
}
