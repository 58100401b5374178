//! Background sampling of the server's RSS (with `--pid`) and of our own open sockets
//! (with `--connections`), with a peak per scenario.
//!
//! A plain thread, not a tokio task: a blocked /proc read must never delay a timed response, and
//! the sampler must keep ticking while the runtime's workers are saturated.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::procfs;

#[derive(Default)]
struct State {
    pids: Vec<u32>,
    last_scan: Option<Instant>,
    phase: String,
    samples: u64,
    peak_kb: u64,
    phase_peak_kb: BTreeMap<String, u64>,
    sockets_peak: usize,
    phase_sockets_peak: BTreeMap<String, usize>,
}

pub struct Sampler {
    pid: Option<u32>,
    sockets: bool,
    before_kb: Option<u64>,
    state: Mutex<State>,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Sampler {
    /// None when there is nothing to sample. With a pid that /proc does not show, RSS sampling is
    /// off (logged) but socket counting may still run.
    pub fn start(pid: Option<u32>, sockets: bool, interval: Duration) -> Option<Arc<Sampler>> {
        let pid = pid.filter(|&p| {
            let ok = procfs::vm_rss_kb(p).is_some();
            if !ok {
                crate::log!("warning: pid {p} not readable in /proc; RSS sampling disabled");
            }
            ok
        });
        if pid.is_none() && !sockets {
            return None;
        }
        // The idle figure is the one before we sent anything.
        let pids = pid.map(procfs::process_tree).unwrap_or_default();
        let before_kb = pid.and_then(|_| sum_rss(&pids));
        let s = Arc::new(Sampler {
            pid,
            sockets,
            before_kb,
            state: Mutex::new(State {
                pids,
                last_scan: Some(Instant::now()),
                phase: "setup".into(),
                ..State::default()
            }),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let worker = Arc::clone(&s);
        let handle = std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                while !worker.stop.load(Ordering::Relaxed) {
                    worker.sample();
                    std::thread::sleep(interval);
                }
            })
            .expect("spawn sampler thread");
        *s.thread.lock().unwrap() = Some(handle);
        Some(s)
    }

    pub fn has_rss(&self) -> bool {
        self.pid.is_some()
    }

    /// Current RSS of the server and its descendants, in KiB.
    pub fn rss_kb(&self) -> Option<u64> {
        let pid = self.pid?;
        let pids = {
            let mut st = self.state.lock().unwrap();
            // Rescanning all of /proc is the costly part; children rarely change.
            if st
                .last_scan
                .is_none_or(|t| t.elapsed() > Duration::from_secs(2))
            {
                st.pids = procfs::process_tree(pid);
                st.last_scan = Some(Instant::now());
            }
            st.pids.clone()
        };
        sum_rss(&pids)
    }

    pub fn sample(&self) -> Option<u64> {
        let rss = self.rss_kb();
        let sockets = self.sockets.then(procfs::own_socket_count);
        let mut st = self.state.lock().unwrap();
        st.samples += 1;
        let phase = st.phase.clone();
        if let Some(v) = rss {
            st.peak_kb = st.peak_kb.max(v);
            let e = st.phase_peak_kb.entry(phase.clone()).or_default();
            *e = (*e).max(v);
        }
        if let Some(n) = sockets {
            st.sockets_peak = st.sockets_peak.max(n);
            let e = st.phase_sockets_peak.entry(phase).or_default();
            *e = (*e).max(n);
        }
        rss
    }

    pub fn set_phase(&self, name: &str) {
        self.state.lock().unwrap().phase = name.to_owned();
    }

    /// The peaks of one scenario, for its result object.
    pub fn phase_report(&self, name: &str) -> Value {
        self.sample();
        let st = self.state.lock().unwrap();
        let mut out = serde_json::Map::new();
        if let Some(v) = st.phase_peak_kb.get(name) {
            out.insert("rss_peak_kb".into(), json!(v));
        }
        if let Some(v) = st.phase_sockets_peak.get(name) {
            out.insert("client_sockets_peak".into(), json!(v));
        }
        Value::Object(out)
    }

    /// Stops the thread and returns the run's summary.
    pub fn finish(&self) -> Value {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.thread.lock().unwrap().take() {
            let _ = h.join();
        }
        let after = self.sample();
        let st = self.state.lock().unwrap();
        let mut out = json!({ "samples": st.samples });
        if let Some(pid) = self.pid {
            out["rss"] = json!({
                "pid": pid,
                "pids_sampled": st.pids.len(),
                "before_kb": self.before_kb,
                "peak_kb": st.peak_kb,
                "after_kb": after,
                "phase_peak_kb": st.phase_peak_kb,
            });
        }
        if self.sockets {
            out["client_sockets"] = json!({
                "peak": st.sockets_peak,
                "phase_peak": st.phase_sockets_peak,
            });
        }
        out
    }
}

/// None when every process of the tree is gone.
fn sum_rss(pids: &[u32]) -> Option<u64> {
    let vals: Vec<u64> = pids.iter().filter_map(|&p| procfs::vm_rss_kb(p)).collect();
    (!vals.is_empty()).then(|| vals.iter().sum())
}
