//! `Forward`: one Jacobian-vector product per input element — all of them in one native batched
//! pass when the engine is built; for a closure without create_graph, forward-mode AD instead
//! ([`dual_columns`]).
use tch::Tensor;

use super::batched::identity_rows;
use super::{chunk_len, dims, empty_blocks, flat, Closure, Run};
use crate::autograd::Linearized;
use crate::error::Result;

/// With the native engine and a closure: forward-mode AD, torch.func's jacfwd — `f` evaluated on
/// dual tensors whose tangents are the identity columns batched at one vmap level
/// ([`crate::native::jacfwd`]), chunked like [`batched_columns`]. No reverse graph is built and
/// `f` need not be row-wise. Returns the `[B, m, n]` block of `x` (`[1, m, n]` for a plain
/// closure).
pub(super) fn dual_columns(
    c: &Closure<'_>,
    x: &Tensor,
    y2: &Tensor,
    run: &Run<'_>,
) -> Result<Tensor> {
    let (b, m) = dims(y2);
    let n = x.numel() as i64 / b.max(1);
    if m == 0 || n == 0 {
        return Ok(Tensor::f_zeros([b, m, n], (x.kind(), x.device()))?);
    }
    let primal = x.f_detach()?;
    // [B, n] (or [n]) view, for the identity columns.
    let x2 = if c.batched {
        primal.f_reshape([b, n])?
    } else {
        primal.f_reshape([n])?
    };
    let per_col = (b * (m + n)).max(1) as usize;
    let chunk = chunk_len(Some(crate::strategy::AUTO_BATCHED_BUDGET / per_col), n);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let mut shape = vec![len];
        shape.extend(x.size());
        let u = identity_rows(&x2, start, len)?.f_reshape(shape.as_slice())?;
        let (cols, _) = crate::native::jacfwd(c.call, &primal, &u, run.pass.vmap_fallback)?;
        parts.push(cols.f_reshape([len, b, m])?.f_permute([1, 2, 0])?);
        start += len;
        run.report(start, n);
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        Tensor::f_cat(&parts, 2)?
    })
}

/// `g(w) = Jᵀw` built once ([`Linearized`]), then one backward pass of `g[:, j]` with respect to
/// `w` per input element `j` gives column `J e_j` of every sample's `J`.
pub(super) fn columns(y2: &Tensor, xs: &[&Tensor], run: &Run<'_>) -> Result<Vec<Tensor>> {
    let (b, m) = dims(y2);
    if m == 0 {
        return empty_blocks(b, xs);
    }
    let lin = Linearized::new(y2, xs, run.pass)?;
    let total: i64 = lin.g.iter().map(|g| g.numel() as i64 / b).sum();
    if crate::native::available() {
        return batched_columns(&lin, b, m, total, run);
    }
    let mut done = 0;
    lin.g
        .iter()
        .map(|g| {
            let g2 = flat(g, b)?;
            let cols = (0..g2.size()[1])
                .map(|j| {
                    let col = lin.jvp_of(&g2.f_select(1, j)?)?.f_reshape([b, m])?;
                    done += 1;
                    run.report(done, total);
                    Ok(col)
                })
                .collect::<Result<Vec<_>>>()?;
            if cols.is_empty() {
                return Ok(Tensor::f_zeros([b, m, 0], (g2.kind(), g2.device()))?);
            }
            Ok(Tensor::f_stack(&cols, 2)?)
        })
        .collect()
}

/// With the native engine: the columns of every input `k` in batched backward passes of `g_k`
/// over identity tangents (`[c, B, n_k]`, chunked so that `c · B · (m + n_k)` stays under
/// [`crate::strategy::AUTO_BATCHED_BUDGET`]): `Jᵀw` once, then one pass per chunk instead of one
/// per column.
fn batched_columns(
    lin: &Linearized<'_>,
    b: i64,
    m: i64,
    total: i64,
    run: &Run<'_>,
) -> Result<Vec<Tensor>> {
    let mut done = 0;
    lin.g
        .iter()
        .map(|g| {
            let g2 = flat(g, b)?;
            let n = g2.size()[1];
            if n == 0 {
                return Ok(Tensor::f_zeros([b, m, 0], (g2.kind(), g2.device()))?);
            }
            let per_row = (b * (m + n)).max(1) as usize;
            let chunk = chunk_len(Some(crate::strategy::AUTO_BATCHED_BUDGET / per_row), n);
            let mut parts = Vec::new();
            let mut start = 0;
            while start < n {
                let len = chunk.min(n - start);
                let u = identity_rows(&g2, start, len)?; // [len, B, n]
                let cols = lin.jvp_batched_of(&g2, &u)?; // [len, *y2.shape]
                parts.push(cols.f_reshape([len, b, m])?.f_permute([1, 2, 0])?);
                start += len;
                done += len;
                run.report(done, total);
            }
            Ok(if parts.len() == 1 {
                parts.remove(0)
            } else {
                Tensor::f_cat(&parts, 2)?
            })
        })
        .collect()
}
