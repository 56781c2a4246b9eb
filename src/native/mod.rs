//! The native part: the crate's C++ files in `csrc/`, and one Rust room per C++ capability.
//!
//! tch seeds `run_backward` with ones, so without help every Jacobian costs either one backward
//! pass per output row or a forward pass over replicated inputs. libtorch itself can do better:
//! functorch's vmap level (what `torch.func.jacrev` and `vmap(jacrev)` use) runs one backward pass
//! whose cotangent is a batch `V = [c, *y.shape]`, giving `G_k[r] = V[r]ᵀ ∂y/∂x_k` for all `c` rows
//! at once. `csrc/batched_vjp.cpp` reaches it. With `V` = rows of the identity this gives rows of
//! `J` — [`Strategy::Batched`](crate::Strategy::Batched).
//!
//! The C++ files are compiled by `build.rs` against the libtorch that torch-sys links (see
//! build-notes.md). Each capability's Rust side is a room of its own in `src/native/`, named
//! after its C++ file: the file's `extern "C"` declarations and the safe functions over them,
//! which exist in every build (without the C++ file they return an error naming the fix, or do
//! nothing).
//!
//! * The core, part of every build with libtorch (cfg `tch_jacobian_core`):
//!   * `csrc/graph_scan.cpp`, room `graph_scan`: the autograd graph scan of
//!     [`crate::second_order`] (and `tchj_free_string`, which frees the strings every C++ file
//!     hands back);
//!   * `csrc/norm_autograd.cpp`, room `norm_autograd`: autograd kernels for the normalizations
//!     whose derivatives are right at every order;
//!   * `csrc/generator.cpp`, room `generator`: the default random generator's state, saved and
//!     restored around `Randomness::Same`'s per-sample loop;
//!   * collapsed Taylor mode (the Laplacians of [`crate::laplacian`](mod@crate::laplacian) in one forward pass), room
//!     `taylor`: `csrc/taylor.h` (what its parts share), `csrc/taylor_session.cpp` (the session,
//!     the table of coefficients, the jet algebra), `csrc/taylor_fallback.cpp` (the dispatcher
//!     fallback that pushes Taylor coefficients through every op of a Rust closure), and the rule
//!     families `csrc/taylor_elementwise.cpp`, `csrc/taylor_shape.cpp`,
//!     `csrc/taylor_products.cpp` and `csrc/taylor_nn.cpp`.
//! * The engine, the default feature `native` (cfg `tch_jacobian_native`):
//!   * `csrc/batched_vjp.cpp`, room `batched_vjp`: the batched backward pass, and the free CUDA
//!     memory ([`cuda_free_memory`]);
//!   * `csrc/vmap_grad.cpp`, room `vmap_grad`: per-sample gradients by vmap(grad) of a Rust
//!     closure, the vmap level's randomness and whether a transform is active;
//!   * `csrc/forward_ad.cpp`, room `forward_ad`: forward-mode Jacobian columns of a Rust closure;
//!   * `csrc/jit_executor.cpp`, room `jit_executor`: the TorchScript executor switch;
//!   * `csrc/taylor_generic.cpp` (room `taylor`): collapsed Taylor mode's generic rule, for any
//!     op with a forward-mode derivative, by vmap(jvp∘jvp) at functorch's levels;
//!   * `csrc/norm_rules.cpp` and `csrc/loss_rules.cpp`: batching rules for the normalizations and
//!     the losses. They have no room: the C++ side of the three batched passes installs them, once
//!     per process;
//!   * `csrc/functorch_guards.h`: the header the engine's files share.
//! * `csrc/strings.h`: the malloc'd strings every file hands back (core and engine).
//!
//! Two rooms serve the others: `shared` (the strings the C++ side hands back, its messages turned
//! into [`Error`](crate::Error)s, the record of the ops that took the vmap fallback, and the
//! warnings logged once) and `callback` (the trampoline through which `csrc/vmap_grad.cpp` and
//! `csrc/forward_ad.cpp` run a Rust closure inside functorch's transforms).
//!
//! Ops without a batching rule go through libtorch's *vmap fallback*, which loops over that one
//! op (still far cheaper than a loop over whole backward passes). The crate keeps it on and
//! records which ops used it: [`take_vmap_fallbacks`]. `JacobianOptions::vmap_fallback(false)`
//! turns it off for a call, so such an op is an
//! [`Error::NoBatchingRule`](crate::Error::NoBatchingRule) instead. Each such op is also reported
//! once per process through the `log` facade at warn level, and so is a build without the engine,
//! the first time `Strategy::Auto` would have used it (install `env_logger` or `tracing-log` to see
//! them).
//!
//! With the default feature `native`, a build that cannot compile the engine fails, naming the
//! fix. Built without it (`default-features = false`, or the `doc-only` documentation build),
//! [`available`] is false, [`Strategy::Auto`](crate::Strategy::Auto) never picks `Batched`, and
//! asking for it is an error naming the fix ([`build_status`]).
//!
//! ```
//! use tch_jacobian::native;
//! // "built", or why not (e.g. "not built: nlohmann/json.hpp not found (…)").
//! let status = native::build_status();
//! assert_eq!(native::available(), status == "built");
//! assert!(native::take_vmap_fallbacks().is_empty()); // nothing ran yet on this thread
//! # Ok::<(), tch_jacobian::Error>(())
//! ```
mod batched_vjp;
mod callback;
mod forward_ad;
mod generator;
mod graph_scan;
mod jit_executor;
mod norm_autograd;
mod shared;
pub(crate) mod taylor;
mod vmap_grad;

pub(crate) use batched_vjp::batched_vjp;
pub use batched_vjp::cuda_free_memory;
pub(crate) use callback::LossFn;
pub(crate) use forward_ad::jacfwd;
pub(crate) use generator::GeneratorState;
pub(crate) use graph_scan::graph_node_names;
pub(crate) use jit_executor::PlainTorchScript;
pub(crate) use norm_autograd::{ensure_norm_autograd, norm_autograd_installed};
#[cfg(tch_jacobian_core)]
pub(crate) use shared::take_string;
pub(crate) use shared::{unavailable, warn_missing_engine, warn_once};
pub(crate) use vmap_grad::{in_transform, vmap_grad, SameRandomness};

/// Whether the native batched engine was compiled into this build.
///
/// ```
/// # use tch_jacobian::{native, Strategy};
/// if native::available() {
///     assert!(matches!(Strategy::Auto.resolve(64, 64, false), Strategy::Batched { .. }));
/// }
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn available() -> bool {
    cfg!(tch_jacobian_native)
}

/// What build.rs did with the C++ engine: `"built"`, or `"not built: <reason and fix>"`.
///
/// ```
/// assert!(tch_jacobian::native::build_status().starts_with("built")
///     || tch_jacobian::native::build_status().starts_with("not built"));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn build_status() -> &'static str {
    env!("TCH_JACOBIAN_NATIVE_STATUS")
}

/// Whether the crate's own CPU kernels (collapsed Taylor mode's fused elementwise passes, forward
/// and backward) split their work over libtorch's intra-op threads: `"on: <runtime>"` (the C++ was
/// compiled with `-fopenmp` and linked to the OpenMP runtime libtorch uses, e.g. `libgomp.so.1`),
/// or `"off: <why>"` (not Linux, a compiler other than GCC, a libtorch without OpenMP, or
/// `TCH_JACOBIAN_NO_OPENMP` set at build time): those kernels then run on one thread. Each
/// element is computed by one thread either way, so the values are the same bit for bit.
///
/// ```
/// let status = tch_jacobian::native::openmp_status();
/// assert!(status.starts_with("on: ") || status.starts_with("off: "));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn openmp_status() -> &'static str {
    env!("TCH_JACOBIAN_OPENMP")
}

/// The ops (e.g. `aten::_scaled_dot_product_flash_attention_for_cpu_backward`) that went
/// through libtorch's per-op vmap fallback in batched passes on this thread since the last call,
/// each once; clears the record.
///
/// An op listed here has no batching rule: its backward ran as a loop over the chunk's rows for
/// that op only. The result is still exact; only that op is slower.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// use tch_jacobian::{jacobian_with, native, JacobianOptions, Strategy};
/// let x = Tensor::randn([8], (Kind::Double, Device::Cpu)).set_requires_grad(true);
/// let y = x.tanh();
/// if native::available() {
///     let opts = JacobianOptions::default().strategy(Strategy::Batched { chunk_size: None });
///     jacobian_with(&y, &[&x], &opts)?;
///     assert!(native::take_vmap_fallbacks().is_empty()); // tanh's backward has a rule
/// }
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn take_vmap_fallbacks() -> Vec<String> {
    shared::FALLBACKS.with(|f| std::mem::take(&mut *f.borrow_mut()))
}

#[cfg(test)]
mod tests {
    /// The `csrc/…` file names in `text`, sorted, each once.
    fn csrc_names(text: &str) -> Vec<String> {
        let mut names: Vec<String> = text
            .match_indices("csrc/")
            .map(|(i, _)| {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "_./".contains(c)))
                    .unwrap_or(rest.len());
                rest[..end].trim_end_matches('.').to_string()
            })
            .filter(|n| n.ends_with(".cpp") || n.ends_with(".h"))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The module docs list every C++ file of csrc/ (no more, no fewer), and build.rs compiles
    /// every `.cpp` of it.
    #[test]
    fn module_docs_list_the_cpp_files() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut on_disk: Vec<String> = std::fs::read_dir(root.join("csrc"))
            .unwrap()
            .map(|e| format!("csrc/{}", e.unwrap().file_name().to_string_lossy()))
            .filter(|n| n.ends_with(".cpp") || n.ends_with(".h"))
            .collect();
        on_disk.sort();
        let source = std::fs::read_to_string(root.join("src/native/mod.rs")).unwrap();
        let docs: String = source
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            csrc_names(&docs),
            on_disk,
            "src/native/mod.rs's module docs"
        );
        let build = std::fs::read_to_string(root.join("build.rs")).unwrap();
        for cpp in on_disk.iter().filter(|n| n.ends_with(".cpp")) {
            assert!(
                build.contains(&format!("\"{cpp}\"")),
                "build.rs does not compile {cpp}"
            );
        }
    }

    /// Every room but `mod.rs`, `shared.rs` and `callback.rs` is named after a C++ file of
    /// csrc/ — or a family of them, `csrc/<room>.h` with its parts `csrc/<room>_*.cpp` — and its
    /// module docs begin by naming that file.
    #[test]
    fn rooms_name_their_cpp_file() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for entry in std::fs::read_dir(root.join("src/native")).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            if ["mod", "shared", "callback"].contains(&stem.as_str()) {
                continue;
            }
            let cpp = format!("csrc/{stem}.cpp");
            let header = format!("csrc/{stem}.h");
            let file = if root.join(&cpp).is_file() {
                cpp
            } else {
                assert!(
                    root.join(&header).is_file(),
                    "{} has neither {cpp} nor {header}",
                    path.display()
                );
                let parts = std::fs::read_dir(root.join("csrc"))
                    .unwrap()
                    .filter(|e| {
                        let n = e
                            .as_ref()
                            .unwrap()
                            .file_name()
                            .to_string_lossy()
                            .into_owned();
                        n.starts_with(&format!("{stem}_")) && n.ends_with(".cpp")
                    })
                    .count();
                assert!(parts > 0, "{header} has no parts csrc/{stem}_*.cpp");
                header
            };
            let source = std::fs::read_to_string(&path).unwrap();
            assert!(
                source.starts_with(&format!("//! `{file}`")),
                "{}'s docs do not begin with `{file}`",
                path.display()
            );
        }
    }
}
