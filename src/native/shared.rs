//! What the rooms share: the strings the C++ side hands back (`tchj_free_string`, defined in
//! `csrc/graph_scan.cpp`, frees them), its messages turned into [`Error`]s, the record of the ops
//! that took the vmap fallback, and the warnings logged once per process.
use std::cell::RefCell;

use crate::error::Error;

thread_local! {
    pub(super) static FALLBACKS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

#[cfg_attr(not(tch_jacobian_native), allow(dead_code))]
pub(super) fn record_fallbacks(ops: &str) {
    FALLBACKS.with(|f| {
        let mut f = f.borrow_mut();
        for op in ops.lines() {
            warn_once(&format!(
                "{op} has no vmap batching rule: libtorch looped over this op (exact, slower)"
            ));
            if !f.iter().any(|o| o == op) {
                f.push(op.to_string());
            }
        }
    });
}

/// How many distinct warnings [`warn_once`] remembers (then it says so once, and logs no more).
pub(crate) const WARN_ONCE_LIMIT: usize = 256;

/// Logs `message` at warn level (the `log` facade) the first time this process sees this
/// message; later calls with the same message log nothing. The set of messages seen is bounded
/// ([`WARN_ONCE_LIMIT`]): past it, one last warning says that further ones are not logged.
pub(crate) fn warn_once(message: &str) {
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(message) {
        return;
    }
    if seen.len() >= WARN_ONCE_LIMIT {
        if seen.insert(String::new()) {
            log::warn!(
                "tch-jacobian has logged {WARN_ONCE_LIMIT} distinct warnings; further ones are not logged"
            );
        }
        return;
    }
    seen.insert(message.to_string());
    log::warn!("{message}");
}

/// Logs, once per process, that the engine is not built, the first time `Strategy::Auto` would
/// have used it.
#[cfg_attr(tch_jacobian_native, allow(dead_code))]
pub(crate) fn warn_missing_engine() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::warn!(
            "the native engine is not in this build ({}): Strategy::Auto runs the row loop or the \
             replicated strategies instead of one batched pass (slower); build with the default \
             feature `native` for it",
            super::build_status()
        )
    });
}

#[cfg(tch_jacobian_core)]
extern "C" {
    fn tchj_free_string(s: *mut std::ffi::c_char);
}

/// Takes ownership of a malloc'd C string from the C++ side (`None` for a null pointer).
///
/// # Safety
/// `s` is null or a NUL-terminated string from `malloc` that nobody else frees.
#[cfg(tch_jacobian_core)]
pub(crate) unsafe fn take_string(s: *mut std::ffi::c_char) -> Option<String> {
    if s.is_null() {
        return None;
    }
    // SAFETY: `s` is non-null and NUL-terminated (the caller's contract).
    let text = unsafe { std::ffi::CStr::from_ptr(s) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `s` came from `malloc` on the C++ side and is freed once, here.
    unsafe { tchj_free_string(s) };
    Some(text)
}

/// The error for `Strategy::Batched` in a build without the engine.
pub(crate) fn unavailable() -> Error {
    Error::InvalidArgument(format!(
        "Strategy::Batched needs the native batched engine, which this build lacks ({}); use Strategy::Auto or another strategy",
        super::build_status()
    ))
}

/// libtorch's words for an op without a batching rule when the vmap fallback is off.
#[cfg_attr(not(tch_jacobian_native), allow(dead_code))]
pub(super) const FALLBACK_DISABLED: &str = " hit the vmap fallback which is currently disabled";

/// libtorch's message, with the disabled-fallback case turned into [`Error::NoBatchingRule`].
#[cfg_attr(not(tch_jacobian_native), allow(dead_code))]
pub(super) fn engine_error(msg: String) -> Error {
    match msg.find(FALLBACK_DISABLED) {
        Some(end) => Error::NoBatchingRule {
            op: msg[..end]
                .rsplit(|c: char| c.is_whitespace() || c == '"' || c == '(')
                .next()
                .unwrap_or("")
                .to_string(),
        },
        None => Error::from(tch::TchError::Torch(msg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_fallback_names_the_op() {
        let e = engine_error(
            "aten::_foo_backward hit the vmap fallback which is currently disabled".into(),
        );
        assert!(matches!(e, Error::NoBatchingRule { ref op } if op == "aten::_foo_backward"));
        let other = engine_error("shape mismatch".into());
        assert!(matches!(other, Error::Torch(_)));
    }

    #[test]
    fn fallbacks_are_recorded_once_and_taken() {
        record_fallbacks("aten::a\naten::b");
        record_fallbacks("aten::a");
        assert_eq!(super::super::take_vmap_fallbacks(), ["aten::a", "aten::b"]);
        assert!(super::super::take_vmap_fallbacks().is_empty());
    }
}
