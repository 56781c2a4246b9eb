//! `Batched`: rows of `J` by native batched backward passes over identity cotangents.
use tch::{Kind, Tensor};

use super::{chunk_len, dims, empty_blocks, Blocks, Run};
use crate::autograd::batched_vjp_into;
use crate::error::Result;

/// For each chunk of `c` output rows starting at `start`, one native batched backward pass of
/// `y2` with the cotangents `E = I[start..start + c]` (`[c, m]`, or `[c, B, m]` expanded over the
/// samples), giving `[c, B·n_k]` per input: rows `start..start + c` of every sample's Jacobian.
pub(super) fn batched(
    y2: &Tensor,
    xs: &[&Tensor],
    chunk_size: Option<usize>,
    run: &Run<'_>,
) -> Result<Vec<Tensor>> {
    if !crate::native::available() {
        return Err(crate::native::unavailable());
    }
    let (b, m) = dims(y2);
    if m == 0 {
        return empty_blocks(b, xs);
    }
    let chunk = chunk_len(chunk_size, m);
    let shapes: Vec<_> = xs
        .iter()
        .map(|x| ([b, m, x.numel() as i64 / b], (x.kind(), x.device())))
        .collect();
    let mut blocks = Blocks::new(&shapes, chunk < m, &run.pass)?;
    let mut start = 0;
    while start < m {
        let len = chunk.min(m - start);
        let v = identity_rows(y2, start, len)?;
        let chunk = batched_vjp_into(y2, xs, &v, run.pass)?
            .iter()
            // [c, B, n_k] -> [B, c, n_k]
            .map(|g| Ok(g.f_reshape([len, b, -1])?.f_transpose(0, 1)?))
            .collect::<Result<Vec<_>>>()?;
        blocks.put(start, chunk)?;
        start += len;
        run.report(start, m);
    }
    blocks.finish()
}

/// Rows `start..start + len` of the `m × m` identity as cotangents for the rows view `y2`:
/// `[len, m]`, or `[len, B, m]` (expanded, no copy) when `y2` is `[B, m]`.
pub(super) fn identity_rows(y2: &Tensor, start: i64, len: i64) -> Result<Tensor> {
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
