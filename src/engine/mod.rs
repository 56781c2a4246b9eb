//! The engines: how the passes of a resolved [`Strategy`] run. The policy — which strategy —
//! lives in [`crate::strategy`]; every backward pass goes through [`crate::autograd`].
//!
//! Each engine works on a rows view `y2` of the output: `[m]` for a plain Jacobian (B = 1) or
//! `[B, m]` for a batch (see [`rows_view`]: no reshape node when `y` already has that shape,
//! which keeps every row's backward pass one node shorter), on inputs whose gradients are viewed
//! as `[B, n_k]`, and returns one `[B, m, n_k]` block per input. The plain Jacobian is the case
//! B = 1 with the leading dimension squeezed afterwards.
//!
//! * [`rows`] — `RowLoop`: one backward pass per output element;
//! * [`columns`] — `Forward`: one JVP per input element (double backward);
//! * [`replicated`] — `Vectorized`, `VectorizedForward`: `f` on stacked copies of `x`;
//! * [`batched`] — `Batched`: native batched backward passes over identity cotangents;
//! * [`taylor`] — `Taylor`: one collapsed Taylor pass of the closure along the identity
//!   directions (the first-order coefficients are the columns).
//!
//! Chunked engines write their chunks into one preallocated `J` ([`Blocks`]) and report progress
//! after each pass.
mod batched;
mod columns;
mod replicated;
mod rows;
mod taylor;

use tch::{Device, Kind, Tensor};

use crate::autograd::{Names, Pass};
use crate::error::{Error, Result};
use crate::second_order::{self, Reroute};
use crate::strategy::{JacobianOptions, Progress, Strategy, Work};

/// The closure of a `*_of` call, which only the replicated strategies need.
pub(crate) struct Closure<'a> {
    /// `f` on stacked copies, `[B·c, *in] → [B·c, *out]`.
    pub call: &'a dyn Fn(&Tensor) -> Result<Tensor>,
    /// Whether the input has a leading batch dimension.
    pub batched: bool,
}

/// One engine run's settings: the backward passes' [`Pass`], the concrete strategy and the
/// caller's progress callback.
#[derive(Clone, Copy)]
pub(crate) struct Run<'a> {
    pub pass: Pass<'a>,
    pub strategy: Strategy,
    pub progress: Option<&'a dyn Fn(Progress)>,
}

impl Run<'_> {
    /// Tells the caller that `done` of `total` rows (or columns) are computed.
    fn report(&self, done: i64, total: i64) {
        if let Some(progress) = self.progress {
            progress(Progress {
                strategy: self.strategy,
                done: done as usize,
                total: total as usize,
            });
        }
    }
}

/// Runs a resolved strategy on the rows view `y2` (`work` is what it was resolved for): one
/// `[B, m, n_k]` block per input. The one
/// dispatch shared by `jacobian_with`, `jacobian_of`, `per_sample_jacobian` and `per_sample_jacobian_of`;
/// `instead` names the call to use when a replicated strategy is asked for without a closure.
///
/// Under `create_graph` the strategy first passes [`second_order::guard`] (which may reroute it
/// or refuse it where libtorch's second derivatives are wrong); under `Strategy::Auto` a pass
/// that libtorch refuses is redone by the row loop.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    strategy: Strategy,
    work: &Work,
    y2: &Tensor,
    xs: &[&Tensor],
    closure: Option<Closure<'_>>,
    opts: &JacobianOptions<'_>,
    names: Names<'_>,
    instead: &str,
) -> Result<Vec<Tensor>> {
    let strategy = second_order::guard(opts.strategy, strategy, opts.create_graph, y2, work)?;
    // One copy to replicate (one output row for Vectorized, one input column for
    // VectorizedForward) is the row loop's single pass without the stacking, which would give
    // the closure a 1-d input where it had a 0-d one (and libtorch's third derivative of
    // logcumsumexp, for one, is NaN on 1-d inputs).
    let single = match strategy {
        Strategy::Vectorized { .. } => work.m == 1,
        Strategy::VectorizedForward { .. } => work.n == 1,
        _ => false,
    };
    let strategy = if single { Strategy::RowLoop } else { strategy };
    let plain_closure = closure.as_ref().is_some_and(|c| !c.batched);
    let result = run_resolved(strategy, y2, xs, closure.as_ref(), opts, names, instead);
    let auto = opts.strategy == Strategy::Auto && strategy != Strategy::RowLoop;
    match result {
        // Auto never fails where the row loop works: a pass that libtorch refuses (e.g. the
        // batched pass of masked_select with a broadcast mask), or a plain closure that is not
        // row-wise on stacked copies, is redone by the row loop, and reported. (A batch's
        // closure that mixes samples stays an error: the per-sample callers check the result's
        // independence afterwards, crate::independence.) This is the crate's one recovery rule;
        // the module functions rely on it too.
        Err(e @ (Error::Torch(_) | Error::Contract(_)))
            if auto && (matches!(e, Error::Torch(_)) || plain_closure) =>
        {
            second_order::record(Reroute {
                from: strategy,
                to: Strategy::RowLoop,
                reason: format!("it failed: {}", e.one_line()),
            });
            run_resolved(Strategy::RowLoop, y2, xs, None, opts, names, instead)
        }
        r => r,
    }
}

thread_local! {
    static FORWARD_AD_OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While it lives, `Forward` on a closure skips forward-mode AD on this thread and takes the
/// double-backward columns: for TorchScript modules, whose optimized graphs run without
/// forward-mode derivatives (their tangents are lost).
pub(crate) struct WithoutForwardAd {
    previous: bool,
}

impl WithoutForwardAd {
    pub(crate) fn new() -> Self {
        WithoutForwardAd {
            previous: FORWARD_AD_OFF.with(|f| f.replace(true)),
        }
    }
}

impl Drop for WithoutForwardAd {
    fn drop(&mut self) {
        FORWARD_AD_OFF.with(|f| f.set(self.previous));
    }
}

/// Runs a strategy as it is (see [`run`]).
fn run_resolved(
    strategy: Strategy,
    y2: &Tensor,
    xs: &[&Tensor],
    closure: Option<&Closure<'_>>,
    opts: &JacobianOptions<'_>,
    names: Names<'_>,
    instead: &str,
) -> Result<Vec<Tensor>> {
    let run = Run {
        pass: opts.pass(names),
        strategy,
        progress: opts.progress,
    };
    match strategy {
        Strategy::RowLoop => rows::rows(y2, xs, &run),
        Strategy::Batched { chunk_size } => batched::batched(y2, xs, chunk_size, &run),
        Strategy::Forward => {
            // A closure without create_graph: forward-mode AD. The closure already ran once (for
            // y), so a failure here is the transform's — an op without a forward-mode formula
            // (`cdist`), whether returned or raised by a panicking tch method, or an output that
            // lost its tangent — and the double-backward columns take over.
            // (Not inside a Laplacian's closure: collapsed Taylor mode cannot follow dual
            // tensors; the double-backward columns it can.)
            let forward_ad = crate::native::available()
                && !crate::native::taylor::session_open()
                && !opts.create_graph
                && xs.len() == 1
                && !FORWARD_AD_OFF.with(|f| f.get());
            if let Some(c) = closure.filter(|_| forward_ad) {
                if let Ok(j) = columns::dual_columns(c, xs[0], y2, &run) {
                    return Ok(vec![j]);
                }
            }
            columns::columns(y2, xs, &run)
        }
        Strategy::Taylor => {
            let Some(c) = closure else {
                return Err(Error::InvalidArgument(format!(
                    "Strategy::Taylor needs the function itself: call {instead}"
                )));
            };
            Ok(vec![taylor::taylor(c, xs[0], y2, &run)?])
        }
        Strategy::Vectorized { chunk_size } | Strategy::VectorizedForward { chunk_size } => {
            let Some(c) = closure else {
                return Err(Error::InvalidArgument(format!(
                    "Strategy::{strategy:?} needs the function itself: call {instead}"
                )));
            };
            let forward = matches!(strategy, Strategy::VectorizedForward { .. });
            let j = replicated::replicated(c, xs[0], y2, forward, chunk_size, &run)?;
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

/// Chunk length: `chunk_size` rows (at least 1, at most `total`), or all of them.
fn chunk_len(chunk_size: Option<usize>, total: i64) -> i64 {
    chunk_size.map_or(total, |c| (c as i64).min(total)).max(1)
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

/// The result of a chunked engine: the only chunk as it is, or every chunk copied into one
/// `[B, total, other_k]` block per input, allocated before the first pass (so a `J` that does not
/// fit fails at once) and filled along dimension 1 — no concatenation holding `J` twice.
struct Blocks {
    /// One preallocated block per input when there are several chunks.
    full: Option<Vec<Tensor>>,
    /// The chunks so far, when they are concatenated at the end instead.
    parts: Vec<Vec<Tensor>>,
}

impl Blocks {
    /// `shapes[k]` is input `k`'s `[B, total, other_k]` and its (dtype, device); `chunked` says
    /// whether several passes will fill it. Chunks are copied into one preallocated block, except
    /// under `create_graph` (the graph keeps every chunk alive anyway, and a copy into a plain
    /// block would go through CopySlices) or inside a functorch transform (vmap refuses to copy a
    /// batched chunk into an unbatched block): then they are concatenated.
    fn new(shapes: &[([i64; 3], (Kind, Device))], chunked: bool, pass: &Pass<'_>) -> Result<Self> {
        let preallocate = chunked && !pass.create_graph && !crate::native::in_transform();
        let full = if preallocate {
            let js = shapes
                .iter()
                .map(|(shape, opts)| Ok(Tensor::f_zeros(shape.as_slice(), *opts)?))
                .collect::<Result<Vec<_>>>()?;
            Some(js)
        } else {
            None
        };
        Ok(Blocks {
            full,
            parts: Vec::new(),
        })
    }

    /// Adds the chunk `[B, len, other_k]` (one per input) that starts at row `start`.
    fn put(&mut self, start: i64, chunk: Vec<Tensor>) -> Result<()> {
        match self.full.as_mut() {
            None => self.parts.push(chunk),
            Some(full) => {
                for (j, block) in full.iter_mut().zip(&chunk) {
                    j.f_narrow(1, start, block.size()[1])?.f_copy_(block)?;
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<Tensor>> {
        if let Some(full) = self.full {
            return Ok(full);
        }
        if self.parts.len() <= 1 {
            return Ok(self.parts.pop().unwrap_or_default());
        }
        let inputs = self.parts[0].len();
        (0..inputs)
            .map(|k| {
                let blocks: Vec<&Tensor> = self.parts.iter().map(|c| &c[k]).collect();
                Ok(Tensor::f_cat(&blocks, 1)?)
            })
            .collect()
    }
}
