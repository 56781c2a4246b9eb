//! Higher derivatives where libtorch (and `torch.func`) are silently wrong, and how the crate
//! stays right.
//!
//! With `create_graph`, a Jacobian `J` is itself differentiable, and a loss built from it
//! (`‖J‖_F²`, `⟨R, J⟩`) is back-propagated: `g = ∂⟨R, J⟩/∂x`. A plain autograd row loop and
//! central finite differences agree on `g`; some of libtorch's rules do not. Precisely:
//!
//! | where | what libtorch does | upstream | what the crate does |
//! |---|---|---|---|
//! | second derivatives through `layer_norm`, `batch_norm`, `instance_norm` *under vmap* — measured: with respect to the norm's weight (a loss on `∂y/∂w`, differentiated again), where `torch.func.jacrev` / `vmap(jacrev)` are off by 10⁵× | the vmap batching rule of the backward op computes `x̂` from the saved mean and `1/σ` as constants, so the batched pass's own derivative misses their terms | pytorch/functorch#534 | its own batching rules (csrc/norm_rules.cpp) call the unbatched backward op once with the vmap dimension folded in, keeping its correct double-backward formula |
//! | third derivatives through the same norms (batch norm: in training mode) in *plain autograd*: a second derivative differentiated again, e.g. forward-mode products by the double-backward trick under `create_graph` (`torch.autograd.functional.jvp(create_graph=True)`) in a loss | libtorch's double-backward formula takes the saved mean and `1/σ` as constants, so differentiating it once more misses their terms (nested `torch.func.jvp` through `layer_norm` is wrong too, pytorch#196700) | pytorch#175754 (layer norm), pytorch#186256 (batch norm) | the crate records its own differentiable backward for these ops during its create_graph passes; the forward-mode strategies (`Forward`, `VectorizedForward`, [`jvp`](crate::jvp)) are also guarded there: `Auto` never picks them, asked for explicitly they return [`Error::WrongDerivative`] naming the op, and `jvp`/`jvp_batched` take `J u` from `J` |
//! | batched passes through a TorchScript module after its first calls | the profiling executor's optimized graph (`DifferentiableGraphBackward`) loses terms or fails under vmap | – | the crate's module functions run the model with the executor's optimization off under `create_graph`; a built graph that holds such a node is differentiated by the row loop, reported by [`take_reroutes`] |
//!
//! Not every second derivative through a norm is wrong: the exact Jacobian penalty
//! `‖∂h/∂x‖²` through a CNN's LayerNorm, differentiated to the weights, is right in `torch.func`
//! too (docs/jacobian-regularization.md).
//!
//! First-order values are right in every case, and no scan runs without `create_graph`. With it,
//! one walk over the autograd graph from `y` ([`scan`]) reads the node names; it costs a few
//! microseconds per hundred nodes.
//!
//! Separately, `Strategy::Auto` recovers from a batched pass that libtorch refuses (e.g.
//! `masked_select` with a broadcast mask: its batching rule fails where the row loop works) by
//! running the row loop, also reported by [`take_reroutes`].
//!
//! Every reroute is also reported once per distinct message through the `log`
//! facade at warn level; install `env_logger` or `tracing-log` to see it.
//!
//! ```
//! use tch::{Device, Kind, Tensor};
//! use tch_jacobian::{jacobian_with, Error, JacobianOptions, Strategy};
//! let x = Tensor::randn([2, 5], (Kind::Double, Device::Cpu)).set_requires_grad(true);
//! let y = x.layer_norm([5], None::<Tensor>, None::<Tensor>, 1e-5, false);
//! let forward = JacobianOptions::default().create_graph(true).strategy(Strategy::Forward);
//! let err = jacobian_with(&y, &[&x], &forward).unwrap_err();
//! assert!(matches!(err, Error::WrongDerivative { ref op, .. } if op == "NativeLayerNormBackward0"));
//! // Auto is right at every order (batched, or the row loop without the engine).
//! let j = jacobian_with(&y, &[&x], &JacobianOptions::default().create_graph(true))?;
//! assert_eq!(j[0].size(), [2, 5, 2, 5]);
//! # Ok::<(), tch_jacobian::Error>(())
//! ```
use std::cell::RefCell;

use tch::Tensor;

use crate::error::{Error, Result};
use crate::strategy::{Strategy, Work};

/// Autograd nodes whose double-backward formula is wrong one order higher, with the op and the
/// upstream issue: forward-mode strategies under `create_graph` are wrong through them.
pub(crate) const WRONG_TRIPLE_BACKWARD: [(&str, &str); 8] = [
    ("NativeLayerNormBackward0", "layer_norm (pytorch#196700)"),
    (
        "NativeBatchNormBackward0",
        "batch_norm / instance_norm (pytorch#196700's batch_norm twin)",
    ),
    (
        "NativeBatchNormLegitBackward0",
        "batch_norm (pytorch#196700's batch_norm twin)",
    ),
    (
        "NativeBatchNormLegitBackward1",
        "batch_norm (pytorch#196700's batch_norm twin)",
    ),
    (
        "NativeBatchNormLegitNoTrainingBackward0",
        "batch_norm (pytorch#196700's batch_norm twin)",
    ),
    (
        "BatchNormWithUpdateBackward0",
        "batch_norm (pytorch#196700's batch_norm twin)",
    ),
    (
        "CudnnBatchNormBackward0",
        "batch_norm on cuDNN (pytorch#196700's batch_norm twin)",
    ),
    (
        "MiopenBatchNormBackward0",
        "batch_norm on MIOpen (pytorch#196700's batch_norm twin)",
    ),
];

/// The backward node of a TorchScript executor's optimized differentiable subgraph (its full
/// name is `torch::jit::(anonymous namespace)::DifferentiableGraphBackward`).
pub const JIT_SUBGRAPH_NODE: &str = "DifferentiableGraphBackward";

/// What a scan of the autograd graph from `y` found (`#[non_exhaustive]`: facts may be added).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GraphFacts {
    /// The nodes in the graph whose double-backward formula is wrong one order higher (the
    /// normalizations' backward nodes, e.g. `NativeLayerNormBackward0`; see the module docs).
    pub wrong_triple_backward: Vec<String>,
    /// Whether a TorchScript optimized subgraph ([`JIT_SUBGRAPH_NODE`]) is in the graph.
    pub jit_subgraph: bool,
    /// Nodes visited.
    pub nodes: usize,
}

/// Scans the autograd graph from `y` (every node reachable from its `grad_fn`, once each),
/// through csrc/graph_scan.cpp, which every build with libtorch has (with or without the native
/// engine; a `doc-only` build finds nothing).
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// let x = Tensor::randn([3, 4], (Kind::Double, Device::Cpu)).set_requires_grad(true);
/// let y = x.layer_norm([4], None::<Tensor>, None::<Tensor>, 1e-5, false).tanh();
/// let facts = tch_jacobian::second_order::scan(&y)?;
/// // with or without the native engine
/// assert_eq!(facts.wrong_triple_backward, ["NativeLayerNormBackward0"]);
/// assert!(!facts.jit_subgraph && facts.nodes >= 3);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn scan(y: &Tensor) -> Result<GraphFacts> {
    let Some((names, nodes)) = crate::native::graph_node_names(y)? else {
        return Ok(GraphFacts::default());
    };
    Ok(GraphFacts {
        wrong_triple_backward: names
            .iter()
            .filter(|n| WRONG_TRIPLE_BACKWARD.iter().any(|(w, _)| w == n))
            .cloned()
            .collect(),
        jit_subgraph: names.iter().any(|n| n.contains(JIT_SUBGRAPH_NODE)),
        nodes,
    })
}

/// A strategy the crate ran instead of the one resolved or asked for, and why
/// (`#[non_exhaustive]`: fields may be added).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reroute {
    /// The strategy that would have run.
    pub from: Strategy,
    /// The strategy that ran.
    pub to: Strategy,
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for Reroute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} instead of {}: {}", self.to, self.from, self.reason)
    }
}

thread_local! {
    static REROUTES: RefCell<Vec<Reroute>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn record(reroute: Reroute) {
    crate::native::warn_once(&reroute.to_string());
    REROUTES.with(|r| {
        let mut r = r.borrow_mut();
        if !r.contains(&reroute) {
            r.push(reroute);
        }
    });
}

/// The strategies this thread's calls ran instead of the resolved (or asked) one since the last
/// call, each once; clears the record. The value is right either way; a reroute only costs time
/// (a row loop instead of one batched pass).
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// use tch_jacobian::{jacobian_with, second_order, JacobianOptions};
/// let x = Tensor::randn([4], (Kind::Double, Device::Cpu)).set_requires_grad(true);
/// jacobian_with(&x.tanh(), &[&x], &JacobianOptions::default())?;
/// assert!(second_order::take_reroutes().is_empty());
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn take_reroutes() -> Vec<Reroute> {
    REROUTES.with(|r| std::mem::take(&mut *r.borrow_mut()))
}

/// The strategy that gives right derivatives for `resolved` on the graph of `y`: `asked` is what
/// the caller asked for (`Auto` may be changed freely; an explicit strategy is kept, rerouted to
/// the row loop, or refused with [`Error::WrongDerivative`]). Without `create_graph` nothing is
/// scanned and `resolved` is returned. `work` describes the call, for re-resolving `Auto`.
pub(crate) fn guard(
    asked: Strategy,
    resolved: Strategy,
    create_graph: bool,
    y: &Tensor,
    work: &Work,
) -> Result<Strategy> {
    let forward_mode = matches!(
        resolved,
        Strategy::Forward | Strategy::VectorizedForward { .. }
    );
    let batched = matches!(resolved, Strategy::Batched { .. });
    if !create_graph || !(forward_mode || batched) {
        return Ok(resolved);
    }
    let facts = scan(y)?;
    if facts.jit_subgraph {
        let reason = "the graph holds a TorchScript optimized subgraph (DifferentiableGraphBackward), whose batched second derivatives are wrong; run the model under create_graph through the crate's module functions to keep the batched pass".to_string();
        if forward_mode && asked != Strategy::Auto {
            return Err(Error::WrongDerivative {
                strategy: resolved.to_string(),
                op: JIT_SUBGRAPH_NODE.into(),
                detail: "a TorchScript optimized subgraph loses second-order terms".into(),
            });
        }
        record(Reroute {
            from: resolved,
            to: Strategy::RowLoop,
            reason,
        });
        return Ok(Strategy::RowLoop);
    }
    if forward_mode {
        if let Some(node) = facts.wrong_triple_backward.first() {
            if asked != Strategy::Auto {
                let what = WRONG_TRIPLE_BACKWARD
                    .iter()
                    .find(|(n, _)| n == node)
                    .map_or("", |(_, w)| w);
                return Err(Error::WrongDerivative {
                    strategy: resolved.to_string(),
                    op: node.clone(),
                    detail: format!(
                        "libtorch's double backward of {what} is wrong one order higher"
                    ),
                });
            }
            return Ok(Strategy::resolve_reverse(work));
        }
    }
    Ok(resolved)
}

/// Under `create_graph`, the node of `y`'s graph through which a forward-mode product by the
/// double-backward trick (`jvp`, `jvp_batched`) would be wrong, if any; `None` without
/// `create_graph`.
pub(crate) fn double_backward_fault(y: &Tensor, create_graph: bool) -> Result<Option<String>> {
    if !create_graph {
        return Ok(None);
    }
    let facts = scan(y)?;
    Ok(facts
        .wrong_triple_backward
        .into_iter()
        .next()
        .or_else(|| facts.jit_subgraph.then(|| JIT_SUBGRAPH_NODE.to_string())))
}
