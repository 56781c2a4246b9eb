//! The data: a curved 2-D sheet in 64-D, the 8x8 digits of `data/digits/`, or MNIST's IDX files.
use super::*;

/// Training and held-out points, `[N, n]` f32 on the training device.
pub(crate) struct Data {
    pub(crate) name: String,
    pub(crate) train: Tensor,
    pub(crate) test: Tensor,
    /// The manifold's dimension, when known.
    pub(crate) intrinsic_dim: Option<usize>,
}

/// Points on a curved 2-D sheet in 64-D: latent coordinates `(u, v)` uniform in `[−1, 1]²`, mapped
/// by the fixed smooth random map `(u, v) ↦ tanh(u a + v b + c)` (`a`, `b`, `c` Gaussian in ℝ⁶⁴,
/// drawn once from the seed; injective, curved by the tanh), plus Gaussian noise of s.d. `noise`.
pub(crate) fn curved_sheet(n_train: i64, n_test: i64, noise: f64, device: Device) -> Result<Data> {
    const DIM: i64 = 64;
    let cpu = (Kind::Float, Device::Cpu);
    let n = n_train + n_test;
    let latent = Tensor::f_rand([n, 2], cpu)?
        .f_mul_scalar(2.0)?
        .f_sub_scalar(1.0)?; // [n, 2]
    let ab = Tensor::f_randn([2, DIM], cpu)?.f_mul_scalar(0.7)?;
    let c = Tensor::f_randn([DIM], cpu)?.f_mul_scalar(0.5)?;
    let x = latent
        .f_matmul(&ab)?
        .f_add(&c)?
        .f_tanh()?
        .f_add(&Tensor::f_randn([n, DIM], cpu)?.f_mul_scalar(noise)?)?
        .f_to_device(device)?;
    Ok(Data {
        name: format!("curved 2-D sheet in {DIM}-D, noise s.d. {noise}"),
        train: x.f_narrow(0, 0, n_train)?,
        test: x.f_narrow(0, n_train, n_test)?,
        intrinsic_dim: Some(2),
    })
}

/// The 8x8 digits of `dir` (the `jacobian_reg` example's reader), flattened: 1437 training and
/// 360 held-out images, `[N, 64]` in `[0, 1]`; the labels are not used.
pub(crate) fn digits(dir: &Path, device: Device) -> Result<Data> {
    let [(train, _), (test, _)] = digits::load_digits(dir).context("--digits")?;
    let flat = |t: Tensor| -> Result<Tensor> { Ok(t.f_reshape([-1, 64])?.f_to_device(device)?) };
    Ok(Data {
        name: format!("8x8 digits (64 pixels) from {}", digits::shown(dir)),
        train: flat(train)?,
        test: flat(test)?,
        intrinsic_dim: None,
    })
}

/// MNIST's 60 000 training images and the first `n_test` test images, `[N, 784]` in `[0, 1]`.
pub(crate) fn mnist(dir: &Path, n_test: i64, device: Device) -> Result<Data> {
    let ds = digits::load_mnist(dir)?;
    let n_test = n_test.min(ds.test_images.size()[0]);
    Ok(Data {
        name: format!(
            "MNIST ({} pixels) from {}",
            ds.train_images.size()[1],
            dir.display()
        ),
        train: ds.train_images.f_to_device(device)?,
        test: ds.test_images.f_narrow(0, 0, n_test)?.f_to_device(device)?,
        intrinsic_dim: None,
    })
}
