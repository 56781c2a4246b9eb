//! Link-time fixes for libtorch, shared by every target of this crate.
//!
//! * rpath to libtorch's lib folder, so that examples, tests and binaries run without
//!   `LD_LIBRARY_PATH`;
//! * `libtorch.so` linked with `--no-as-needed`: it only carries DT_NEEDED entries for
//!   `libtorch_cpu.so` / `libtorch_cuda.so`, so the default `--as-needed` drops it and, with it,
//!   `libtorch_cuda.so` — `tch::Cuda::is_available()` is then false even on a GPU machine
//!   (tch-rs issue #907).
//!
//! `torch-sys` (a direct dependency for this purpose: cargo hands a `links` package's metadata
//! only to its direct dependents) exports the lib folder as `DEP_TCH_LIBTORCH_LIB`.
//!
//! `cargo:rustc-link-arg` reaches this package's own targets only. Crates that depend on us read
//! the same folder from `DEP_TCH_JACOBIAN_LIBTORCH_LIB` and repeat the two lines below in their
//! own build.rs (build-notes.md shows it); the `as-needed` link modifier that would propagate by
//! itself is still unstable (rust-lang/rust#99424).
use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB not set by torch-sys; no rpath added \
             (binaries will need LD_LIBRARY_PATH). See build-notes.md."
        );
        return;
    };
    // Resolve links (e.g. the checkout's `.libtorch` link made by scripts/setup-libtorch) so that
    // installed binaries keep working when the checkout moves.
    let lib = std::fs::canonicalize(&lib)
        .map(|p| p.display().to_string())
        .unwrap_or(lib);
    // Our own examples, tests, benches and binaries.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-L{lib}");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    // Re-export for dependents: `DEP_TCH_JACOBIAN_LIBTORCH_LIB` in their build.rs.
    println!("cargo:libtorch_lib={lib}");
}
