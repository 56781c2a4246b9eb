//! The one place that runs a backward pass.
//!
//! Every engine, the batch Jacobian, `vjp`/`jvp`/`hvp`/`hessian` and the penalties compute
//! products with the Jacobian here: [`vjp_into`] (a single `Tensor::run_backward` with the graph
//! kept, so the caller's graph stays usable), [`batched_vjp_into`] (one native batched pass over
//! a stack of cotangents), and the one JVP, [`Linearized`] (the double-backward trick built on
//! `vjp_into`). A [`Pass`] carries `create_graph`, `strict` (PyTorch's rules for inputs that the
//! output does not reach), the vmap fallback switch and the names used in errors. Argument checks
//! shared by the public functions live here too.
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Runs `f` with grad mode on, whatever the caller set, and restores the caller's mode: every
/// public function that runs a closure or a backward pass goes through it, so that values inside
/// `tch::no_grad` equal those outside (as with `torch.autograd.functional`, which enables grad
/// itself, and torch.func's transforms, which ignore an outer `no_grad`).
pub(crate) fn grad_mode_on<T>(f: impl FnOnce() -> T) -> T {
    // The one entry every such function passes: oneMKL's kernels are chosen here, once, before a
    // closure's first tanh/exp/… runs on several threads (pytorch#188792).
    crate::global::resolve_vml_kernels();
    with_grad_mode(true, f)
}

/// Runs `f` with grad mode `enabled` and restores the caller's mode on every path out —
/// including a panic of `f` (unlike `tch::with_grad` / `tch::no_grad`, which restore only when
/// `f` returns).
pub(crate) fn with_grad_mode<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    /// Restores the grad mode it was made with when dropped.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_grad_mode(self.0);
        }
    }
    let _restore = Restore(set_grad_mode(enabled));
    f()
}

/// Sets libtorch's thread-local grad mode; returns the previous one.
fn set_grad_mode(enabled: bool) -> bool {
    #[cfg(not(feature = "doc-only"))]
    {
        // SAFETY: a plain call into libtorch's GradMode (torch-sys's wrapper catches C++
        // exceptions; it returns the previous mode, or -1 on an error it cannot have).
        unsafe { torch_sys::at_grad_set_enabled(enabled as std::ffi::c_int) == 1 }
    }
    #[cfg(feature = "doc-only")]
    {
        let _ = enabled;
        true
    }
}

/// Is `kind` a dtype autograd can differentiate?
pub(crate) fn is_differentiable_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Half
            | Kind::Float
            | Kind::Double
            | Kind::BFloat16
            | Kind::ComplexHalf
            | Kind::ComplexFloat
            | Kind::ComplexDouble
    )
}

/// Checks that `t` has a floating dtype; names it in the error.
pub(crate) fn check_float(t: &Tensor, what: &str) -> Result<Kind> {
    let kind = t.f_kind()?;
    if !is_differentiable_kind(kind) {
        return Err(Error::Kind(format!(
            "{what} has dtype {kind:?} (shape {:?}); Jacobians need a floating-point dtype (Float, Double, Half, BFloat16)",
            t.size()
        )));
    }
    Ok(kind)
}

/// Checks that `t` is a floating tensor that requires grad.
pub(crate) fn check_input(t: &Tensor, what: &str) -> Result<()> {
    let kind = check_float(t, what)?;
    if !t.requires_grad() {
        return Err(Error::NoGrad {
            what: what.to_string(),
            shape: t.size(),
            kind,
        });
    }
    Ok(())
}

/// Checks that `a` and `b` live on the same device.
pub(crate) fn check_same_device(
    a: &Tensor,
    a_name: &str,
    b: &Tensor,
    b_name: &str,
) -> Result<Device> {
    let (da, db) = (a.device(), b.device());
    if da != db {
        return Err(Error::Device(format!(
            "{a_name} (shape {:?}) is on {da:?} but {b_name} (shape {:?}) is on {db:?}; move them to one device",
            a.size(),
            b.size()
        )));
    }
    Ok(da)
}

/// Checks that `v` has exactly `shape`.
pub(crate) fn check_shape(v: &Tensor, v_name: &str, shape: &[i64], of: &str) -> Result<()> {
    if v.size() != shape {
        return Err(Error::Shape(format!(
            "{v_name} has shape {:?} but {of} has shape {shape:?}; they must be equal",
            v.size()
        )));
    }
    Ok(())
}

/// Checks that `v` is a stack `[k ≥ min_k, *like.shape]` of floats on `like`'s device; `who`
/// (the call or the estimator) starts the message.
pub(crate) fn check_stack(
    v: &Tensor,
    v_name: &str,
    like: &Tensor,
    like_name: &str,
    min_k: i64,
    who: &str,
) -> Result<()> {
    check_float(v, v_name)?;
    check_same_device(v, v_name, like, like_name)?;
    let (vs, ls) = (v.size(), like.size());
    if vs.len() != ls.len() + 1 || vs[1..] != ls[..] || vs[0] < min_k {
        return Err(Error::Shape(format!(
            "{who} needs {v_name}: [k ≥ {min_k}, *{like_name}.shape] = [k, {}], got {v_name} {vs:?}",
            ls.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// Checks a floating output and an input that requires grad, on one device.
pub(crate) fn check_pair(y: &Tensor, x: &Tensor) -> Result<()> {
    check_float(y, "y")?;
    check_input(x, "x")?;
    check_same_device(y, "y", x, "x")?;
    Ok(())
}

/// Checks `v` (named `v_name`): floating, on `like`'s device, of its shape.
pub(crate) fn check_vector(v: &Tensor, v_name: &str, like: &Tensor, like_name: &str) -> Result<()> {
    check_float(v, v_name)?;
    check_same_device(v, v_name, like, like_name)?;
    check_shape(v, v_name, &like.size(), like_name)
}

/// Checks that a Hessian's `y` is a scalar.
pub(crate) fn check_scalar(y: &Tensor) -> Result<()> {
    if y.numel() != 1 {
        return Err(Error::Shape(format!(
            "y must be a scalar (one element) for a Hessian, got shape {:?}; reduce it first (e.g. .sum())",
            y.size()
        )));
    }
    Ok(())
}

/// The names of a pass from output `y`.
pub(crate) fn y_names(inputs: &[String]) -> Names<'_> {
    Names {
        output: "y",
        inputs,
    }
}

/// Names used in error messages for one call.
#[derive(Clone, Copy)]
pub(crate) struct Names<'a> {
    pub output: &'a str,
    pub inputs: &'a [String],
}

impl Names<'_> {
    pub(crate) fn input(&self, i: usize) -> String {
        self.inputs
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("input {i}"))
    }
}

/// `x`, or `input 0`, `input 1`, … for several inputs.
pub(crate) fn input_names(n: usize) -> Vec<String> {
    if n == 1 {
        vec!["x".to_string()]
    } else {
        (0..n).map(|i| format!("input {i}")).collect()
    }
}

/// Settings of one backward pass: PyTorch's `create_graph` and `strict`, the vmap fallback of
/// batched passes, and the names its errors use.
#[derive(Clone, Copy)]
pub(crate) struct Pass<'a> {
    pub create_graph: bool,
    pub strict: bool,
    pub vmap_fallback: bool,
    pub names: Names<'a>,
}

impl<'a> Pass<'a> {
    /// A pass with these settings and the vmap fallback on.
    pub(crate) fn new(create_graph: bool, strict: bool, names: Names<'a>) -> Self {
        Pass {
            create_graph,
            strict,
            vmap_fallback: true,
            names,
        }
    }
    /// The same pass with another `create_graph`.
    pub(crate) fn create_graph(self, create_graph: bool) -> Self {
        Pass {
            create_graph,
            ..self
        }
    }
    /// The same pass with another `strict`.
    pub(crate) fn strict(self, strict: bool) -> Self {
        Pass { strict, ..self }
    }
    /// The same pass with other names.
    pub(crate) fn names(self, names: Names<'a>) -> Self {
        Pass { names, ..self }
    }
}

/// Vector-Jacobian products: `∂ root / ∂ inputs[k]` for every `k`, where `root` is seeded with
/// ones (so a non-scalar `root` yields the gradient of `root.sum()`).
///
/// The graph is always kept. An input that `root` does not reach gets zeros of its shape, or,
/// with `strict`, a [`Error::NotConnected`] — PyTorch's `strict=True` rule, including its
/// create_graph variant (a derivative that is constant in the inputs is refused).
pub(crate) fn vjp_into(root: &Tensor, inputs: &[&Tensor], pass: Pass<'_>) -> Result<Vec<Tensor>> {
    crate::native::ensure_norm_autograd()?;
    crate::native::taylor::refuse_unrecorded(root, "a backward pass")?;
    let grads: Vec<Option<Tensor>> = if root.requires_grad() {
        Tensor::f_run_backward(&[root], inputs, true, pass.create_graph)?
            .into_iter()
            .map(|g| g.defined().then_some(g))
            .collect()
    } else {
        inputs.iter().map(|_| None).collect()
    };
    settle(grads, inputs, root, pass, |x| Ok(x.f_zeros_like()?))
}

/// Batched vector-Jacobian products through the native engine: for cotangents
/// `v = [c, *root.shape]`, `G_k[r] = v[r]ᵀ ∂root/∂inputs[k]`, shape `[c, *inputs[k].shape]`, all
/// `c` rows in one backward pass (see [`crate::native`]). Same graph and `strict` rules as
/// [`vjp_into`].
pub(crate) fn batched_vjp_into(
    root: &Tensor,
    inputs: &[&Tensor],
    v: &Tensor,
    pass: Pass<'_>,
) -> Result<Vec<Tensor>> {
    let c = v.size().first().copied().unwrap_or(0);
    if crate::native::taylor::session_open() && c > 0 {
        // Inside a Laplacian's closure: one backward pass per cotangent, which collapsed Taylor
        // mode follows (it cannot follow functorch's vmap).
        let mut per_input: Vec<Vec<Tensor>> = inputs.iter().map(|_| Vec::new()).collect();
        for r in 0..c {
            let rooted = root.f_mul(&v.f_select(0, r)?)?.f_sum(None::<Kind>)?;
            for (k, g) in vjp_into(&rooted, inputs, pass)?.into_iter().enumerate() {
                per_input[k].push(g);
            }
        }
        return per_input
            .iter()
            .map(|rows| Ok(Tensor::f_stack(rows, 0)?))
            .collect();
    }
    crate::native::ensure_norm_autograd()?;
    crate::native::taylor::refuse_unrecorded(root, "a batched backward pass")?;
    let grads: Vec<Option<Tensor>> = if root.requires_grad() {
        crate::native::batched_vjp(root, inputs, v, pass.create_graph, pass.vmap_fallback)?
    } else {
        inputs.iter().map(|_| None).collect()
    };
    settle(grads, inputs, root, pass, |x| {
        let mut shape = vec![c];
        shape.extend(x.size());
        Ok(Tensor::f_zeros(shape.as_slice(), (x.kind(), x.device()))?)
    })
}

/// `v[r]ᵀ ∂y/∂x` for a stack of cotangents `v = [k, *y.shape]`, shape `[k, *x.shape]`: one
/// native batched pass ([`batched_vjp_into`]), or a loop of [`vjp_into`] without the engine or
/// for `k = 1`.
pub(crate) fn vjp_stack(y: &Tensor, x: &Tensor, v: &Tensor, pass: Pass<'_>) -> Result<Tensor> {
    // One cotangent (Hoffman's one projection per step): a plain backward pass, without a vmap
    // level around it.
    if crate::native::available() && v.size().first() != Some(&1) {
        return Ok(batched_vjp_into(y, &[x], v, pass)?.remove(0));
    }
    let rows = (0..v.size()[0])
        .map(|r| {
            let root = y.f_mul(&v.f_select(0, r)?)?.f_sum(None::<Kind>)?;
            Ok(vjp_into(&root, &[x], pass)?.remove(0))
        })
        .collect::<Result<Vec<_>>>()?;
    stack_or_empty(&rows, x, v.size()[0])
}

/// `rows` stacked along a new first dimension, or `[0, *like.shape]` when there are none.
pub(crate) fn stack_or_empty(rows: &[Tensor], like: &Tensor, k: i64) -> Result<Tensor> {
    if k == 0 {
        let mut shape = vec![0];
        shape.extend(like.size());
        return Ok(Tensor::f_zeros(
            shape.as_slice(),
            (like.kind(), like.device()),
        )?);
    }
    Ok(Tensor::f_stack(rows, 0)?)
}

/// The one Jacobian-vector product, by the double-backward trick (tch exposes no forward-mode
/// dual numbers): `g(w) = Jᵀw` is built once with create_graph for a zero `w` shaped like `y`;
/// then `J u = ∂(g(w) · u)/∂w` costs one more backward pass per product, for any `u`.
pub(crate) struct Linearized<'a> {
    /// The dummy cotangent `w`, shaped like `y`.
    w: Tensor,
    /// `g_k = ∂(y · w)/∂x_k`, one per input, differentiable in `w`.
    pub g: Vec<Tensor>,
    pass: Pass<'a>,
}

impl<'a> Linearized<'a> {
    /// Builds `g(w) = Jᵀw` for `y` and `inputs` (with `pass.strict`'s rules for unused inputs).
    pub(crate) fn new(y: &Tensor, inputs: &[&Tensor], pass: Pass<'a>) -> Result<Self> {
        let w = y.f_zeros_like()?.set_requires_grad(true);
        let root = y.f_mul(&w)?.f_sum(None::<Kind>)?;
        let g = vjp_into(&root, inputs, pass.create_graph(true))?;
        Ok(Linearized { w, g, pass })
    }

    /// `∂ root/∂w` for a `root` built from [`Linearized::g`] — e.g. `Σ_k g_k · u_k` is `J u`,
    /// `g[:, j]` is column `j` of every sample's `J`. Shaped like `y`; differentiable with the
    /// pass's `create_graph`.
    pub(crate) fn jvp_of(&self, root: &Tensor) -> Result<Tensor> {
        let w_names = [String::from("w")];
        let inner = Names {
            output: "Jᵀw",
            inputs: &w_names,
        };
        Ok(vjp_into(root, &[&self.w], self.pass.strict(false).names(inner))?.remove(0))
    }

    /// `J u[r]` for a stack of tangents `u = [k, *x.shape]` of the one input, in one native
    /// batched backward pass: `[k, *y.shape]`.
    pub(crate) fn jvp_batched(&self, u: &Tensor) -> Result<Tensor> {
        self.jvp_batched_of(&self.g[0], u)
    }

    /// `∂⟨root, u[r]⟩/∂w` for a stack `u = [k, *root.shape]`, in one native batched backward
    /// pass, for a `root` built from [`Linearized::g`] (e.g. `g_k` itself: `u` = tangents of
    /// input `k`): `[k, *y.shape]`.
    pub(crate) fn jvp_batched_of(&self, root: &Tensor, u: &Tensor) -> Result<Tensor> {
        let w_names = [String::from("w")];
        let inner = Names {
            output: "Jᵀw",
            inputs: &w_names,
        };
        let pass = self.pass.strict(false).names(inner);
        Ok(batched_vjp_into(root, &[&self.w], u, pass)?.remove(0))
    }

    /// `J u = Σ_k J_k u_k` for tangents `us` shaped like the inputs.
    pub(crate) fn jvp(&self, us: &[&Tensor]) -> Result<Tensor> {
        let mut root: Option<Tensor> = None;
        for (g, u) in self.g.iter().zip(us) {
            let term = g.f_mul(u)?.f_sum(None::<Kind>)?;
            root = Some(match root {
                None => term,
                Some(r) => r.f_add(&term)?,
            });
        }
        let root = root.ok_or_else(|| Error::InvalidArgument("jvp of no inputs".into()))?;
        self.jvp_of(&root)
    }
}

/// `g` as an ordinary tensor: libtorch returns the derivative of some ops (`sgn`, the
/// second derivative of `abs`) as a storage-free ZeroTensor, which tch cannot read (reading or
/// saving one ends the process); it becomes real zeros of the same shape, dtype and device.
pub(crate) fn materialize(g: Tensor) -> Result<Tensor> {
    if g.f_internal_is_zerotensor()? {
        return Ok(Tensor::f_zeros(
            g.size().as_slice(),
            (g.kind(), g.device()),
        )?);
    }
    Ok(g)
}

/// PyTorch's `strict` rules applied to the gradients of `root`: an undefined gradient is zeros
/// (`zeros(x)`) or, with `strict`, an error; with `strict` and `create_graph`, a gradient that
/// does not require grad is refused too.
fn settle(
    grads: Vec<Option<Tensor>>,
    inputs: &[&Tensor],
    root: &Tensor,
    pass: Pass<'_>,
    zeros: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let names = pass.names;
    grads
        .into_iter()
        .zip(inputs)
        .enumerate()
        .map(|(k, (g, x))| match g {
            Some(g) => {
                let g = materialize(g)?;
                if pass.strict && pass.create_graph && !g.requires_grad() {
                    return Err(Error::NotConnected {
                        output: names.output.to_string(),
                        input: names.input(k),
                        detail: "its derivative does not depend on the inputs, which strict mode refuses with create_graph=true".into(),
                    });
                }
                Ok(g)
            }
            None if pass.strict => Err(Error::NotConnected {
                output: names.output.to_string(),
                input: names.input(k),
                detail: if root.requires_grad() {
                    format!("no gradient reaches {} (strict mode)", names.input(k))
                } else {
                    format!("{} does not require grad (strict mode)", names.output)
                },
            }),
            None => zeros(x),
        })
        .collect()
}
