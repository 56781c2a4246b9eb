//! Shared test helpers: fixtures written by tests/gen-fixtures.py, and the per-device macro.
#![allow(dead_code)]

pub mod expect;
pub mod sweep;
pub mod wrong;

use tch::{Device, Kind, Tensor};
use tch_jacobian::{testing::Tolerance, JacobianOptions, Result, Strategy};

/// The repository root: `TCH_JACOBIAN_ROOT` when set (test binaries copied to another machine,
/// see scripts/gpu-run), else the crate's directory at build time.
pub fn root() -> String {
    std::env::var("TCH_JACOBIAN_ROOT").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
}

/// Which build runs: `native` (the C++ engine) or `no-engine`.
pub fn build() -> &'static str {
    if tch_jacobian::native::available() {
        "native"
    } else {
        "no-engine"
    }
}

/// The committed expected outcomes of a CI subset: `tests/expected/<name>-<build>.tsv` on the
/// CPU; on another device `<name>-<build>-<device>.tsv` when it exists, else the CPU file (a
/// difference from the CPU is then worth a look; blessing writes the device's own file).
pub fn expected_path(name: &str, device: Device) -> std::path::PathBuf {
    let dir = std::path::Path::new(&root()).join("tests/expected");
    let cpu = dir.join(format!("{name}-{}.tsv", build()));
    if device == Device::Cpu {
        return cpu;
    }
    let dev = if device.is_cuda() { "cuda" } else { "other" };
    let own = dir.join(format!("{name}-{}-{dev}.tsv", build()));
    if own.exists() || expect::blessing() || !cpu.exists() {
        own
    } else {
        cpu
    }
}

/// Loads `tests/data/<case>_<name>.npy` onto `device`.
pub fn fx(case: &str, name: &str, device: Device) -> Tensor {
    let path = format!("{}/tests/data/{case}_{name}.npy", root());
    Tensor::read_npy(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {path} ({e}); run scripts/gen-fixtures"))
        .to_device(device)
}

/// Like [`fx`], as a leaf that requires grad.
pub fn fx_var(case: &str, name: &str, device: Device) -> Tensor {
    fx(case, name, device).set_requires_grad(true)
}

/// Every strategy, with chunk sizes that split the small fixtures into several passes; the
/// batched ones only when the native engine is built (`--no-default-features` builds run the
/// rest).
pub fn strategies() -> Vec<Strategy> {
    let mut all = vec![
        Strategy::Auto,
        Strategy::RowLoop,
        Strategy::Forward,
        Strategy::Vectorized { chunk_size: None },
        Strategy::Vectorized {
            chunk_size: Some(3),
        },
        Strategy::VectorizedForward { chunk_size: None },
        Strategy::VectorizedForward {
            chunk_size: Some(2),
        },
    ];
    all.extend(batched());
    all
}

/// The strategies that need no closure (for `jacobian_with`, `per_sample_jacobian`, `hessian`).
pub fn graph_strategies() -> Vec<Strategy> {
    strategies()
        .into_iter()
        .filter(|s| !needs_closure(*s))
        .collect()
}

/// `Batched`, unchunked and in chunks of 2 rows, when the native engine is built.
pub fn batched() -> Vec<Strategy> {
    if tch_jacobian::native::available() {
        vec![
            Strategy::Batched { chunk_size: None },
            Strategy::Batched {
                chunk_size: Some(2),
            },
        ]
    } else {
        vec![]
    }
}

/// Whether `s` replicates the forward pass (and so needs the function itself).
pub fn needs_closure(s: Strategy) -> bool {
    matches!(
        s,
        Strategy::Vectorized { .. } | Strategy::VectorizedForward { .. }
    )
}

/// Options for strategy `s` with libtorch's per-op vmap fallback off: a batched pass through an
/// op without a batching rule fails instead of looping, which proves the fast path.
pub fn fast_opts(s: Strategy) -> JacobianOptions<'static> {
    JacobianOptions::default().strategy(s).vmap_fallback(false)
}

/// PyTorch's value of the notebook's `F = ‖J‖_F²` on `device` in `kind` (float32 on CUDA differs
/// from the CPU in the last bits), from tests/data/notebook_f.txt (tests/gen-fixtures.py).
pub fn notebook_f(device: Device, kind: Kind) -> f64 {
    let dev = if device.is_cuda() { "cuda" } else { "cpu" };
    let dt = if kind == Kind::Double {
        "float64"
    } else {
        "float32"
    };
    include_str!("../data/notebook_f.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            (parts.len() == 3 && parts[0] == dev && parts[1] == dt).then(|| parts[2].parse().ok())
        })
        .flatten()
        .unwrap_or_else(|| panic!("no {dev} {dt} value in tests/data/notebook_f.txt"))
}

/// For float64 results compared with float64 PyTorch (the same math, another summation order):
/// rtol 1e-10, atol 1e-12 (for entries that are zero up to rounding). Tolerance::check also
/// refuses a result of another kind, so a float32 path cannot pass.
pub fn f64_tol() -> Tolerance {
    Tolerance::new(1e-10, 1e-12)
}

/// For float32 results compared with float32 PyTorch: a few ulps of relative error.
pub fn f32_tol() -> Tolerance {
    Tolerance::new(1e-5, 1e-7)
}

pub fn randn(shape: &[i64], kind: Kind, device: Device) -> Tensor {
    Tensor::randn(shape, (kind, device))
}

/// Asserts that `result` is an error whose message contains every one of `needles`.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(result: Result<T>, needles: &[&str]) {
    match result {
        Ok(v) => panic!("expected an error containing {needles:?}, got Ok({v:?})"),
        Err(e) => {
            let msg = e.to_string();
            for n in needles {
                assert!(
                    msg.contains(n),
                    "error message {msg:?} does not contain {n:?}"
                );
            }
        }
    }
}

/// Instantiates `fn case(device: Device) -> Result<()>` once per device: `case::cpu` always,
/// `case::cuda` with the `cuda-tests` feature (it fails, rather than skips, without a GPU).
/// Attributes before a case apply to both, e.g. [`needs_engine`]'s
/// `#[cfg_attr(not(feature = "native"), ignore = "needs the native engine")]`.
#[macro_export]
macro_rules! device_tests {
    ($($(#[$attr:meta])* $case:ident),* $(,)?) => {
        $(
            mod $case {
                #[test]
                $(#[$attr])*
                fn cpu() -> tch_jacobian::Result<()> {
                    super::$case(tch::Device::Cpu)
                }
                #[cfg(feature = "cuda-tests")]
                #[test]
                $(#[$attr])*
                fn cuda() -> tch_jacobian::Result<()> {
                    assert!(tch::Cuda::is_available(), "feature cuda-tests is on but CUDA is not available");
                    super::$case(tch::Device::Cuda(0))
                }
            }
        )*
    };
}

/// Engine-only tests are marked
/// `#[cfg_attr(not(feature = "native"), ignore = "needs the native engine")]`: without the
/// engine (`--no-default-features`) they show as ignored with that reason, never as a pass that
/// returned early. This asserts, in such a test, that the feature and the build agree (a build
/// with the feature but without the engine fails the build itself, see build.rs).
#[track_caller]
pub fn needs_engine() {
    assert!(
        tch_jacobian::native::available(),
        "this test needs the native engine: {}",
        tch_jacobian::native::build_status()
    );
}

/// Whether the crate's malloc tuning (`tch_jacobian::global::set_malloc_tuning`) can take effect
/// in this process: Linux with glibc, and none of malloc's thresholds set in the environment
/// (which the crate never overrides).
pub fn malloc_tuning_possible() -> bool {
    let env = [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "GLIBC_TUNABLES",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    cfg!(all(target_os = "linux", target_env = "gnu")) && !env
}
