//! The auto-encoder and its training loop (the penalty's estimator from the command line).
use super::*;

/// One sigmoid layer in, one linear layer out.
pub(crate) struct AutoEncoder {
    pub(crate) vs: nn::VarStore,
    pub(crate) enc: nn::Linear,
    pub(crate) dec: nn::Linear,
}

impl AutoEncoder {
    pub(crate) fn new(device: Device, n: i64, hidden: i64) -> Self {
        let vs = nn::VarStore::new(device);
        let enc = nn::linear(vs.root() / "enc", n, hidden, Default::default());
        let dec = nn::linear(vs.root() / "dec", hidden, n, Default::default());
        AutoEncoder { vs, enc, dec }
    }

    pub(crate) fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.enc.forward(x).f_sigmoid()?)
    }

    pub(crate) fn decode(&self, h: &Tensor) -> Tensor {
        self.dec.forward(h)
    }
}

/// `‖x − x̂‖²` per sample, `[B]`.
pub(crate) fn sq_error(x: &Tensor, xr: &Tensor) -> Result<Tensor> {
    Ok(xr
        .f_sub(x)?
        .f_square()?
        .f_sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)?)
}

pub(crate) struct Config {
    pub(crate) estimator: EstimatorArg,
    pub(crate) k: usize,
    pub(crate) hidden: i64,
    pub(crate) epochs: usize,
    pub(crate) batch_size: i64,
    pub(crate) lr: f64,
}

impl Config {
    pub(crate) fn estimator(&self, model: &AutoEncoder) -> PenaltyEstimator {
        match self.estimator {
            EstimatorArg::ClosedForm => PenaltyEstimator::sigmoid_closed_form(&model.enc.ws),
            EstimatorArg::Exact => PenaltyEstimator::Exact,
            // Fresh directions at every step from torch's (seeded) generator.
            EstimatorArg::Projections => PenaltyEstimator::Projections {
                directions: self.k,
                seed: None,
            },
            EstimatorArg::HutchPlusPlus => PenaltyEstimator::HutchPlusPlus {
                directions: self.k,
                seed: None,
            },
        }
    }
}

/// Trains one auto-encoder (`lambda = 0`: plain) with a progress bar over the epochs showing the
/// epoch's mean reconstruction error and `‖J‖_F²`.
pub(crate) fn train(
    data: &Data,
    cfg: &Config,
    lambda: f64,
    label: &'static str,
) -> Result<AutoEncoder> {
    let device = data.train.device();
    let (n_train, n) = (data.train.size()[0], data.train.size()[1]);
    let model = AutoEncoder::new(device, n, cfg.hidden);
    let mut opt = nn::Adam::default().build(&model.vs, cfg.lr)?;
    let penalized = lambda > 0.0;
    let x_needs_grad = penalized && cfg.estimator != EstimatorArg::ClosedForm;

    let pb = ProgressBar::new(cfg.epochs as u64).with_prefix(label);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>3} [{bar:20}] epoch {pos}/{len}  {msg}  {elapsed}")?
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let (mut recon, mut jac_sq) = (f64::NAN, f64::NAN);
    for _ in 0..cfg.epochs {
        let perm = Tensor::f_randperm(n_train, (Kind::Int64, device))?;
        let mut recon_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut jac_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut lo = 0;
        while lo < n_train {
            let len = cfg.batch_size.min(n_train - lo);
            let idx = perm.f_narrow(0, lo, len)?;
            lo += len;
            let mut x = data.train.f_index_select(0, &idx)?;
            if x_needs_grad {
                x = x.set_requires_grad(true);
            }
            let h = model.encode(&x)?;
            let per_sample = sq_error(&x, &model.decode(&h))?;
            let rec = per_sample.f_mean(None::<Kind>)?;
            let loss = if penalized {
                let penalty = jacobian_penalty(
                    &h,
                    &x,
                    &PenaltyOptions::default().estimator(&cfg.estimator(&model)),
                )?;
                rec.f_add(&penalty.f_mul_scalar(lambda)?)?
            } else {
                rec.shallow_clone()
            };
            // What the bar shows, before the step: the exact ‖J‖_F² of this batch (closed form).
            tch::no_grad(|| -> Result<()> {
                let js = sigmoid_linear_frobenius_sq(&model.enc.ws, &h.f_detach()?)?;
                jac_sum = jac_sum.f_add(&js.f_sum(Kind::Float)?)?;
                recon_sum = recon_sum.f_add(&per_sample.f_detach()?.f_sum(Kind::Float)?)?;
                Ok(())
            })?;
            opt.zero_grad();
            loss.f_backward()?;
            opt.step();
        }
        recon = recon_sum.f_double_value(&[])? / n_train as f64;
        jac_sq = jac_sum.f_double_value(&[])? / n_train as f64;
        if !(recon.is_finite() && jac_sq.is_finite()) {
            pb.abandon();
            bail!("{label}: training diverged (reconstruction {recon}, |J|_F^2 {jac_sq}); try a smaller --lr or --lambda");
        }
        pb.set_message(format!("recon {recon:.4}  ‖J‖²_F {jac_sq:.3}"));
        pb.inc(1);
    }
    pb.finish_and_clear();
    println!(
        "{label:>3}: {} epochs in {:.1} s; last epoch: recon ‖x−x̂‖² {recon:.4}, penalty ‖J‖²_F {jac_sq:.3}",
        cfg.epochs,
        start.elapsed().as_secs_f64()
    );
    Ok(model)
}
