//! The peak resident memory of one call, for the examples that print it (`fit_mlp`, `bilevel`):
//! `VmHWM` reset to the current resident memory by writing "5" to `/proc/self/clear_refs`
//! (Linux ≥ 4.0), read from `/proc/self/status` after the call. Included with
//! `#[path = "common/peak_memory.rs"] mod peak_memory;`.

/// Resident memory around one call, KiB.
pub struct Peak {
    /// `VmRSS` just before the call.
    pub rss_before: u64,
    /// `VmHWM` after it: the most resident memory during the call.
    pub hwm: u64,
}

impl Peak {
    /// KiB the call raised the resident memory above that just before it.
    pub fn above(&self) -> u64 {
        self.hwm.saturating_sub(self.rss_before)
    }
}

/// Runs `f`, with its [`Peak`]; `None` where `/proc/self` cannot be read or reset (not Linux).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Option<Peak>) {
    let before = status_kib("VmRSS:");
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let out = f();
    let peak = match (reset, before, status_kib("VmHWM:")) {
        (true, Some(rss_before), Some(hwm)) => Some(Peak { rss_before, hwm }),
        _ => None,
    };
    (out, peak)
}

/// A `kB` field of `/proc/self/status`, such as `VmRSS:` or `VmHWM:`.
fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
