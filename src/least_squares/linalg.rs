//! Batched small linear algebra on the `[B, n, n]` normal matrices.

use tch::{Kind, Tensor};

use crate::error::Result;

/// The dtype's machine epsilon.
pub(crate) fn eps(kind: Kind) -> f64 {
    match kind {
        Kind::Float => f32::EPSILON as f64,
        _ => f64::EPSILON,
    }
}

/// `Σ_j t[b, j]²` over the last dimension, `[B]`.
pub(crate) fn sq_norm(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_square()?.f_sum_dim_intlist(-1, false, None::<Kind>)?)
}

/// `‖t[b]‖₂` over the last dimension, `[B]`.
pub(crate) fn norm(t: &Tensor) -> Result<Tensor> {
    Ok(sq_norm(t)?.f_sqrt()?)
}

/// `Σ_j a[b, j] c[b, j]`, `[B]`.
pub(crate) fn dot(a: &Tensor, c: &Tensor) -> Result<Tensor> {
    Ok(a.f_mul(c)?.f_sum_dim_intlist(-1, false, None::<Kind>)?)
}

/// `a[b] p[b]`: `[B, n, n] × [B, n] → [B, n]`.
pub(crate) fn matvec(a: &Tensor, p: &Tensor) -> Result<Tensor> {
    Ok(a.f_matmul(&p.f_unsqueeze(-1)?)?.f_squeeze_dim(-1)?)
}

/// The quadratic model `gᵀp + ½ pᵀ A p` per problem, `[B]`.
pub(crate) fn quadratic(a: &Tensor, g: &Tensor, p: &Tensor) -> Result<Tensor> {
    Ok(dot(g, p)?.f_add(&dot(p, &matvec(a, p)?)?.f_mul_scalar(0.5)?)?)
}

/// A `[B]` tensor as `[B, 1]` (or `[B, 1, 1]` with `dims = 2`) for broadcasting.
pub(crate) fn col(t: &Tensor, dims: usize) -> Result<Tensor> {
    let mut s = t.size();
    s.extend(std::iter::repeat_n(1, dims));
    Ok(t.f_reshape(s.as_slice())?)
}
