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
//! the same folder from `DEP_TCH_JACOBIAN_LIBTORCH_LIB` and repeat the rpath and link lines below in
//! their own build.rs (build-notes.md shows it); the `as-needed` link modifier that would propagate by
//! itself is still unstable (rust-lang/rust#99424).
//!
//! It also compiles the crate's C++ files in `csrc/` with the `cc` crate against the same
//! libtorch, the way torch-sys compiles its own C++ (libtorch's `include/` folders, `-std=c++17`
//! and the cxx11 ABI flag), in two parts:
//!
//! * the core ([`CORE`]: the autograd graph scan, the normalizations' autograd kernels that are
//!   right at every order, and collapsed Taylor mode), which needs only libtorch's headers and is
//!   part of every build — a C++17 compiler is needed in every configuration;
//! * the engine ([`CSRC`], see `src/native/mod.rs`), which needs functorch's headers. Those include
//!   `nlohmann/json.hpp`, which libtorch does not ship; it is looked for in
//!
//! 1. `TCH_JACOBIAN_NLOHMANN_INCLUDE` (the folder that holds `nlohmann/json.hpp`), for a user's
//!    own libtorch;
//! 2. `site-packages/nlohmann_json/include` beside a pip-installed torch (scripts/setup-libtorch
//!    installs the `nlohmann-json` package there);
//! 3. libtorch's own `include/`, `/usr/include` and `/usr/local/include` (Debian:
//!    `nlohmann-json3-dev`).
//!
//! The engine is the default cargo feature `native`. When it cannot be built (no header, a
//! libtorch without functorch's headers, a compiler error) the build **fails** with the reason and
//! the fix: a dependent crate never sees a build script's warnings, so a silently missing engine
//! would give it a slower crate. `default-features = false` builds the crate without the engine
//! (the documented way); `doc-only` (docs.rs) builds neither libtorch's link lines nor the engine.
//! The outcome is compiled into the crate as `TCH_JACOBIAN_NATIVE_STATUS` (see
//! `native::build_status`).
use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo::rustc-check-cfg=cfg(tch_jacobian_native)");
    println!("cargo::rustc-check-cfg=cfg(tch_jacobian_core)");
    let native = env::var_os("CARGO_FEATURE_NATIVE").is_some();
    let doc_only = env::var_os("CARGO_FEATURE_DOC_ONLY").is_some();
    if doc_only {
        // docs.rs: no libtorch, so neither link lines nor the engine.
        println!("cargo:rustc-env=TCH_JACOBIAN_NATIVE_STATUS=not built: documentation build (feature doc-only)");
        println!("cargo:rustc-env=TCH_JACOBIAN_OPENMP=off: documentation build (feature doc-only)");
        return;
    }
    let Ok(lib) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB not set by torch-sys; no rpath added \
             (binaries will need LD_LIBRARY_PATH). See build-notes.md."
        );
        if native {
            panic!(
                "tch-jacobian: the native engine (default feature `native`) needs libtorch's folder, \
                 which torch-sys did not export (DEP_TCH_LIBTORCH_LIB). Set LIBTORCH to libtorch 2.11, \
                 or build without the engine: tch-jacobian = {{ version = \"0.1\", default-features = false }}"
            );
        }
        println!("cargo:rustc-env=TCH_JACOBIAN_NATIVE_STATUS=not built: libtorch's folder unknown");
        println!("cargo:rustc-env=TCH_JACOBIAN_OPENMP=off: libtorch's folder unknown");
        return;
    };
    let openmp = openmp_runtime(Path::new(&lib));
    match &openmp {
        Ok(runtime) => {
            // The very runtime libtorch_cpu uses (one thread pool, one `set_num_threads`); a
            // `rustc-link-lib` line reaches dependents' links too.
            println!("cargo:rustc-link-lib=dylib:+verbatim={runtime}");
            println!("cargo:rustc-env=TCH_JACOBIAN_OPENMP=on: {runtime}");
        }
        Err(why) => println!("cargo:rustc-env=TCH_JACOBIAN_OPENMP=off: {why}"),
    }
    build_core(Path::new(&lib), openmp.is_ok());
    let status = if native {
        build_native(Path::new(&lib), openmp.is_ok())
    } else {
        "not built: the `native` feature is off (default-features = false)".into()
    };
    if native && status != "built" {
        panic!(
            "tch-jacobian: the native engine (default feature `native`) was {status}.\n\
             Fix the cause above, or build without the engine (slower, and it refuses or reroutes what it \
             cannot check): tch-jacobian = {{ version = \"0.1\", default-features = false }} in Cargo.toml, \
             or `cargo build --no-default-features` in this repository."
        );
    }
    println!("cargo:rustc-env=TCH_JACOBIAN_NATIVE_STATUS={status}");
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

/// The C++ files every build with libtorch compiles (they need only libtorch's own headers, so
/// values never depend on the optional engine): the autograd graph scan, the random generator's
/// state, the normalizations' autograd kernels that are right at every order, and collapsed
/// Taylor mode (Laplacians in one forward pass).
const CORE: [&str; 9] = [
    "csrc/graph_scan.cpp",
    "csrc/generator.cpp",
    "csrc/norm_autograd.cpp",
    "csrc/taylor_session.cpp",
    "csrc/taylor_fallback.cpp",
    "csrc/taylor_elementwise.cpp",
    "csrc/taylor_shape.cpp",
    "csrc/taylor_products.cpp",
    "csrc/taylor_nn.cpp",
];

/// The engine's C++ files (feature `native`; functorch's headers), one per capability: the
/// batched backward pass, per-sample gradients by vmap(grad) of a Rust closure, forward-mode AD,
/// the normalizations' batching rules that are right to second order, the losses' batching
/// rules, the TorchScript executor switch and collapsed Taylor mode's generic rule (any op with a
/// forward-mode derivative, by vmap(jvp∘jvp)).
const CSRC: [&str; 7] = [
    "csrc/batched_vjp.cpp",
    "csrc/vmap_grad.cpp",
    "csrc/forward_ad.cpp",
    "csrc/norm_rules.cpp",
    "csrc/loss_rules.cpp",
    "csrc/jit_executor.cpp",
    "csrc/taylor_generic.cpp",
];

/// The folder holding libtorch's `include/` (torch-sys: `LIBTORCH_INCLUDE`, else the parent of
/// its lib folder).
fn libtorch_root(lib: &Path) -> PathBuf {
    for var in [
        "TCH_JACOBIAN_NLOHMANN_INCLUDE",
        "LIBTORCH_INCLUDE",
        "LIBTORCH_CXX11_ABI",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    env::var("LIBTORCH_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| lib.parent().unwrap_or(lib).to_path_buf())
}

/// A `cc` build of `files` against libtorch's headers (and `extra` include folders), the way
/// torch-sys compiles its own C++: `-std=c++17` and the cxx11 ABI flag.
fn compile(
    root: &Path,
    files: &[&str],
    extra: &[&Path],
    name: &str,
    openmp: bool,
) -> Result<(), String> {
    let include = root.join("include");
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .files(files)
        .include(&include)
        .include(include.join("torch/csrc/api/include"));
    for dir in extra {
        build.include(dir);
    }
    build
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT");
    if openmp {
        // ATen's inline `at::parallel_for` splits work over the intra-op threads only when
        // `_OPENMP` is defined; without it the crate's own kernels run on one thread.
        build.flag("-fopenmp");
    }
    build
        // libtorch's headers are not warning-clean.
        .warnings(false)
        .flag_if_supported("-w")
        .try_compile(name)
        .map_err(|e| e.to_string().replace('\n', " "))
}

/// The OpenMP runtime the crate's C++ is compiled against: libtorch's own GNU OpenMP library
/// (`libgomp.so.1` in a pip wheel's `torch/lib`, `libgomp-<hash>.so.1` in the libtorch archive), by
/// its file name in `lib`, when libtorch was built with OpenMP and the C++ compiler is GCC. Any
/// other runtime would be a second thread pool; clang's `-fopenmp` targets LLVM's. `Err` says why
/// the crate's kernels stay on one thread (the values are the same either way).
fn openmp_runtime(lib: &Path) -> Result<String, String> {
    println!("cargo:rerun-if-env-changed=TCH_JACOBIAN_NO_OPENMP");
    if env::var_os("TCH_JACOBIAN_NO_OPENMP").is_some() {
        return Err("TCH_JACOBIAN_NO_OPENMP is set".into());
    }
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return Err("only Linux builds link libtorch's OpenMP runtime".into());
    }
    let config = libtorch_root(lib).join("include/ATen/Config.h");
    let text = std::fs::read_to_string(&config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    if !text.contains("#define AT_PARALLEL_OPENMP 1") {
        return Err("libtorch was not built with OpenMP".into());
    }
    let compiler = cc::Build::new().cpp(true).get_compiler();
    if !compiler.is_like_gnu() {
        return Err(format!(
            "{} is not GCC (its -fopenmp would not use libtorch's libgomp)",
            compiler.path().display()
        ));
    }
    let mut found: Vec<String> = std::fs::read_dir(lib)
        .map_err(|e| format!("cannot list {}: {e}", lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("libgomp") && n.ends_with(".so.1"))
        .collect();
    found.sort();
    found
        .into_iter()
        .next()
        .ok_or_else(|| format!("no libgomp*.so.1 in {}", lib.display()))
}

/// Compiles the core C++ files (always; the build fails without them) and sets
/// `cfg(tch_jacobian_core)`.
fn build_core(lib: &Path, openmp: bool) {
    let root = libtorch_root(lib);
    if let Err(e) = compile(&root, &CORE, &[], "tch_jacobian_core", openmp) {
        panic!(
            "tch-jacobian: compiling {CORE:?} against libtorch's headers in {} failed: {e}",
            root.join("include").display()
        );
    }
    println!("cargo:rustc-cfg=tch_jacobian_core");
}

/// Compiles the engine's C++ files and sets `cfg(tch_jacobian_native)`; returns "built" or why
/// not.
fn build_native(lib: &Path, openmp: bool) -> String {
    let root = libtorch_root(lib);
    let include = root.join("include");
    if !include.join("ATen/functorch/DynamicLayer.h").exists() {
        return format!(
            "not built: {} has no ATen/functorch/DynamicLayer.h (set LIBTORCH_INCLUDE)",
            include.display()
        );
    }
    let nlohmann_candidates: Vec<PathBuf> = env::var("TCH_JACOBIAN_NLOHMANN_INCLUDE")
        .map(|p| vec![PathBuf::from(p)])
        .unwrap_or_else(|_| {
            vec![
                root.join("../nlohmann_json/include"),
                include.clone(),
                PathBuf::from("/usr/include"),
                PathBuf::from("/usr/local/include"),
            ]
        });
    let Some(nlohmann) = nlohmann_candidates
        .iter()
        .find(|p| p.join("nlohmann/json.hpp").exists())
    else {
        return "not built: nlohmann/json.hpp not found (run scripts/setup-libtorch, \
                `pip install nlohmann-json` beside torch, or set TCH_JACOBIAN_NLOHMANN_INCLUDE)"
            .into();
    };
    match compile(&root, &CSRC, &[nlohmann], "tch_jacobian_native", openmp) {
        Ok(()) => {
            println!("cargo:rustc-cfg=tch_jacobian_native");
            "built".into()
        }
        Err(e) => format!("not built: compiling csrc/ failed: {e}"),
    }
}
