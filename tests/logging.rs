//! The `log` facade: vmap fallbacks, reroutes and a build without the engine are logged at warn
//! level once per process, however many calls see them, while the thread-local records
//! (`take_vmap_fallbacks`, `take_reroutes`) still report every call.
use std::sync::Mutex;

use tch::{Device, Kind, Tensor};
use tch_jacobian::{jacobian_with, native, second_order, JacobianOptions, Result, Strategy};

/// A logger that keeps every record's level and message.
struct Capture;

static LOGGED: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let message = record.args().to_string();
        LOGGED.lock().unwrap().push((record.level(), message));
    }
    fn flush(&self) {}
}

fn install() {
    static CAPTURE: Capture = Capture;
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Trace);
}

/// The warnings logged so far that contain `needle`.
fn warnings(needle: &str) -> Vec<String> {
    LOGGED
        .lock()
        .unwrap()
        .iter()
        .filter(|(level, m)| *level == log::Level::Warn && m.contains(needle))
        .map(|(_, m)| m.clone())
        .collect()
}

#[test]
#[cfg_attr(not(feature = "native"), ignore = "needs the native engine")]
fn a_vmap_fallback_is_logged_once() -> Result<()> {
    install();
    assert!(native::available(), "{}", native::build_status());
    // cummax's backward (aten::cummaxmin_backward) has no batching rule in libtorch 2.11.
    let opts = JacobianOptions::default().strategy(Strategy::Batched { chunk_size: None });
    for _ in 0..2 {
        let x = Tensor::randn([5, 3], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        jacobian_with(&x.cummax(0).0, &[&x], &opts)?;
        // The thread's record still lists it after every call.
        assert_eq!(native::take_vmap_fallbacks(), ["aten::cummaxmin_backward"]);
    }
    let logged = warnings("aten::cummaxmin_backward");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].contains("has no vmap batching rule"),
        "{logged:?}"
    );
    Ok(())
}

#[test]
#[cfg_attr(not(feature = "native"), ignore = "needs the native engine")]
fn a_reroute_is_logged_once() -> Result<()> {
    install();
    assert!(native::available(), "{}", native::build_status());
    // A batched pass that libtorch refuses (masked_select's batching rule with a mask that
    // broadcasts x): Auto redoes it by the row loop, and says so.
    let k = (Kind::Double, Device::Cpu);
    for _ in 0..2 {
        let x = Tensor::randn([3], k).set_requires_grad(true);
        let mask = Tensor::from_slice(&[true, false, true, false, true, true]).reshape([2, 3]);
        let y = x.masked_select(&mask);
        jacobian_with(&y, &[&x], &JacobianOptions::default())?;
        let reroutes = second_order::take_reroutes();
        assert_eq!(reroutes.len(), 1, "{reroutes:?}");
    }
    let logged = warnings("row-loop instead of");
    assert_eq!(logged.len(), 1, "{logged:?}");
    Ok(())
}

#[test]
fn a_missing_engine_is_logged_once() -> Result<()> {
    install();
    for _ in 0..2 {
        let x = Tensor::randn([4], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        jacobian_with(&x.tanh(), &[&x], &JacobianOptions::default())?;
    }
    let logged = warnings("native engine is not in this build");
    let expected = usize::from(!native::available());
    assert_eq!(logged.len(), expected, "{logged:?}");
    Ok(())
}
