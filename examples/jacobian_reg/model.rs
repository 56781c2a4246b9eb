//! The two classifiers and the training loop: cross-entropy, plus `λ·jacobian_penalty(logits, //! x, &PenaltyOptions::default().estimator(estimator))` when an estimator is chosen.
use super::*;

/// Which network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelKind {
    /// Linear(n,128) → ReLU → Linear(128,128) → ReLU → Linear(128,10) on flattened images.
    Mlp,
    /// Conv(1,16,3,pad 1) → LayerNorm([16,H,W]) → ReLU → MaxPool(2) → Conv(16,32,3,pad 1) → ReLU →
    /// MaxPool(2) → flatten → Linear(32·(H/4)·(W/4),10) on `[B, 1, H, W]`.
    Cnn,
}

impl ModelKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::Cnn => "cnn",
        }
    }

    pub(crate) fn describe(self, side: i64) -> String {
        match self {
            ModelKind::Mlp => format!("{} → 128 → 128 → 10, ReLU", side * side),
            ModelKind::Cnn => format!(
                "conv 16 → LayerNorm[16,{side},{side}] → ReLU → pool → conv 32 → ReLU → pool → linear {} → 10",
                32 * (side / 4) * (side / 4)
            ),
        }
    }
}

/// How the penalty `mean_b ‖J_b‖_F²` is computed while training (`None`: not at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EstimatorArg {
    None,
    Exact,
    Projections,
    HutchPlusPlus,
}

impl EstimatorArg {
    pub(crate) const ALL: [EstimatorArg; 4] = [
        EstimatorArg::None,
        EstimatorArg::Exact,
        EstimatorArg::Projections,
        EstimatorArg::HutchPlusPlus,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            EstimatorArg::None => "none",
            EstimatorArg::Exact => "exact",
            EstimatorArg::Projections => "projections",
            EstimatorArg::HutchPlusPlus => "hutchpp",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == s)
    }

    /// The crate's estimator; fresh draws at every step from torch's (seeded) generator.
    pub(crate) fn estimator(self) -> Option<PenaltyEstimator> {
        match self {
            EstimatorArg::None => None,
            EstimatorArg::Exact => Some(PenaltyEstimator::Exact),
            EstimatorArg::Projections => Some(PenaltyEstimator::Projections {
                directions: 1,
                seed: None,
            }),
            EstimatorArg::HutchPlusPlus => Some(PenaltyEstimator::HutchPlusPlus {
                directions: 3,
                seed: None,
            }),
        }
    }
}

/// A classifier: its variables and its layers.
pub(crate) struct Net {
    pub(crate) kind: ModelKind,
    pub(crate) vs: nn::VarStore,
    seq: nn::Sequential,
    side: i64,
}

impl Net {
    /// The network with PyTorch's default initialization, as the twin has it (seed torch's
    /// generator first): weights and biases `U(−1/√fan_in, 1/√fan_in)` (`nn.Linear`,
    /// `nn.Conv2d`), LayerNorm 1 and 0. (tch's own defaults differ: Kaiming uniform with the ReLU
    /// gain, √6 times wider, and zero conv biases.)
    pub(crate) fn new(kind: ModelKind, side: i64, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let p = vs.root();
        let torch_uniform = |fan_in: i64| {
            let b = 1.0 / (fan_in as f64).sqrt();
            nn::Init::Uniform { lo: -b, up: b }
        };
        let linear = |name: &str, i: i64, o: i64| {
            let cfg = nn::LinearConfig {
                ws_init: torch_uniform(i),
                bs_init: Some(torch_uniform(i)),
                bias: true,
            };
            nn::linear(&p / name, i, o, cfg)
        };
        let conv = |name: &str, i: i64, o: i64| {
            let cfg = nn::ConvConfig {
                padding: 1,
                ws_init: torch_uniform(i * 9),
                bs_init: torch_uniform(i * 9),
                ..Default::default()
            };
            nn::conv2d(&p / name, i, o, 3, cfg)
        };
        let seq = match kind {
            ModelKind::Mlp => nn::seq()
                .add(linear("fc1", side * side, 128))
                .add_fn(|x| x.relu())
                .add(linear("fc2", 128, 128))
                .add_fn(|x| x.relu())
                .add(linear("fc3", 128, 10)),
            ModelKind::Cnn => {
                let pooled = side / 4;
                nn::seq()
                    .add(conv("conv1", 1, 16))
                    .add(nn::layer_norm(
                        &p / "norm1",
                        vec![16, side, side],
                        Default::default(),
                    ))
                    .add_fn(|x| x.relu().max_pool2d_default(2))
                    .add(conv("conv2", 16, 32))
                    .add_fn(|x| x.relu().max_pool2d_default(2).flatten(1, -1))
                    .add(linear("fc", 32 * pooled * pooled, 10))
            }
        };
        Net {
            kind,
            vs,
            seq,
            side,
        }
    }

    /// Images `[B, 1, H, W]` in the model's input shape: `[B, H·W]` for the MLP, as they are for
    /// the CNN.
    pub(crate) fn input(&self, images: &Tensor) -> Result<Tensor> {
        Ok(match self.kind {
            ModelKind::Mlp => images.f_reshape([-1, self.side * self.side])?,
            ModelKind::Cnn => images.shallow_clone(),
        })
    }

    /// Logits `[B, 10]` of inputs in the model's input shape.
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        self.seq.forward(x)
    }
}

/// The training hyper-parameters.
pub(crate) struct Config {
    pub(crate) epochs: usize,
    pub(crate) batch_size: i64,
    pub(crate) lr: f64,
    pub(crate) lambda: f64,
}

/// A trained network and its training times.
pub(crate) struct Trained {
    pub(crate) net: Net,
    /// Wall time of each epoch's training steps, ms.
    pub(crate) epoch_ms: Vec<f64>,
    /// Last epoch's mean cross-entropy and mean penalty (NaN without one).
    pub(crate) last_ce: f64,
    pub(crate) last_penalty: f64,
}

impl Trained {
    /// Mean and minimum of the epoch times over epochs 2..N (all of them when N = 1).
    pub(crate) fn ms_per_epoch(&self) -> (f64, f64) {
        let t = if self.epoch_ms.len() > 1 {
            &self.epoch_ms[1..]
        } else {
            &self.epoch_ms[..]
        };
        let mean = t.iter().sum::<f64>() / t.len() as f64;
        (mean, t.iter().copied().fold(f64::INFINITY, f64::min))
    }
}

/// Waits for the device's queued work (for honest wall times on CUDA).
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Trains one network: `manual_seed(seed)`, the model, Adam; every epoch a fresh permutation,
/// mini-batches (the last partial one kept), loss `CE + λ·penalty`. A progress bar over the
/// epochs shows the running losses (`quiet`: none).
pub(crate) fn train(
    data: &Data,
    kind: ModelKind,
    est: EstimatorArg,
    seed: i64,
    cfg: &Config,
    quiet: bool,
) -> Result<Trained> {
    let device = data.train_x.device();
    tch::manual_seed(seed);
    let net = Net::new(kind, data.side, device);
    let mut opt = nn::Adam::default().build(&net.vs, cfg.lr)?;
    let estimator = est.estimator();
    let n_train = data.train_x.size()[0];
    let label = format!("{} {} seed {seed}", kind.name(), est.name());

    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(cfg.epochs as u64)
    }
    .with_prefix(label.clone());
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:<26} [{bar:20}] epoch {pos}/{len}  {msg}  {elapsed}",
        )?
        .progress_chars("=> "),
    );
    let mut epoch_ms = Vec::with_capacity(cfg.epochs);
    let (mut last_ce, mut last_penalty) = (f64::NAN, f64::NAN);
    for _ in 0..cfg.epochs {
        let start = Instant::now();
        let perm = Tensor::f_randperm(n_train, (Kind::Int64, device))?;
        let mut ce_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut pen_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut lo = 0;
        while lo < n_train {
            let len = cfg.batch_size.min(n_train - lo);
            let idx = perm.f_narrow(0, lo, len)?;
            lo += len;
            let mut x = net.input(&data.train_x.f_index_select(0, &idx)?)?;
            let y = data.train_y.f_index_select(0, &idx)?;
            if estimator.is_some() {
                // The penalty differentiates the logits against x: x must require grad
                // before the logits are computed.
                x = x.f_detach()?.set_requires_grad(true);
            }
            let logits = net.forward(&x);
            let ce =
                logits.f_cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0)?;
            let loss = match &estimator {
                Some(e) => {
                    let penalty =
                        jacobian_penalty(&logits, &x, &PenaltyOptions::default().estimator(e))?;
                    pen_sum = pen_sum.f_add(&penalty.f_detach()?.f_mul_scalar(len as f64)?)?;
                    ce.f_add(&penalty.f_mul_scalar(cfg.lambda)?)?
                }
                None => ce.shallow_clone(),
            };
            ce_sum = ce_sum.f_add(&ce.f_detach()?.f_mul_scalar(len as f64)?)?;
            opt.zero_grad();
            loss.f_backward()?;
            opt.step();
        }
        sync(device);
        epoch_ms.push(start.elapsed().as_secs_f64() * 1e3);
        last_ce = ce_sum.f_double_value(&[])? / n_train as f64;
        if estimator.is_some() {
            last_penalty = pen_sum.f_double_value(&[])? / n_train as f64;
        }
        if !(last_ce.is_finite() && (estimator.is_none() || last_penalty.is_finite())) {
            pb.abandon();
            bail!("{label}: training diverged (cross-entropy {last_ce}, penalty {last_penalty}); try a smaller --lr or --lambda");
        }
        pb.set_message(if estimator.is_some() {
            format!("CE {last_ce:.4}  ‖J‖²_F {last_penalty:.3}")
        } else {
            format!("CE {last_ce:.4}")
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(Trained {
        net,
        epoch_ms,
        last_ce,
        last_penalty,
    })
}
