//! `RowLoop`: the notebook's loop, one backward pass per output element.
use tch::Tensor;

use super::{dims, empty_blocks, flat, row, Run};
use crate::autograd::vjp_into;
use crate::error::Result;

/// One backward pass per output element `i`, of `y2[:, i]` (seeded with ones, so the samples'
/// rows come out together): row `i` of every sample's `J`.
pub(super) fn rows(y2: &Tensor, xs: &[&Tensor], run: &Run<'_>) -> Result<Vec<Tensor>> {
    let (b, m) = dims(y2);
    if m == 0 {
        return empty_blocks(b, xs);
    }
    let mut blocks: Vec<Vec<Tensor>> = xs.iter().map(|_| Vec::with_capacity(m as usize)).collect();
    for i in 0..m {
        let root = row(y2, i)?;
        for (block, g) in blocks.iter_mut().zip(vjp_into(&root, xs, run.pass)?) {
            block.push(flat(&g, b)?);
        }
        run.report(i + 1, m);
    }
    blocks
        .iter()
        .map(|rows| Ok(Tensor::f_stack(rows, 1)?))
        .collect()
}
