//! How a Jacobian is computed: [`Strategy`] and the options shared by every call,
//! [`JacobianOptions`].
//!
//! | strategy | backward passes | needs a closure | best for |
//! |---|---|---|---|
//! | [`Strategy::RowLoop`] | `m` (one per output element) | no | the notebook; small `m`; any `f` |
//! | [`Strategy::Batched`] | `⌈m / chunk⌉` batched passes, no extra forward pass | no | everything else (native engine, see [`crate::native`]) |
//! | [`Strategy::Vectorized`] | `⌈m / chunk⌉`, over `f` applied to `chunk` copies of `x` | yes, row-wise | square and wide Jacobians, GPUs |
//! | [`Strategy::Forward`] | 1 + `n` (one per input element, double-backward JVPs) | no | tall Jacobians (`m ≫ n`) |
//! | [`Strategy::VectorizedForward`] | `2·⌈n / chunk⌉`, over `f` applied to `chunk` copies of `x` | yes, row-wise | tall Jacobians with a closure |
//! | [`Strategy::Auto`] | picks one of the above by shape, see [`Strategy::resolve`] | – | default |
//!
//! Here `m` is the number of output elements and `n` the number of input elements.
//!
//! The engines, in a few lines each:
//!
//! * **row loop** (`RowLoop`, and `Forward` by columns): one ordinary backward pass per row
//!   (column). Costs `m` passes through the graph, each one small; no assumption about `f`;
//!   what the notebook does. Auto uses it for at most [`AUTO_ROW_LOOP_MAX_ROWS`] outputs.
//! * **replicated** (`Vectorized`, `VectorizedForward`): `f` evaluated again on `c` stacked copies
//!   of `x`, one backward pass of the stack. Costs one extra forward over `c` copies (twice the
//!   arithmetic of a batched pass), needs a row-wise closure. Auto uses it only when the native
//!   engine is not built.
//! * **batched** (`Batched`, native): one backward pass of the caller's own graph over a batch of
//!   `c` identity cotangents at a functorch vmap level — what `torch.func.jacrev` does. No
//!   closure, no extra forward; ops without a batching rule loop over that op only. Auto's
//!   default whenever the engine is built.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// A way of computing `J[i, j] = ∂y_i/∂x_j`.
///
/// All strategies produce the same `J` (up to floating-point summation order); they differ in
/// speed and memory. They all go through the crate's one VJP primitive.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Choose by shape; see [`Strategy::resolve`].
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
    /// Column by column, `J[:, j] = J e_j`, by forward-mode products computed with the
    /// double-backward trick: `g(u) = Jᵀu` is built once with `create_graph`, then
    /// `J e_j = ∂(g(u)·e_j)/∂u` costs one backward pass per input element.
    ///
    /// (True forward-mode dual numbers are not exposed by tch.) Needs twice-differentiable ops.
    Forward,
    /// [`Strategy::Forward`] batched like [`Strategy::Vectorized`] (PyTorch's `jacfwd`): `x` is
    /// stacked once per input element `j` (in chunks of `chunk_size`), `Y = f(X)`, and the
    /// double-backward trick with a zero cotangent `U` shaped like `Y` gives all columns of the
    /// chunk, `Y[r] ↦ J e_{j_r}`, in two backward passes. Same row-wise contract as `Vectorized`;
    /// the cheapest choice for tall Jacobians (`m ≫ n`) when `f` is available.
    VectorizedForward {
        /// At most this many input elements (columns) per pass; `Some(0)` is an error.
        chunk_size: Option<usize>,
    },
}

/// Output-to-input ratio above which [`Strategy::Auto`] goes column by column.
pub const AUTO_TALL_RATIO: usize = 4;

/// Without the native engine, up to this many output elements [`Strategy::Auto`] keeps the
/// plain row loop: the vectorized
/// strategies' fixed costs (an extra forward pass and the row-wise checks) outweigh a few
/// backward passes (n = m = 3: RowLoop 0.17 ms, Vectorized 0.27 ms on a 2-core CPU).
pub const AUTO_ROW_LOOP_MAX_ROWS: usize = 4;

/// Without the native engine, from this batch size on, [`Strategy::resolve_batched`]'s `Auto`
/// loops over rows (or columns)
/// instead of stacking copies: each pass is then a batched matrix product that keeps the CPU
/// busy, and the loop does half the arithmetic of the stacked forward + backward
/// (B = 128, 784 → 64: RowLoop 16 ms, Vectorized 25 ms).
pub const AUTO_BATCH_LOOP_MIN: usize = 16;

/// Element budget (`copies × (n + m)`) under which [`Strategy::Auto`] vectorizes all rows at once;
/// above it, it chunks to stay near this many elements per pass.
pub const AUTO_VECTORIZE_BUDGET: usize = 1 << 24;

/// Element budget (`rows × batch × (m + n)`) under which [`Strategy::Auto`] runs a
/// [`Strategy::Batched`] pass over all rows at once (2²⁸, 1 GiB of float32); above it, it
/// chunks. Higher than [`AUTO_VECTORIZE_BUDGET`] because a batched pass replicates no forward
/// and `J` itself (`rows × batch × n`) must fit anyway, while each extra pass costs time: the exact
/// CAE penalty (B = 128, 784 → 256, create_graph) took 338 ms in one pass and 455 ms in four
/// chunks of 64 rows on a 2-core CPU (PyTorch's vmap(jacrev): 342 ms).
pub const AUTO_BATCHED_BUDGET: usize = 1 << 28;

/// Safety factor of [`chunk_for_memory`]: a pass's working memory per row, in units of one
/// row's input and output (`batch · (m + n)` elements) — the cotangent row, the gradient row and
/// the intermediates of the backward pass.
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
/// ```
/// use tch::{Device, Kind};
/// use tch_jacobian::{strategy::Work, Strategy};
/// let w = Work { m: 3, n: 3, batch: 1, have_closure: false, device: Device::Cpu, kind: Kind::Double };
/// assert_eq!(Strategy::RowLoop.resolve_for(&w), Strategy::RowLoop);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The concrete strategy used for a Jacobian with `m` output and `n` input elements;
    /// `have_closure` says whether the replicated strategies ([`Strategy::Vectorized`],
    /// [`Strategy::VectorizedForward`]) are possible.
    ///
    /// `Auto` resolves, when the native engine is built ([`crate::native::available`]), to
    /// * `VectorizedForward` for a tall Jacobian, `m ≥ 4·n` ([`AUTO_TALL_RATIO`]), with a closure:
    ///   two passes over `n` stacked copies beat one batched pass over `m` rows (16 → 1024:
    ///   0.33 ms against 1.06 ms on a 2-core CPU; PyTorch's jacfwd 0.32 ms);
    /// * `Batched` otherwise, with or without a closure and at every size (n = m = 3: 0.049 ms
    ///   against 0.095 ms for the row loop; n = m = 64 … 1024: 3.5× … 16× faster than the row
    ///   loop, 2× faster than `Vectorized`). `chunk_size = None` when `m · (m + n)` elements fit
    ///   [`AUTO_BATCHED_BUDGET`] (2²⁸), else a power-of-two chunk that keeps each pass under it.
    ///
    /// Without the engine, to
    /// * `RowLoop` for at most [`AUTO_ROW_LOOP_MAX_ROWS`] outputs;
    /// * with a closure `VectorizedForward` when tall, else `Vectorized`, chunked by
    ///   [`AUTO_VECTORIZE_BUDGET`] (2²⁴) in the same way;
    /// * without one `Forward` when tall, else `RowLoop`.
    ///
    /// Other strategies are returned unchanged.
    ///
    /// ```
    /// use tch_jacobian::{native, Strategy};
    /// assert_eq!(Strategy::RowLoop.resolve(4096, 1, true), Strategy::RowLoop);
    /// if native::available() {
    ///     assert_eq!(Strategy::Auto.resolve(3, 3, false), Strategy::Batched { chunk_size: None });
    ///     assert_eq!(Strategy::Auto.resolve(1024, 16, true), Strategy::VectorizedForward { chunk_size: None });
    ///     assert_eq!(Strategy::Auto.resolve(1024, 16, false), Strategy::Batched { chunk_size: None });
    ///     assert_eq!(Strategy::Auto.resolve(16384, 16384, false), Strategy::Batched { chunk_size: Some(8192) });
    /// } else {
    ///     assert_eq!(Strategy::Auto.resolve(3, 3, true), Strategy::RowLoop);
    ///     assert_eq!(Strategy::Auto.resolve(1024, 16, false), Strategy::Forward);
    ///     assert_eq!(Strategy::Auto.resolve(256, 256, true), Strategy::Vectorized { chunk_size: None });
    /// }
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    pub fn resolve(self, m: usize, n: usize, have_closure: bool) -> Strategy {
        self.resolve_batched(m, n, 1, have_closure)
    }

    /// [`Strategy::resolve`] for `batch` samples evaluated together (per-sample Jacobians): the
    /// same rules, with the element budget shared by the batch (`chunk · batch · (m + n) ≤ 2²⁴`).
    /// Without the native engine, from [`AUTO_BATCH_LOOP_MIN`] samples on `Auto` loops over rows
    /// (or columns) instead of stacking copies: each pass is then a batched matrix product, and
    /// the loop does half the arithmetic of the stacked forward + backward (B = 128, 784 → 64:
    /// RowLoop 16 ms, Vectorized 25 ms on a 2-core CPU).
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

    /// The concrete strategy for `work` on its device — what every call of the crate uses.
    /// [`Strategy::resolve`] and [`Strategy::resolve_batched`] are this on the CPU.
    ///
    /// On the CPU the rules are those of [`Strategy::resolve`] (batches share the element
    /// budget). On a CUDA device a loop of small backward passes is launch-bound — the worst
    /// choice (H100, B = 128, 784 → 64: row loop 7.4 ms, replicated forward 0.73 ms; n = 1024: row
    /// loop 117 ms, replicated 0.74 ms) — so `Auto` resolves to
    /// * `Batched` at every size when the native engine is built (one pass; a probe of it on the
    ///   H100 beat PyTorch's best at n = 64 … 4096, the batch and the exact penalty), with the
    ///   chunk taken from the device's free memory ([`chunk_for_memory`]);
    /// * without the engine, with a closure `Vectorized` (`VectorizedForward` when tall) at every
    ///   batch size, chunked the same way; without one `Forward` when tall, else `RowLoop` (the
    ///   only strategies that need no closure).
    ///
    /// When the free memory cannot be read (no engine), CUDA chunks by the element budgets.
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
    ///     assert!(matches!(on_gpu, Strategy::Vectorized { .. })); // never a loop on a GPU
    /// }
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    pub fn resolve_for(self, work: &Work) -> Strategy {
        if self != Strategy::Auto {
            return self;
        }
        let Work {
            m,
            n,
            batch,
            have_closure,
            device,
            kind,
        } = *work;
        let cuda = device.is_cuda();
        let tall = n > 0 && m >= AUTO_TALL_RATIO * n;
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
            return if closure && tall && !cuda {
                Strategy::VectorizedForward {
                    chunk_size: chunk(n, AUTO_VECTORIZE_BUDGET),
                }
            } else {
                Strategy::Batched {
                    chunk_size: chunk(m, AUTO_BATCHED_BUDGET),
                }
            };
        }
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
///   `create_graph=True`.
/// * `strict` (default `false`): an output that does not depend on an input is an error instead
///   of a block of zeros — PyTorch's `strict=True`.
/// * `strategy` (default [`Strategy::Auto`]).
/// * `vmap_fallback` (default `true`): in [`Strategy::Batched`] passes, an op without a batching
///   rule loops over the chunk's rows for that op (libtorch's vmap fallback; the op is recorded,
///   see [`crate::native::take_vmap_fallbacks`]); `false` makes it an
///   [`Error::NoBatchingRule`] — for tests that prove a model takes the fast path.
///
/// ```
/// use tch_jacobian::{JacobianOptions, Strategy};
/// let opts = JacobianOptions::default().create_graph(true).strategy(Strategy::RowLoop);
/// assert!(opts.create_graph && !opts.strict && opts.vmap_fallback);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JacobianOptions {
    /// Keep the result differentiable (PyTorch's `create_graph`).
    pub create_graph: bool,
    /// Refuse outputs that do not depend on an input (PyTorch's `strict`).
    pub strict: bool,
    /// How to compute it.
    pub strategy: Strategy,
    /// Let batched passes loop over ops that have no batching rule (else an error).
    pub vmap_fallback: bool,
}

impl Default for JacobianOptions {
    fn default() -> Self {
        JacobianOptions {
            create_graph: false,
            strict: false,
            strategy: Strategy::Auto,
            vmap_fallback: true,
        }
    }
}

impl JacobianOptions {
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
    /// Sets `vmap_fallback`.
    pub fn vmap_fallback(mut self, vmap_fallback: bool) -> Self {
        self.vmap_fallback = vmap_fallback;
        self
    }

    /// The settings of one pass, with the names used in its errors.
    pub(crate) fn pass<'a>(&self, names: Names<'a>) -> Pass<'a> {
        Pass {
            create_graph: self.create_graph,
            strict: self.strict,
            vmap_fallback: self.vmap_fallback,
            names,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Engines. Each works on a rows view `y2` of the output: `[m]` for a plain Jacobian (B = 1) or
// `[B, m]` for a batch (see `rows_view`: no reshape node when `y` already has that shape, which
// keeps every row's backward pass one node shorter); inputs whose gradients are viewed
// as `[B, n_k]`, and returns one `[B, m, n_k]` block per input. The plain Jacobian is the
// case B = 1 with the leading dimension squeezed afterwards. All of them call `vjp_into`.
// ---------------------------------------------------------------------------------------------
use crate::autograd::{batched_vjp_into, vjp_into, Names, Pass};

/// The closure of a `*_of` call, which only the vectorized strategies need.
pub(crate) struct Closure<'a> {
    /// `f` on stacked copies, `[B·c, *in] → [B·c, *out]`.
    pub call: &'a dyn Fn(&Tensor) -> Result<Tensor>,
    /// Whether the input has a leading batch dimension.
    pub batched: bool,
}

/// Runs a resolved strategy on the rows view `y2`: one `[B, m, n_k]` block per input. The one
/// dispatch shared by `jacobian_with`, `jacobian_of`, `batch_jacobian` and `batch_jacobian_of`;
/// `instead` names the call to use when a vectorized strategy is asked for without a closure.
pub(crate) fn run(
    strategy: Strategy,
    y2: &Tensor,
    xs: &[&Tensor],
    closure: Option<Closure<'_>>,
    opts: &JacobianOptions,
    names: Names<'_>,
    instead: &str,
) -> Result<Vec<Tensor>> {
    let (cg, strict) = (opts.create_graph, opts.strict);
    match strategy {
        Strategy::RowLoop => rows(y2, xs, cg, strict, names),
        Strategy::Batched { chunk_size } => batched(y2, xs, chunk_size, opts.pass(names)),
        Strategy::Forward => columns(y2, xs, cg, strict, names),
        Strategy::Vectorized { chunk_size } | Strategy::VectorizedForward { chunk_size } => {
            let Some(c) = closure else {
                return Err(Error::InvalidArgument(format!(
                    "Strategy::{strategy:?} needs the function itself: call {instead}"
                )));
            };
            let forward = matches!(strategy, Strategy::VectorizedForward { .. });
            let j = vectorized(
                c.call, xs[0], c.batched, y2, forward, chunk_size, cg, strict, names,
            )?;
            Ok(vec![j])
        }
        Strategy::Auto => unreachable!("resolve never returns Auto"),
    }
}

/// `y` as `[m]` (`batch = None`) or `[B, m]` (`batch = Some(B)`), reshaped only when needed.
pub(crate) fn rows_view(y: &Tensor, batch: Option<i64>) -> Result<Tensor> {
    Ok(match batch {
        None if y.dim() == 1 => y.shallow_clone(),
        None => y.f_reshape([-1])?,
        Some(_) if y.dim() == 2 => y.shallow_clone(),
        Some(b) => y.f_reshape([b, -1])?,
    })
}

/// `(B, m)` of a rows view.
fn dims(y2: &Tensor) -> (i64, i64) {
    let s = y2.size();
    match s.as_slice() {
        [m] => (1, *m),
        [b, m] => (*b, *m),
        _ => unreachable!("rows_view gives 1-D or 2-D tensors"),
    }
}

/// Output element `i` of every sample: `y2[i]` or `y2[:, i]`.
fn row(y2: &Tensor, i: i64) -> Result<Tensor> {
    Ok(y2.f_select(y2.dim() as i64 - 1, i)?)
}

/// Flat `[B, n]` view of a gradient of an input with `b` leading samples.
fn flat(g: &Tensor, b: i64) -> Result<Tensor> {
    Ok(g.f_reshape([b, -1])?)
}

/// `RowLoop`: one backward pass per output element `i`, of `y2[:, i]` (seeded with ones, so the
/// samples' rows come out together).
pub(crate) fn rows(
    y2: &Tensor,
    xs: &[&Tensor],
    create_graph: bool,
    strict: bool,
    names: Names<'_>,
) -> Result<Vec<Tensor>> {
    let (b, m) = dims(y2);
    if m == 0 {
        return empty_blocks(b, xs);
    }
    let mut blocks: Vec<Vec<Tensor>> = xs.iter().map(|_| Vec::with_capacity(m as usize)).collect();
    for i in 0..m {
        let root = row(y2, i)?;
        for (block, g) in blocks
            .iter_mut()
            .zip(vjp_into(&root, xs, create_graph, strict, names)?)
        {
            block.push(flat(&g, b)?);
        }
    }
    blocks
        .iter()
        .map(|rows| Ok(Tensor::f_stack(rows, 1)?))
        .collect()
}

/// `Batched`: for each chunk of `c` output rows starting at `start`, one native batched backward
/// pass of `y2` with the cotangents `E = I[start..start + c]` (`[c, m]`, or `[c, B, m]` expanded
/// over the samples), giving `[c, B·n_k]` per input: rows `start..start + c` of every sample's
/// Jacobian. One chunk is returned as it is; several are copied into one preallocated
/// `[B, m, n_k]` per input (no concatenation holding `J` twice).
pub(crate) fn batched(
    y2: &Tensor,
    xs: &[&Tensor],
    chunk_size: Option<usize>,
    pass: Pass<'_>,
) -> Result<Vec<Tensor>> {
    if !crate::native::available() {
        return Err(crate::native::unavailable());
    }
    let (b, m) = dims(y2);
    if m == 0 {
        return empty_blocks(b, xs);
    }
    let chunk = chunk_size.map_or(m, |c| (c as i64).min(m)).max(1);
    // [c, B, n_k] -> [B, c, n_k]
    let rows_block = |g: &Tensor, len: i64| -> Result<Tensor> {
        Ok(g.f_reshape([len, b, -1])?.f_transpose(0, 1)?)
    };
    let chunk_rows = |start: i64, len: i64| -> Result<Vec<Tensor>> {
        let v = identity_rows(y2, start, len)?;
        batched_vjp_into(y2, xs, &v, pass)?
            .iter()
            .map(|g| rows_block(g, len))
            .collect()
    };
    if chunk == m {
        return chunk_rows(0, m);
    }
    let mut js = xs
        .iter()
        .map(|x| {
            let n = x.numel() as i64 / b;
            Ok(Tensor::f_zeros([b, m, n], (x.kind(), x.device()))?)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut start = 0;
    while start < m {
        let len = chunk.min(m - start);
        for (j, block) in js.iter_mut().zip(chunk_rows(start, len)?) {
            j.f_narrow(1, start, len)?.f_copy_(&block)?;
        }
        start += len;
    }
    Ok(js)
}

/// Rows `start..start + len` of the `m × m` identity as cotangents for the rows view `y2`:
/// `[len, m]`, or `[len, B, m]` (expanded, no copy) when `y2` is `[B, m]`.
fn identity_rows(y2: &Tensor, start: i64, len: i64) -> Result<Tensor> {
    let (b, m) = dims(y2);
    let dev = y2.device();
    let rows = Tensor::f_arange_start(start, start + len, (Kind::Int64, dev))?.f_unsqueeze(1)?;
    let cols = Tensor::f_arange(m, (Kind::Int64, dev))?.f_unsqueeze(0)?;
    let e = rows.f_eq_tensor(&cols)?.f_to_kind(y2.kind())?;
    Ok(if y2.dim() == 2 {
        e.f_unsqueeze(1)?.f_expand([len, b, m], false)?
    } else {
        e
    })
}

/// `Forward`: `g(u) = Jᵀu` built once with create_graph, then one backward pass of `g[:, j]`
/// with respect to `u` per input element `j` gives column `J e_j`.
pub(crate) fn columns(
    y2: &Tensor,
    xs: &[&Tensor],
    create_graph: bool,
    strict: bool,
    names: Names<'_>,
) -> Result<Vec<Tensor>> {
    let (b, m) = dims(y2);
    if m == 0 {
        return empty_blocks(b, xs);
    }
    let u = y2.f_zeros_like()?.set_requires_grad(true);
    let root = y2.f_mul(&u)?.f_sum(None::<Kind>)?;
    let gs = vjp_into(&root, xs, true, strict, names)?;
    let u_names = [String::from("u")];
    let inner = Names {
        output: "Jᵀu",
        inputs: &u_names,
    };
    gs.iter()
        .map(|g| {
            let g2 = flat(g, b)?;
            let cols = (0..g2.size()[1])
                .map(|j| {
                    let col = vjp_into(&g2.f_select(1, j)?, &[&u], create_graph, false, inner)?;
                    Ok(col
                        .into_iter()
                        .next()
                        .expect("one input")
                        .f_reshape([b, m])?)
                })
                .collect::<Result<Vec<_>>>()?;
            if cols.is_empty() {
                return Ok(Tensor::f_zeros([b, m, 0], (g2.kind(), g2.device()))?);
            }
            Ok(Tensor::f_stack(&cols, 2)?)
        })
        .collect()
}

/// `Vectorized` and `VectorizedForward`: `f` evaluated once on `x` stacked `c` times per sample
/// (`X`, shape `[B·c, *in]`, `Y = f(X)` viewed as `[B, c, m]`), for each chunk of `c` rows
/// (reverse) or columns (forward) starting at `start`:
///
/// * reverse: one backward pass of `Σ_{b,r} Y[b, r, start + r]`; the gradient's row `(b, r)` is
///   sample `b`'s `J[start + r, :]`;
/// * forward: `G = ∂(Σ Y ⊙ U)/∂X` built with create_graph for a zero `U` shaped like `Y`, then one
///   backward pass of `Σ_{b,r} G[b, r, start + r]` with respect to `U`: its row `(b, r)` is
///   `J e_{start + r}`, sample `b`'s column `start + r` (the double-backward JVP, batched).
///
/// `x` is the input `y2 = f(x)` (a rows view) was computed from: `[B, *in]` when `batched`,
/// `[*in]` (B = 1) otherwise; `call` evaluates `f` on `[B·c, *in]`.
///
/// Two checks catch closures that are not row-wise: the first replicated row of `f(X)` must equal
/// `f(x)`, and the first Jacobian row (column) must equal the one that a plain backward pass
/// (JVP) through the caller's graph gives.
#[allow(clippy::too_many_arguments)]
pub(crate) fn vectorized(
    call: &dyn Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    batched: bool,
    y2: &Tensor,
    forward: bool,
    chunk_size: Option<usize>,
    create_graph: bool,
    strict: bool,
    names: Names<'_>,
) -> Result<Tensor> {
    let (b, m) = dims(y2);
    let x2 = if batched {
        x.shallow_clone()
    } else {
        x.f_unsqueeze(0)?
    };
    let in_shape = x2.size()[1..].to_vec();
    let n: i64 = in_shape.iter().product();
    if m == 0 || n == 0 {
        return Ok(Tensor::f_zeros([b, m, n], (x2.kind(), x2.device()))?);
    }
    let (total, other) = if forward { (n, m) } else { (m, n) };
    let chunk = chunk_size.map_or(total, |c| (c as i64).min(total)).max(1);
    let u_names = [String::from("U")];
    let inner = Names {
        output: "Jᵀu",
        inputs: &u_names,
    };
    let mut blocks = Vec::with_capacity((total / chunk + 1) as usize);
    let mut start = 0;
    while start < total {
        let len = chunk.min(total - start);
        let mut rep = vec![b, len];
        rep.extend_from_slice(&in_shape);
        let mut flat_shape = vec![b * len];
        flat_shape.extend_from_slice(&in_shape);
        let xr = x2
            .f_unsqueeze(1)?
            .f_expand(rep.as_slice(), false)?
            .f_reshape(flat_shape.as_slice())?;
        let yr = call(&xr)?;
        if yr.size().first() != Some(&(b * len)) || yr.numel() as i64 != b * len * m {
            return Err(Error::Contract(format!(
                "Vectorized strategy: f was given {} stacked copies of the input (shape {:?}) and must return {} rows of {} elements, but returned shape {:?}; f must act row-wise on a leading batch dimension (or use Strategy::RowLoop)",
                b * len,
                xr.size(),
                b * len,
                m,
                yr.size()
            )));
        }
        let yr = yr.f_reshape([b, len, m])?;
        if start == 0 {
            let first = yr.f_select(1, 0)?;
            if let Some(diff) = differs(&first, &y2.f_reshape([b, m])?)? {
                return Err(Error::Contract(format!(
                    "Vectorized strategy: f(x repeated) row 0 differs from f(x) by up to {diff:.3e} (input shape {:?}); f mixes rows of its leading batch dimension (e.g. a sum over it or batch norm) — use Strategy::RowLoop or Strategy::Forward",
                    x2.size()
                )));
            }
        }
        let idx = Tensor::f_arange_start(start, start + len, (Kind::Int64, yr.device()))?
            .f_view([1, len, 1])?
            .f_expand([b, len, 1], false)?;
        let block = if forward {
            let u = yr.f_zeros_like()?.set_requires_grad(true);
            let root = yr.f_mul(&u)?.f_sum(None::<Kind>)?;
            let g = vjp_into(&root, &[&xr], true, strict, names)?
                .remove(0)
                .f_reshape([b, len, n])?;
            let root2 = g.f_gather(2, &idx, false)?.f_sum(None::<Kind>)?;
            vjp_into(&root2, &[&u], create_graph, false, inner)?.remove(0)
        } else {
            let root = yr.f_gather(2, &idx, false)?.f_sum(None::<Kind>)?;
            vjp_into(&root, &[&xr], create_graph, strict, names)?.remove(0)
        }
        .f_reshape([b, len, other])?;
        if start == 0 {
            let reference = if forward {
                first_column(x, y2, b)?
            } else {
                first_row(x, y2, b)?
            };
            if let Some(reference) = reference {
                check_first(&block.f_select(1, 0)?, &reference, &x2)?;
            }
        }
        blocks.push(block);
        start += len;
    }
    let j = Tensor::f_cat(&blocks, 1)?;
    Ok(if forward { j.f_transpose(1, 2)? } else { j })
}

/// Row 0 of every sample's Jacobian by a plain backward pass of `y2[.., 0]`, `[B, n]`.
fn first_row(x: &Tensor, y2: &Tensor, b: i64) -> Result<Option<Tensor>> {
    if !y2.requires_grad() {
        return Ok(None);
    }
    let g = Tensor::f_run_backward(&[row(y2, 0)?], &[x], true, false)?.remove(0);
    Ok(if g.defined() {
        Some(g.f_reshape([b, -1])?)
    } else {
        None
    })
}

/// Column 0 of every sample's Jacobian by a double-backward JVP with `e_0`, `[B, m]`.
fn first_column(x: &Tensor, y2: &Tensor, b: i64) -> Result<Option<Tensor>> {
    if !y2.requires_grad() {
        return Ok(None);
    }
    let u = y2.f_zeros_like()?.set_requires_grad(true);
    let g =
        Tensor::f_run_backward(&[y2.f_mul(&u)?.f_sum(None::<Kind>)?], &[x], true, true)?.remove(0);
    if !g.defined() || !g.requires_grad() {
        return Ok(None);
    }
    let root = g.f_reshape([b, -1])?.f_select(1, 0)?.f_sum(None::<Kind>)?;
    let col = Tensor::f_run_backward(&[root], &[&u], true, false)?.remove(0);
    Ok(if col.defined() {
        Some(col.f_reshape([b, -1])?)
    } else {
        None
    })
}

/// The first Jacobian row (column) from the stacked pass against the one from `f(x)`'s own
/// graph; a mismatch means the closure mixes rows.
fn check_first(got: &Tensor, reference: &Tensor, x2: &Tensor) -> Result<()> {
    if let Some(diff) = differs(got, reference)? {
        return Err(Error::Contract(format!(
            "Vectorized strategy: the first Jacobian row/column from f(x repeated) differs from the one of f(x) by up to {diff:.3e} (input shape {:?}); f mixes rows of its leading batch dimension (e.g. a mean over it or batch norm) — use Strategy::RowLoop or Strategy::Forward",
            x2.size()
        )));
    }
    Ok(())
}

/// `Some(max|a − b|)` when `max|a − b| > rtol · max|b| + rtol · 1e-3` with
/// [`contract_rtol`]`(dtype, device)`, or when exactly one of them has NaNs; else `None`.
fn differs(a: &Tensor, b: &Tensor) -> Result<Option<f64>> {
    tch::no_grad(|| {
        let diff = a.f_sub(b)?.f_abs()?.f_max()?.f_double_value(&[])?;
        let scale = b.f_abs()?.f_max()?.f_double_value(&[])?;
        let rtol = contract_rtol(b.kind(), b.device());
        let bad = diff > rtol * scale + rtol * 1e-3 || diff.is_nan() != scale.is_nan();
        Ok(bad.then_some(diff))
    })
}

/// The relative tolerance (to the largest magnitude) of the replicated strategies' row-wise
/// checks: the same function on stacked copies and on `x` alone may differ by rounding —
/// another summation order (BLAS, cuDNN picking other algorithms for the stacked batch) and, on
/// CUDA in float32, TF32 convolutions and matmuls (10-bit mantissa; PyTorch's default for cuDNN).
/// A closure that really mixes rows differs by O(1) relative and still fails.
///
/// | dtype | CPU | CUDA |
/// |---|---|---|
/// | float64 | 1e-7 | 1e-7 |
/// | float32 | 1e-3 | 1e-2 (TF32; measured on a ResNet-18 in eval mode on an H100: 6e-4 relative against PyTorch) |
/// | float16, bfloat16 | 5e-2 | 5e-2 |
///
/// ```
/// use tch::{Device, Kind};
/// use tch_jacobian::strategy::contract_rtol;
/// assert_eq!(contract_rtol(Kind::Float, Device::Cpu), 1e-3);
/// assert_eq!(contract_rtol(Kind::Float, Device::Cuda(0)), 1e-2);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn contract_rtol(kind: Kind, device: Device) -> f64 {
    match kind {
        Kind::Double | Kind::ComplexDouble => 1e-7,
        Kind::Float | Kind::ComplexFloat if device.is_cuda() => 1e-2,
        Kind::Float | Kind::ComplexFloat => 1e-3,
        _ => 5e-2,
    }
}

/// Zero blocks `[B, 0, n_k]` for an output with no elements.
fn empty_blocks(b: i64, xs: &[&Tensor]) -> Result<Vec<Tensor>> {
    xs.iter()
        .map(|x| {
            let n = x.numel() as i64 / b.max(1);
            Ok(Tensor::f_zeros([b, 0, n], (x.kind(), x.device()))?)
        })
        .collect()
}
