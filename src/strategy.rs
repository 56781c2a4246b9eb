//! How a Jacobian is computed: [`Strategy`] and the options shared by every call,
//! [`JacobianOptions`].
//!
//! | strategy | backward passes | needs a closure | best for |
//! |---|---|---|---|
//! | [`Strategy::RowLoop`] | `m` (one per output element) | no | the notebook; small `m`; any `f` |
//! | [`Strategy::Batched`] | `⌈m / chunk⌉` batched passes, no extra forward pass | no | everything else (native engine, see [`crate::native`]): `Auto`'s choice whenever the engine is built, except tall Jacobians on the CPU |
//! | [`Strategy::Vectorized`] | `⌈m / chunk⌉`, over `f` applied to `chunk` copies of `x` | yes, row-wise | square and wide Jacobians with a closure, without the native engine |
//! | [`Strategy::Forward`] | a closure: none — one forward-mode evaluation on dual tensors (native engine); a built graph: 1 + one batched pass over the `n` identity tangents (1 + `n` without the native engine), double-backward JVPs | no | tall Jacobians (`m ≫ n`): `Auto`'s choice there on the CPU with the engine |
//! | [`Strategy::VectorizedForward`] | `2·⌈n / chunk⌉`, over `f` applied to `chunk` copies of `x` | yes, row-wise | tall Jacobians with a closure, without the native engine |
//! | [`Strategy::Auto`] | picks one of the above by shape, device and build, see [`Strategy::resolve`] | – | default |
//!
//! Here `m` is the number of output elements and `n` the number of input elements.
//!
//! The engines (in the private `engine` module), in a few lines each:
//!
//! * **row loop** (`RowLoop`, and `Forward` by columns): one ordinary backward pass per row
//!   (column). Costs `m` passes through the graph, each one small; no assumption about `f`;
//!   what the notebook does. Auto uses it only without the native engine (for at most 4
//!   outputs, and where the replicated strategies are out and the Jacobian is not tall), or
//!   when a batched pass is refused or its second derivatives would be wrong
//!   ([`crate::second_order::take_reroutes`] reports it).
//! * **replicated** (`Vectorized`, `VectorizedForward`): `f` evaluated again on `c` stacked copies
//!   of `x`, one backward pass of the stack. Costs one extra forward over `c` copies (twice the
//!   arithmetic of a batched pass), needs a row-wise closure. Auto uses it only when the native
//!   engine is not built.
//! * **batched** (`Batched`, native): one backward pass of the caller's own graph over a batch of
//!   `c` identity cotangents at a functorch vmap level — what `torch.func.jacrev` does. No
//!   closure, no extra forward; ops without a batching rule loop over that op only. Auto's
//!   default whenever the engine is built (on every device; on the CPU except for tall
//!   Jacobians).
//! * **columns** (`Forward`, native): for a closure (without `create_graph`), forward-mode AD —
//!   `f` evaluated once on dual tensors whose tangents are the `n` identity columns at one vmap
//!   level, torch.func's `jacfwd`; for a built graph (and under `create_graph`), `Jᵀw` once, then
//!   one batched backward pass of it over the identity tangents (double-backward JVPs). Auto's
//!   choice for tall Jacobians on the CPU with the engine, and without it for tall Jacobians
//!   where the replicated strategies are out (no closure, or 16 samples or more on the CPU).

use tch::{Device, Kind, Tensor};

use crate::autograd::{Names, Pass};
use crate::error::{Error, Result};

/// A way of computing `J[i, j] = ∂y_i/∂x_j`.
///
/// All strategies produce the same `J` (up to floating-point summation order); they differ in
/// speed and memory.
///
/// The enum is `#[non_exhaustive]`: strategies may be added, so a `match` on it outside this
/// crate needs a `_` arm. Its variants are built as usual
/// (`Strategy::Batched { chunk_size: Some(64) }`).
///
/// ```
/// use tch_jacobian::{native, Strategy};
/// // An explicit strategy is kept.
/// assert_eq!(Strategy::RowLoop.resolve(256, 256, false), Strategy::RowLoop);
/// // 256 × 256, from a built graph: one batched pass when the native engine is built.
/// let s = Strategy::Auto.resolve(256, 256, false);
/// assert_eq!(s == (Strategy::Batched { chunk_size: None }), native::available());
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Choose by shape, device and whether the native engine is built; the rules are in
    /// [`Strategy::resolve`].
    #[default]
    Auto,
    /// The notebook's loop: for each output element `i`, one `run_backward(y_i)` with the graph
    /// kept gives row `i`, `J[i, :] = ∂y_i/∂x`.
    RowLoop,
    /// One backward pass per chunk of `c` output rows over a *batch* of cotangents: with `E` the
    /// rows `start..start + c` of the identity (`[c, *out]`), `J[start + r, :] = E[r]ᵀ ∂y/∂x`
    /// for all `r` at once, through the caller's own graph — PyTorch's `torch.func.jacrev` /
    /// `vmap(vjp)`. Needs the native engine ([`crate::native::available`]); works with or without
    /// a closure, for several inputs, with `create_graph` and `strict`.
    ///
    /// `chunk_size` bounds the rows per pass (memory `O(chunk_size · cost(backward))`); `None`
    /// means all `m` rows at once. Chunks are written into one preallocated `J`.
    Batched {
        /// At most this many output rows per backward pass; `Some(0)` is an error.
        chunk_size: Option<usize>,
    },
    /// Replicate `x` once per output row, `X = [x; x; …; x]` (shape `[c, *in]`), evaluate
    /// `Y = f(X)` and run one backward pass of `Σ_r Y[r, i_r]`: row `r` of `∂/∂X` is `J[i_r, :]`.
    ///
    /// `f` must act row-wise on a leading batch dimension (`f(X)[r] = f(X[r])`), as `tch::nn`
    /// layers do; the first row of `f(X)` is checked against `f(x)` to catch closures that mix
    /// rows. `chunk_size` (like `torch.func.jacrev(chunk_size=…)`) bounds the number of copies
    /// evaluated at once, so memory is `O(chunk_size · cost(f))`; `None` means all `m` rows at once.
    Vectorized {
        /// At most this many output rows per backward pass; `Some(0)` is an error.
        chunk_size: Option<usize>,
    },
    /// Column by column, `J[:, j] = J e_j`, by forward-mode products.
    ///
    /// With a closure (`jacobian_of`, `per_sample_jacobian_of`), the native engine and no
    /// `create_graph`: true forward-mode AD, `torch.func.jacfwd` — the closure is evaluated once
    /// more on dual tensors whose tangents are all the identity columns at one vmap level
    /// (`csrc/forward_ad.cpp`, chunked like `Batched`); no reverse graph, no row-wise
    /// requirement. Otherwise (a built graph, `create_graph`, no engine, or an op without a
    /// forward-mode formula) the double-backward trick: `g(u) = Jᵀu` is built once with
    /// `create_graph`, then `J e_j = ∂(g(u)·e_j)/∂u` for every input element `j` — all of them
    /// in one native batched pass over the identity tangents, or one backward pass per input
    /// element without the engine; it needs twice-differentiable ops.
    ///
    /// Under `create_graph` through layer or batch norm its values would be wrong one order
    /// higher (libtorch's fault, see [`crate::second_order`]): it returns
    /// [`Error::WrongDerivative`] there, and `Auto` does not pick it.
    Forward,
    /// Column by column by the double-backward trick over stacked copies of `x`, as
    /// [`Strategy::Vectorized`] stacks them for rows: `x` is stacked once per input element `j`
    /// (in chunks of `chunk_size`), `Y = f(X)`, and the double-backward trick with a zero
    /// cotangent `U` shaped like `Y` gives all columns of the chunk, `Y[r] ↦ J e_{j_r}`, in two
    /// backward passes. Same row-wise contract as `Vectorized`.
    ///
    /// Not PyTorch's `jacfwd`, which is forward-mode AD under vmap — that is
    /// [`Strategy::Forward`] with a closure and the native engine. `Auto` picks this one for
    /// tall Jacobians (`m ≫ n`) with a closure only when the native engine is not built.
    VectorizedForward {
        /// At most this many input elements (columns) per pass; `Some(0)` is an error.
        chunk_size: Option<usize>,
    },
    /// Collapsed Taylor mode ([`crate::laplacian`](mod@crate::laplacian)): the closure runs once while every op it
    /// calls also pushes its input's coefficients along the identity directions forward by the
    /// op's rule — forward-mode AD without dual tensors or functorch, part of every build.
    ///
    /// For Jacobians of a closure (`jacobian_of`, `per_sample_jacobian_of`): all `n` columns
    /// `J e_j` in one pass, each op of `f` evaluated once (tall Jacobians; memory
    /// `O(n · cost(f))`). For Laplacians it is what `Auto` runs first. It needs the closure
    /// itself; an op without a rule is an [`Error::NoTaylorRule`], a closure the mode cannot
    /// follow an [`Error::TaylorUnsupported`]. `Auto` never picks it for Jacobians.
    Taylor,
}

// The tuning constants of `Auto` and the memory rule below are `#[doc(hidden)]`: public only so
// that doctests (which pin the numbers the docs quote) and bench/ can read them, not part of
// the stable API. Their values are stated in `Strategy::resolve`'s docs.

/// Output-to-input ratio from which [`Strategy::Auto`] calls a Jacobian tall (`m ≥ 4·n`).
#[doc(hidden)]
pub const AUTO_TALL_RATIO: usize = 4;

/// Without the native engine, up to this many output elements [`Strategy::Auto`] keeps the
/// plain row loop: the vectorized strategies' fixed costs (an extra forward pass and the
/// row-wise checks) outweigh a few backward passes (n = m = 3: RowLoop 0.17 ms, Vectorized
/// 0.27 ms on a 2-core CPU).
#[doc(hidden)]
pub const AUTO_ROW_LOOP_MAX_ROWS: usize = 4;

/// Without the native engine, from this batch size on, [`Strategy::resolve_batched`]'s `Auto`
/// loops over rows (or columns) instead of stacking copies, on the CPU: each pass is then a
/// batched matrix product that keeps the CPU busy, and the loop does half the arithmetic of the
/// stacked forward + backward (B = 128, 784 → 64: RowLoop 16 ms, Vectorized 25 ms).
#[doc(hidden)]
pub const AUTO_BATCH_LOOP_MIN: usize = 16;

/// Without the native engine, the element budget (`copies × batch × (n + m)`, 2²⁴) under which
/// [`Strategy::Auto`] replicates all rows (or columns) at once; above it, it chunks to stay near
/// this many elements per pass.
#[doc(hidden)]
pub const AUTO_VECTORIZE_BUDGET: usize = 1 << 24;

/// Element budget (`rows × batch × (m + n)`) under which [`Strategy::Auto`] runs a
/// [`Strategy::Batched`] pass over all rows at once (2²⁸, 1 GiB of float32); above it, it
/// chunks. Higher than [`AUTO_VECTORIZE_BUDGET`] because a batched pass replicates no forward
/// and `J` itself (`rows × batch × n`) must fit anyway, while each extra pass costs time: the exact
/// CAE penalty (B = 128, 784 → 256, create_graph) took 338 ms in one pass and 455 ms in four
/// chunks of 64 rows on a 2-core CPU (PyTorch's vmap(jacrev): 342 ms). On CUDA the chunk comes
/// from the device's free memory instead ([`chunk_for_memory`]), when it can be read.
#[doc(hidden)]
pub const AUTO_BATCHED_BUDGET: usize = 1 << 28;

/// Safety factor of [`chunk_for_memory`]: a pass's working memory per row, in units of one
/// row's input and output (`batch · (m + n)` elements) — the cotangent row, the gradient row and
/// the intermediates of the backward pass.
#[doc(hidden)]
pub const MEMORY_ROW_FACTOR: u64 = 4;

/// The rows (or stacked copies) per pass that fit `free_bytes` of device memory: `None` when all
/// `rows` fit, else `Some(c)` with `c ≥ 1`.
///
/// `J` itself (`batch · m · n` elements) must fit, and is set aside first; each row of a pass is
/// budgeted [`MEMORY_ROW_FACTOR`]` · batch · (m + n)` elements; 10 % of the free memory is left
/// to the allocator. Used by [`Strategy::resolve_for`] on CUDA, where the free memory is read
/// from the device (`cudaMemGetInfo`) — so the largest `J` that fits (n = 65 536 in float32:
/// 16 GiB on an 80 GB card) is computed in as few passes as memory allows. A `J` that does not
/// fit at all gets one row per pass, and its allocation then fails with
/// [`Error::OutOfMemory`].
///
/// ```
/// use tch_jacobian::strategy::chunk_for_memory;
/// let gib = 1u64 << 30;
/// // n = m = 65 536, float32, 79 GiB free: J = 16 GiB, 2 MiB a row -> 3 passes of 28 211 rows.
/// assert_eq!(chunk_for_memory(79 * gib, 65_536, 65_536, 65_536, 1, 4), Some(28_211));
/// // n = m = 1024: everything fits in one pass.
/// assert_eq!(chunk_for_memory(79 * gib, 1024, 1024, 1024, 1, 4), None);
/// // J larger than the memory: one row per pass.
/// assert_eq!(chunk_for_memory(gib, 65_536, 65_536, 65_536, 1, 4), Some(1));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
#[doc(hidden)]
pub fn chunk_for_memory(
    free_bytes: u64,
    rows: usize,
    m: usize,
    n: usize,
    batch: usize,
    elt_bytes: usize,
) -> Option<usize> {
    let elt = elt_bytes.max(1) as u64;
    let batch = batch.max(1) as u64;
    let j_bytes = elt * batch * m as u64 * n as u64;
    let per_row = MEMORY_ROW_FACTOR * elt * batch * (m + n).max(1) as u64;
    let usable = (free_bytes / 10 * 9).saturating_sub(j_bytes);
    let fit = (usable / per_row) as usize;
    (fit < rows).then_some(fit.max(1))
}

/// What a Jacobian computation looks like, for [`Strategy::resolve_for`]: `m` output and `n`
/// input elements per sample, `batch` samples (1 for a plain Jacobian), whether the function is
/// available as a closure, and the device and dtype it runs in.
///
/// `#[doc(hidden)]`, with [`Strategy::resolve_for`]: public for bench/ (which prints what `Auto`
/// resolved to on a device), not part of the stable API.
///
/// ```
/// use tch::{Device, Kind};
/// use tch_jacobian::{strategy::Work, Strategy};
/// let w = Work { m: 3, n: 3, batch: 1, have_closure: false, device: Device::Cpu, kind: Kind::Double };
/// assert_eq!(Strategy::RowLoop.resolve_for(&w), Strategy::RowLoop);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[doc(hidden)]
pub struct Work {
    /// Output elements per sample.
    pub m: usize,
    /// Input elements per sample (all inputs together).
    pub n: usize,
    /// Samples (1 for a plain Jacobian).
    pub batch: usize,
    /// Whether the replicated strategies are possible (a `*_of` call).
    pub have_closure: bool,
    /// Where it runs.
    pub device: Device,
    /// Its dtype (for the memory rule on CUDA).
    pub kind: Kind,
}

impl Work {
    /// The work of differentiating `y` (its device and dtype), `m`/`n` elements per sample.
    pub(crate) fn of(y: &Tensor, m: usize, n: usize, batch: usize, have_closure: bool) -> Self {
        Work {
            m,
            n,
            batch,
            have_closure,
            device: y.device(),
            kind: y.kind(),
        }
    }
}

/// `None` when `copies` copies of `per_copy` elements (times `batch`) fit `budget`, else the
/// largest power-of-two chunk that does.
fn auto_chunk(copies: usize, per_copy: usize, batch: usize, budget: usize) -> Option<usize> {
    let chunk = (budget / (batch.max(1) * per_copy.max(1))).max(1);
    (chunk < copies).then(|| 1 << chunk.ilog2())
}

impl Strategy {
    /// The concrete strategy used for a Jacobian with `m` output and `n` input elements on the
    /// CPU; `have_closure` says whether the replicated strategies ([`Strategy::Vectorized`],
    /// [`Strategy::VectorizedForward`]) are possible (a `*_of` call). These are the rules every
    /// call of the crate applies, on its tensors' device; other strategies are returned
    /// unchanged. A Jacobian is *tall* when `m ≥ 4·n`.
    ///
    /// `Auto` resolves, when the native engine is built ([`crate::native::available`]), to
    /// * `Forward` for a tall Jacobian on the CPU, with or without a closure: `Jᵀw` once, then
    ///   one batched pass over the `n` identity tangents (forward-mode AD for a closure) beats
    ///   one batched pass over `m` rows (16 → 1024 on a 2-core CPU: 0.17–0.30 ms against
    ///   1.6–1.8 ms for `Batched` and 0.33–0.58 ms for `VectorizedForward`; PyTorch's jacfwd
    ///   0.36 ms);
    /// * `Batched` otherwise — on a CUDA device at every shape, tall or not — with or without a
    ///   closure and at every size (n = m = 3: 0.049 ms against 0.095 ms for the row loop;
    ///   n = m = 64 … 1024: 3.5× … 16× faster than the row loop, 2× faster than `Vectorized`).
    ///   On the CPU `chunk_size = None` when `m · (m + n)` elements (times the batch, see
    ///   [`Strategy::resolve_batched`]) fit a budget of 2²⁸ (1 GiB of float32), else the
    ///   power-of-two chunk that keeps each pass under it; on CUDA the chunk comes from the
    ///   device's free memory (`J` set aside, 10 % left to the allocator), so a `J` that fits is
    ///   computed in as few passes as memory allows.
    ///
    /// Without the engine, to
    /// * `RowLoop` for at most 4 outputs, on any device;
    /// * where a closure is usable (a `*_of` call on CUDA, or on the CPU with fewer than 16
    ///   samples): `VectorizedForward` when tall, else `Vectorized`, chunked the same way by a
    ///   budget of 2²⁴ elements (on CUDA too: without the engine the free memory is not read);
    /// * otherwise `Forward` when tall, else `RowLoop` — on CUDA as well, although a loop of
    ///   small backward passes is launch-bound there (H100, B = 128, 784 → 64: row loop 7.4 ms,
    ///   replicated forward 0.73 ms).
    ///
    /// Under `create_graph` the crate may still run another strategy than the one resolved, where
    /// libtorch's second derivatives would be wrong or a batched pass is refused
    /// ([`crate::second_order`]; [`crate::second_order::take_reroutes`] reports it).
    ///
    /// ```
    /// use tch_jacobian::{native, Strategy};
    /// assert_eq!(Strategy::RowLoop.resolve(4096, 1, true), Strategy::RowLoop);
    /// if native::available() {
    ///     assert_eq!(Strategy::Auto.resolve(3, 3, false), Strategy::Batched { chunk_size: None });
    ///     assert_eq!(Strategy::Auto.resolve(1024, 16, true), Strategy::Forward);
    ///     assert_eq!(Strategy::Auto.resolve(1024, 16, false), Strategy::Forward);
    ///     assert_eq!(Strategy::Auto.resolve(16384, 16384, false), Strategy::Batched { chunk_size: Some(8192) });
    /// } else {
    ///     assert_eq!(Strategy::Auto.resolve(3, 3, true), Strategy::RowLoop);
    ///     assert_eq!(Strategy::Auto.resolve(1024, 16, false), Strategy::Forward);
    ///     assert_eq!(Strategy::Auto.resolve(256, 256, true), Strategy::Vectorized { chunk_size: None });
    /// }
    /// # use tch_jacobian::strategy as s;
    /// # // The numbers quoted above.
    /// # assert_eq!((s::AUTO_TALL_RATIO, s::AUTO_ROW_LOOP_MAX_ROWS, s::AUTO_BATCH_LOOP_MIN), (4, 4, 16));
    /// # assert_eq!((s::AUTO_BATCHED_BUDGET, s::AUTO_VECTORIZE_BUDGET), (1 << 28, 1 << 24));
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    pub fn resolve(self, m: usize, n: usize, have_closure: bool) -> Strategy {
        self.resolve_batched(m, n, 1, have_closure)
    }

    /// [`Strategy::resolve`] for `batch` samples evaluated together (per-sample Jacobians), on
    /// the CPU: the same rules, with the element budget shared by the batch
    /// (`chunk · batch · (m + n) ≤ 2²⁸` for `Batched` with the native engine, `≤ 2²⁴` for the
    /// replicated strategies without it). Without the native engine, from 16 samples on `Auto`
    /// loops over rows (or columns) instead of stacking copies: each pass is then a batched
    /// matrix product, and the loop does half the arithmetic of the stacked forward + backward
    /// (B = 128, 784 → 64: RowLoop 16 ms, Vectorized 25 ms on a 2-core CPU).
    ///
    /// ```
    /// use tch_jacobian::{native, Strategy};
    /// if native::available() {
    ///     assert_eq!(Strategy::Auto.resolve_batched(64, 784, 128, true), Strategy::Batched { chunk_size: None });
    ///     assert_eq!(Strategy::Auto.resolve_batched(8192, 8192, 8, false), Strategy::Batched { chunk_size: Some(2048) });
    /// } else {
    ///     assert_eq!(Strategy::Auto.resolve_batched(64, 784, 128, true), Strategy::RowLoop);
    ///     assert_eq!(Strategy::Auto.resolve_batched(2048, 2048, 8, true), Strategy::Vectorized { chunk_size: Some(512) });
    /// }
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    pub fn resolve_batched(self, m: usize, n: usize, batch: usize, have_closure: bool) -> Strategy {
        self.resolve_for(&Work {
            m,
            n,
            batch,
            have_closure,
            device: Device::Cpu,
            kind: Kind::Float,
        })
    }

    /// The concrete strategy for `work` on its device — what every call of the crate uses;
    /// the rules, on the CPU and on CUDA, are in [`Strategy::resolve`], which (with
    /// [`Strategy::resolve_batched`]) is this on the CPU.
    ///
    /// `#[doc(hidden)]` with [`Work`]: public for bench/, not part of the stable API.
    ///
    /// ```
    /// use tch::{Device, Kind};
    /// use tch_jacobian::{native, strategy::Work, Strategy};
    /// let batch = Work { m: 64, n: 784, batch: 128, have_closure: true, device: Device::Cpu, kind: Kind::Float };
    /// let on_cpu = Strategy::Auto.resolve_for(&batch);
    /// assert_eq!(on_cpu, Strategy::Auto.resolve_batched(64, 784, 128, true));
    /// if !native::available() {
    ///     assert_eq!(on_cpu, Strategy::RowLoop); // loops over rows from 16 samples on
    ///     let on_gpu = Strategy::Auto.resolve_for(&Work { device: Device::Cuda(0), ..batch });
    ///     assert!(matches!(on_gpu, Strategy::Vectorized { .. })); // the closure is used on a GPU
    ///     let tiny = Work { m: 4, device: Device::Cuda(0), ..batch };
    ///     assert_eq!(Strategy::Auto.resolve_for(&tiny), Strategy::RowLoop); // at most 4 outputs
    /// } else {
    ///     let on_gpu = Strategy::Auto.resolve_for(&Work { m: 1024, n: 16, device: Device::Cuda(0), ..batch });
    ///     assert!(matches!(on_gpu, Strategy::Batched { .. })); // tall, but not Forward on CUDA
    /// }
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    #[doc(hidden)]
    pub fn resolve_for(self, work: &Work) -> Strategy {
        if self != Strategy::Auto {
            return self;
        }
        // Inside a Laplacian's closure (collapsed Taylor mode), a derivative runs passes the
        // session can follow: no functorch transform, no dual numbers.
        if crate::native::taylor::session_open() {
            return Strategy::RowLoop;
        }
        auto_for(work, true)
    }

    /// What `Auto` runs for `work` when the forward-mode strategies are out (see
    /// [`crate::second_order`]): the same rules without `Forward` and `VectorizedForward`.
    pub(crate) fn resolve_reverse(work: &Work) -> Strategy {
        auto_for(work, false)
    }
}

/// `Auto`'s rules ([`Strategy::resolve_for`]); `forward_mode` says whether `Forward` and
/// `VectorizedForward` may be chosen.
fn auto_for(work: &Work, forward_mode: bool) -> Strategy {
    let Work {
        m,
        n,
        batch,
        have_closure,
        device,
        kind,
    } = *work;
    let cuda = device.is_cuda();
    let tall = forward_mode && n > 0 && m >= AUTO_TALL_RATIO * n;
    let closure = have_closure && (cuda || batch < AUTO_BATCH_LOOP_MIN);
    // Rows (or copies) per pass: from free memory on CUDA when it can be read, else the
    // element budget.
    let chunk = |rows: usize, budget: usize| -> Option<usize> {
        let free = if cuda {
            crate::native::cuda_free_memory(device)
        } else {
            None
        };
        match free {
            Some(free) => chunk_for_memory(free, rows, m, n, batch, kind.elt_size_in_bytes()),
            None => auto_chunk(rows, m + n, batch, budget),
        }
    };
    if crate::native::available() {
        return if tall && !cuda {
            Strategy::Forward
        } else {
            Strategy::Batched {
                chunk_size: chunk(m, AUTO_BATCHED_BUDGET),
            }
        };
    }
    crate::native::warn_missing_engine(); // once per process
    if m <= AUTO_ROW_LOOP_MAX_ROWS {
        return Strategy::RowLoop;
    }
    match (closure, tall) {
        (true, true) => Strategy::VectorizedForward {
            chunk_size: chunk(n, AUTO_VECTORIZE_BUDGET),
        },
        (true, false) => Strategy::Vectorized {
            chunk_size: chunk(m, AUTO_VECTORIZE_BUDGET),
        },
        (false, true) => Strategy::Forward,
        (false, false) => Strategy::RowLoop,
    }
}

impl Strategy {
    pub(crate) fn validate(self) -> Result<Self> {
        if let Strategy::Vectorized {
            chunk_size: Some(0),
        }
        | Strategy::VectorizedForward {
            chunk_size: Some(0),
        }
        | Strategy::Batched {
            chunk_size: Some(0),
        } = self
        {
            return Err(Error::InvalidArgument(
                "chunk_size must be at least 1, got 0".into(),
            ));
        }
        Ok(self)
    }
}

/// Options shared by every Jacobian-like call; PyTorch's names and defaults.
///
/// * `create_graph` (default `false`): the result is itself differentiable, so a loss built from
///   it (e.g. `‖J‖_F²`) back-propagates to the parameters and inputs — PyTorch's
///   `create_graph=True`. The crate keeps those second derivatives right where libtorch's own
///   rules are wrong ([`crate::second_order`]: it scans the graph and may reroute or refuse a
///   strategy; [`crate::second_order::take_reroutes`] says when).
/// * `strict` (default `false`): an output that does not depend on an input is an error instead
///   of a block of zeros — PyTorch's `strict=True`.
/// * `strategy` (default [`Strategy::Auto`]).
/// * `vmap_fallback` (default `true`): in [`Strategy::Batched`] passes, an op without a batching
///   rule loops over the chunk's rows for that op (libtorch's vmap fallback; the op is recorded,
///   see [`crate::native::take_vmap_fallbacks`]); `false` makes it an
///   [`Error::NoBatchingRule`] — for tests that prove a model takes the fast path.
/// * `progress` (default none): called after every pass with the [`Progress`] so far — for a
///   progress bar over a long Jacobian, in the CLI or in training code.
/// * `check_independence` (default `true`): the per-sample functions (batch Jacobians, per-sample
///   Hessians and Laplacians) check, with one extra backward pass, that the samples do not
///   interact, and return [`Error::Contract`] when they do ([`crate::independence`](mod@crate::independence)).
///   `false` skips the check — for hot loops after a first checked call.
///
/// ```
/// use std::cell::Cell;
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{jacobian_with, JacobianOptions, Progress, Strategy};
/// let opts = JacobianOptions::default().create_graph(true).strategy(Strategy::RowLoop);
/// assert!(opts.create_graph && !opts.strict && opts.vmap_fallback);
///
/// let x = Tensor::randn([4], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
/// let seen = Cell::new((0, 0));
/// let report = |p: Progress| seen.set((p.done, p.total));
/// let opts = JacobianOptions::default().strategy(Strategy::RowLoop).progress(&report);
/// jacobian_with(&x.sin(), &[&x], &opts)?;
/// assert_eq!(seen.get(), (4, 4)); // 4 of 4 rows
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
///
/// `#[non_exhaustive]`: options may be added, so outside this crate it is built from
/// [`JacobianOptions::default`] and the setters, not by a struct literal; its fields stay
/// readable.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct JacobianOptions<'a> {
    /// Keep the result differentiable (PyTorch's `create_graph`).
    pub create_graph: bool,
    /// Refuse outputs that do not depend on an input (PyTorch's `strict`).
    pub strict: bool,
    /// How to compute it.
    pub strategy: Strategy,
    /// Let batched passes loop over ops that have no batching rule (else an error).
    pub vmap_fallback: bool,
    /// Called after every pass.
    pub progress: Option<&'a dyn Fn(Progress)>,
    /// Random ops inside a per-sample closure (torch.func's vmap `randomness`).
    pub randomness: Randomness,
    /// Check that the samples of a per-sample function do not interact.
    pub check_independence: bool,
}

/// What random ops (dropout, `randn`, …) inside the closure of
/// [`per_sample_gradients_of`](crate::per_sample_gradients_of) and
/// [`per_sample_gradients_of_module`](crate::per_sample_gradients_of_module) do — torch.func's
/// `vmap(..., randomness=…)`. Set it with [`JacobianOptions::randomness`].
///
/// | value | each sample's draw | torch.func |
/// |---|---|---|
/// | [`Different`](Randomness::Different) (default) | its own (its own dropout mask), as a loop over samples draws | `"different"` |
/// | [`Same`](Randomness::Same) | one draw shared by the samples of a call | `"same"` |
/// | [`Error`](Randomness::Error) | a random op is an error | `"error"` (torch.func's default) |
///
/// The default is `Different`, unlike torch.func's `"error"`: it is what a loop over samples
/// (the crate's `RowLoop` door, and DP-SGD codes such as Opacus) computes. Under
/// [`Strategy::RowLoop`] (or without the native engine) the closure runs once per sample:
/// `Different` draws per sample, `Same` reseeds torch's global generator with one drawn seed
/// before each sample (so every sample sees the same numbers, unless another thread draws from
/// that generator at the same time), and `Error` cannot be checked there.
/// `per_sample_gradients_of_module` builds the model (its initial draws) under `Same` in every
/// mode; the setting applies to the loss.
///
/// ```
/// use tch_jacobian::{JacobianOptions, Randomness};
/// let opts = JacobianOptions::default();
/// assert_eq!(opts.randomness, Randomness::Different);
/// let opts = opts.randomness(Randomness::Same);
/// assert_eq!(opts.randomness, Randomness::Same);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Randomness {
    /// Each sample draws its own numbers.
    #[default]
    Different,
    /// One draw, shared by the samples of a call.
    Same,
    /// A random op inside the closure is an error.
    Error,
}

/// How far a Jacobian computation is, handed to [`JacobianOptions::progress`] after each pass:
/// `done` of `total` rows of `J` (columns for [`Strategy::Forward`] and
/// [`Strategy::VectorizedForward`]), computed by `strategy` (the concrete one: what `Auto`
/// resolved to, or `RowLoop` when a model's Jacobian falls back to it). `#[non_exhaustive]`:
/// fields may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The strategy running.
    pub strategy: Strategy,
    /// Rows (or columns) done.
    pub done: usize,
    /// Rows (or columns) in all.
    pub total: usize,
}

impl Default for JacobianOptions<'_> {
    fn default() -> Self {
        JacobianOptions {
            create_graph: false,
            strict: false,
            strategy: Strategy::Auto,
            vmap_fallback: true,
            progress: None,
            randomness: Randomness::Different,
            check_independence: true,
        }
    }
}

impl std::fmt::Debug for JacobianOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JacobianOptions")
            .field("create_graph", &self.create_graph)
            .field("strict", &self.strict)
            .field("strategy", &self.strategy)
            .field("vmap_fallback", &self.vmap_fallback)
            .field("randomness", &self.randomness)
            .field("check_independence", &self.check_independence)
            .field("progress", &self.progress.map(|_| "Fn(Progress)"))
            .finish()
    }
}

impl PartialEq for JacobianOptions<'_> {
    /// Equal settings; two progress callbacks are equal when they are the same object.
    fn eq(&self, other: &Self) -> bool {
        let same_progress = match (self.progress, other.progress) {
            (None, None) => true,
            (Some(a), Some(b)) => std::ptr::addr_eq(a, b),
            _ => false,
        };
        self.create_graph == other.create_graph
            && self.strict == other.strict
            && self.strategy == other.strategy
            && self.vmap_fallback == other.vmap_fallback
            && self.randomness == other.randomness
            && self.check_independence == other.check_independence
            && same_progress
    }
}

impl Eq for JacobianOptions<'_> {}

impl<'a> JacobianOptions<'a> {
    /// Sets `create_graph`.
    pub fn create_graph(mut self, create_graph: bool) -> Self {
        self.create_graph = create_graph;
        self
    }
    /// Sets `strict`.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }
    /// Sets the strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }
    /// Sets `randomness` (per-sample closures' random ops, [`Randomness`]).
    pub fn randomness(mut self, randomness: Randomness) -> Self {
        self.randomness = randomness;
        self
    }

    /// Sets `vmap_fallback`.
    pub fn vmap_fallback(mut self, vmap_fallback: bool) -> Self {
        self.vmap_fallback = vmap_fallback;
        self
    }
    /// Sets the progress callback.
    pub fn progress(mut self, progress: &'a dyn Fn(Progress)) -> Self {
        self.progress = Some(progress);
        self
    }
    /// Sets `check_independence` (the per-sample functions' check that samples do not interact;
    /// `false` for hot loops after a first checked call).
    pub fn check_independence(mut self, check: bool) -> Self {
        self.check_independence = check;
        self
    }

    /// Refuses the options `func` does not read that are set away from their defaults: each
    /// `(name, set)` pair names one such option and whether it is set. Every accepted option is
    /// read or refused — never silently ignored.
    pub(crate) fn refuse_unread(&self, func: &str, unread: &[(&str, bool)]) -> Result<()> {
        let set: Vec<&str> = unread.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
        if set.is_empty() {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "{func} does not read the option{} {} of JacobianOptions; leave {} at the default",
            if set.len() > 1 { "s" } else { "" },
            set.join(", "),
            if set.len() > 1 { "them" } else { "it" }
        )))
    }

    /// For the functions that compute no per-sample result from a closure that sees the batch:
    /// `randomness` (read only by the per-sample gradients) and `check_independence(false)`
    /// (read only by the per-sample functions) are refused when set.
    pub(crate) fn refuse_per_sample_options(&self, func: &str) -> Result<()> {
        self.refuse_unread(
            func,
            &[
                ("randomness", self.randomness != Randomness::default()),
                ("check_independence(false)", !self.check_independence),
            ],
        )
    }

    /// For the per-sample Jacobians and Hessians: `randomness` (read only by the per-sample
    /// gradients) is refused when set.
    pub(crate) fn refuse_randomness(&self, func: &str) -> Result<()> {
        self.refuse_unread(
            func,
            &[("randomness", self.randomness != Randomness::default())],
        )
    }

    /// The settings of one pass, with the names used in its errors.
    pub(crate) fn pass<'n>(&self, names: Names<'n>) -> Pass<'n> {
        Pass {
            create_graph: self.create_graph,
            strict: self.strict,
            vmap_fallback: self.vmap_fallback,
            names,
        }
    }
}

impl std::fmt::Display for Strategy {
    /// The one spelling of each strategy, used by the CLI, the examples and the benches:
    /// `auto`, `row-loop`, `batched`, `vectorized`, `forward`, `vectorized-forward`, with the
    /// chunk as `batched:64`.
    ///
    /// ```
    /// use tch_jacobian::Strategy;
    /// assert_eq!(Strategy::RowLoop.to_string(), "row-loop");
    /// assert_eq!(Strategy::Batched { chunk_size: Some(64) }.to_string(), "batched:64");
    /// assert_eq!("vectorized-forward:8".parse::<Strategy>()?, Strategy::VectorizedForward { chunk_size: Some(8) });
    /// assert_eq!("batched".parse::<Strategy>()?, Strategy::Batched { chunk_size: None });
    /// assert!("rowloop".parse::<Strategy>().is_err());
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, chunk) = match *self {
            Strategy::Auto => ("auto", None),
            Strategy::RowLoop => ("row-loop", None),
            Strategy::Batched { chunk_size } => ("batched", chunk_size),
            Strategy::Vectorized { chunk_size } => ("vectorized", chunk_size),
            Strategy::Forward => ("forward", None),
            Strategy::VectorizedForward { chunk_size } => ("vectorized-forward", chunk_size),
            Strategy::Taylor => ("taylor", None),
        };
        match chunk {
            Some(c) => write!(f, "{name}:{c}"),
            None => f.write_str(name),
        }
    }
}

impl Strategy {
    /// Every strategy's name, as [`Display`](std::fmt::Display) writes it and
    /// [`FromStr`](std::str::FromStr) reads it. A slice, not an array: it grows with the enum.
    pub const NAMES: &[&str] = &[
        "auto",
        "row-loop",
        "batched",
        "vectorized",
        "forward",
        "vectorized-forward",
        "taylor",
    ];

    /// The same strategy with `chunk_size` set, for those that have one; an error for the
    /// others (a chunk means nothing to `auto`, `row-loop` or `forward`).
    ///
    /// ```
    /// use tch_jacobian::Strategy;
    /// assert_eq!(Strategy::Batched { chunk_size: None }.with_chunk_size(Some(8))?, Strategy::Batched { chunk_size: Some(8) });
    /// assert!(Strategy::RowLoop.with_chunk_size(Some(8)).is_err());
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    pub fn with_chunk_size(self, chunk: Option<usize>) -> Result<Strategy> {
        Ok(match (self, chunk) {
            (s, None) => s,
            (Strategy::Batched { .. }, c) => Strategy::Batched { chunk_size: c },
            (Strategy::Vectorized { .. }, c) => Strategy::Vectorized { chunk_size: c },
            (Strategy::VectorizedForward { .. }, c) => {
                Strategy::VectorizedForward { chunk_size: c }
            }
            (s, Some(_)) => {
                return Err(Error::InvalidArgument(format!(
                    "a chunk size applies to batched, vectorized or vectorized-forward, not {s}"
                )))
            }
        })
    }
}

impl std::str::FromStr for Strategy {
    type Err = Error;

    /// Reads what [`Display`](std::fmt::Display) writes: a name from [`Strategy::NAMES`],
    /// optionally with `:CHUNK` for the chunked strategies.
    fn from_str(s: &str) -> Result<Strategy> {
        let (name, chunk) = match s.split_once(':') {
            Some((name, c)) => {
                let c: usize = c.parse().map_err(|_| {
                    Error::InvalidArgument(format!("bad chunk size {c:?} in strategy {s:?}"))
                })?;
                (name, Some(c))
            }
            None => (s, None),
        };
        let base = match name {
            "auto" => Strategy::Auto,
            "row-loop" => Strategy::RowLoop,
            "batched" => Strategy::Batched { chunk_size: None },
            "vectorized" => Strategy::Vectorized { chunk_size: None },
            "forward" => Strategy::Forward,
            "vectorized-forward" => Strategy::VectorizedForward { chunk_size: None },
            "taylor" => Strategy::Taylor,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown strategy {other:?}; one of {}",
                    Strategy::NAMES.join(", ")
                )))
            }
        };
        base.with_chunk_size(chunk)?.validate()
    }
}
