//! Criterion benchmarks of the Jacobian strategies.
//!
//!     cargo bench -p tch-jacobian-bench --bench jacobian                                   # CPU, f32, ~3 minutes
//!     TCH_JACOBIAN_BENCH_DEVICE=cuda cargo bench -p tch-jacobian-bench --bench jacobian    # on GPU 0
//!     cargo bench -p tch-jacobian-bench --bench jacobian -- 'sigmoid/n=m=64/'              # a filter
//!
//! Models (f32, row-wise on a leading batch dimension so that every strategy applies):
//! * `sigmoid`: the notebook's `F(x) = σ(Wx)`, written `σ(x Wᵀ)`;
//! * `mlp`: a 2-layer tanh MLP `tanh(tanh(x W₁ᵀ + b₁) W₂ᵀ + b₂)` with `m` hidden units.
//!
//! Shapes: `n = m ∈ {3, 64, 256, 1024}` and the tall `16 → 1024`, each through `jacobian_of`
//! (RowLoop, Vectorized with `chunk_size` None / 64 / 256 where the chunk is smaller than `m`,
//! Forward, VectorizedForward, Auto) and through `jacobian_with` on a `y` computed inside the
//! timed call (RowLoop, Forward, Auto); per-sample Jacobians through `per_sample_jacobian_of` at
//! `B = 128`, `784 → 64` (RowLoop, Vectorized, Forward, VectorizedForward, Auto). Every timed call
//! includes the forward pass.
//!
//! The thread count is libtorch's default (printed at the start). On CUDA the clock stops after
//! `tch::Cuda::synchronize`. Groups use small samples (10–20, 0.5–1 s each; flat sampling above
//! `n = 64`) so that the whole run stays under ~3 minutes on a 2-core CPU; the slowest calls
//! (the MLP's RowLoop/Forward at 1024, Forward/VectorizedForward over the batch) take 0.2–0.8 s.
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use tch::{Device, Kind, Tensor};
use tch_jacobian::{jacobian_of, jacobian_with, per_sample_jacobian_of, JacobianOptions, Strategy};

use tch_jacobian_bench::{env_device as device, sync};

/// Times `f` (one Jacobian per call), synchronizing CUDA before the clock stops.
fn bench(group: &mut BenchmarkGroup<'_, WallTime>, id: &str, dev: Device, f: impl Fn() -> Tensor) {
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            sync(dev);
            let start = Instant::now();
            for _ in 0..iters {
                drop(black_box(f()));
            }
            sync(dev);
            start.elapsed()
        })
    });
}

#[derive(Clone, Copy, PartialEq)]
enum ModelKind {
    Sigmoid,
    Mlp,
}

/// The benchmarked function, row-wise: `[n] → [m]` and `[c, n] → [c, m]`.
struct Model {
    kind: ModelKind,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

impl Model {
    fn new(kind: ModelKind, n: i64, m: i64, dev: Device) -> Model {
        let opt = (Kind::Float, dev);
        let hidden = m;
        Model {
            kind,
            w1: Tensor::randn([hidden, n], opt) / (n as f64).sqrt(),
            b1: Tensor::randn([hidden], opt) * 0.1,
            w2: Tensor::randn([m, hidden], opt) / (hidden as f64).sqrt(),
            b2: Tensor::randn([m], opt) * 0.1,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        match self.kind {
            ModelKind::Sigmoid => x.matmul(&self.w1.tr()).sigmoid(),
            ModelKind::Mlp => {
                let h = (x.matmul(&self.w1.tr()) + &self.b1).tanh();
                (h.matmul(&self.w2.tr()) + &self.b2).tanh()
            }
        }
    }
}

fn opts(s: Strategy) -> JacobianOptions<'static> {
    JacobianOptions::default().strategy(s)
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, n: i64, m: i64) {
    let big = n.max(m);
    if big <= 64 {
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(500));
    } else if big <= 256 {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(800))
            .sampling_mode(SamplingMode::Flat);
    } else {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(1000))
            .sampling_mode(SamplingMode::Flat);
    }
}

fn single(c: &mut Criterion, kind: ModelKind, n: i64, m: i64, dev: Device) {
    let name = match kind {
        ModelKind::Sigmoid => "sigmoid",
        ModelKind::Mlp => "mlp",
    };
    let shape = if n == m {
        format!("n=m={n}")
    } else {
        format!("{n}->{m}")
    };
    let model = Model::new(kind, n, m, dev);
    let f = |x: &Tensor| model.forward(x);
    let x = Tensor::randn([n], (Kind::Float, dev));
    let xg = x.detach().set_requires_grad(true);

    let mut group = c.benchmark_group(format!("{name}/{shape}"));
    configure(&mut group, n, m);
    // Labelled by `Strategy`'s names (`row-loop`, `vectorized:64`, …).
    let mut strategies = strategies();
    for chunk in [64usize, 256] {
        if (chunk as i64) < m {
            strategies.push(Strategy::Vectorized {
                chunk_size: Some(chunk),
            });
        }
    }
    for s in &strategies {
        let o = opts(*s);
        bench(&mut group, &format!("jacobian_of/{s}"), dev, || {
            jacobian_of(f, &x, &o).expect("jacobian_of")
        });
    }
    for s in &strategies {
        if matches!(
            s,
            Strategy::Vectorized { .. } | Strategy::VectorizedForward { .. }
        ) {
            continue; // they need the closure
        }
        let o = opts(*s);
        bench(&mut group, &format!("jacobian_with/{s}"), dev, || {
            let y = f(&xg);
            jacobian_with(&y, &[&xg], &o)
                .expect("jacobian_with")
                .remove(0)
        });
    }
    group.finish();
}

/// Every strategy unchunked (`Batched` when the native engine is built).
fn strategies() -> Vec<Strategy> {
    let mut all = vec![Strategy::RowLoop];
    if tch_jacobian::native::available() {
        all.push(Strategy::Batched { chunk_size: None });
    }
    all.extend([
        Strategy::Vectorized { chunk_size: None },
        Strategy::Forward,
        Strategy::VectorizedForward { chunk_size: None },
        Strategy::Auto,
    ]);
    all
}

fn batch(c: &mut Criterion, dev: Device) {
    let (b, n, m) = (128i64, 784i64, 64i64);
    let model = Model::new(ModelKind::Sigmoid, n, m, dev);
    let f = |x: &Tensor| model.forward(x);
    let x = Tensor::randn([b, n], (Kind::Float, dev));
    let mut group = c.benchmark_group(format!("batch_sigmoid/B={b},{n}->{m}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_millis(1000))
        .sampling_mode(SamplingMode::Flat);
    for s in strategies() {
        let o = opts(s);
        bench(
            &mut group,
            &format!("per_sample_jacobian_of/{s}"),
            dev,
            || per_sample_jacobian_of(f, &x, &o).expect("per_sample_jacobian_of"),
        );
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let dev = device();
    tch::manual_seed(0);
    eprintln!(
        "tch-jacobian benches: device {dev:?}, f32, tch::get_num_threads() = {} (libtorch default), {} CPUs",
        tch::get_num_threads(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    for kind in [ModelKind::Sigmoid, ModelKind::Mlp] {
        for (n, m) in [(3, 3), (64, 64), (256, 256), (1024, 1024), (16, 1024)] {
            single(c, kind, n, m, dev);
        }
    }
    batch(c, dev);
}

criterion_group! {
    name = jacobian_benches;
    config = Criterion::default().nresamples(10_000);
    targets = benches
}
criterion_main!(jacobian_benches);
