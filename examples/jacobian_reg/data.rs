//! The data: the 8x8 digits (`data/digits/*.npy`, read by [`digits`](super::digits)) or
//! MNIST's IDX files, as `[N, 1, H, W]` images in `[0, 1]` with `i64` labels.
use super::*;

/// Training and test images with their labels, on the training device.
pub(crate) struct Data {
    pub(crate) name: String,
    /// `[N, 1, side, side]` f32 in `[0, 1]`.
    pub(crate) train_x: Tensor,
    /// `[N]` i64 in `0..10`.
    pub(crate) train_y: Tensor,
    pub(crate) test_x: Tensor,
    pub(crate) test_y: Tensor,
    /// Image height = width (8 for the digits, 28 for MNIST).
    pub(crate) side: i64,
}

impl Data {
    /// The first `n_train` training and `n_test` test images (for the test).
    #[cfg(test)]
    pub(crate) fn subset(&self, n_train: i64, n_test: i64) -> Result<Data> {
        let first = |t: &Tensor, n: i64| t.f_narrow(0, 0, n.min(t.size()[0]));
        Ok(Data {
            name: format!("{} (subset)", self.name),
            train_x: first(&self.train_x, n_train)?,
            train_y: first(&self.train_y, n_train)?,
            test_x: first(&self.test_x, n_test)?,
            test_y: first(&self.test_y, n_test)?,
            side: self.side,
        })
    }
}

/// The 8x8 digits from `dir` (see [`load_digits`]) as `[N, 1, 8, 8]` images on `device`.
pub(crate) fn digits(dir: &Path, device: Device) -> Result<Data> {
    let [(train_x, train_y), (test_x, test_y)] = load_digits(dir)?;
    let put = |t: Tensor| t.f_to_device(device);
    Ok(Data {
        name: format!("8x8 digits from {}", shown(dir)),
        train_x: put(train_x.f_unsqueeze(1)?)?,
        train_y: put(train_y)?,
        test_x: put(test_x.f_unsqueeze(1)?)?,
        test_y: put(test_y)?,
        side: 8,
    })
}

/// MNIST's 60 000 training images and the first `n_test` test images, `[N, 1, 28, 28]` in `[0, 1]`
/// (tch's IDX reader, as in the `cae` example).
pub(crate) fn mnist(dir: &Path, n_test: i64, device: Device) -> Result<Data> {
    let ds = load_mnist(dir)?;
    let n_test = n_test.min(ds.test_images.size()[0]);
    let images = |t: &Tensor| -> Result<Tensor> {
        Ok(t.f_reshape([-1, 1, 28, 28])?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?)
    };
    Ok(Data {
        name: format!("MNIST (28x28) from {}", dir.display()),
        train_x: images(&ds.train_images)?,
        train_y: ds
            .train_labels
            .f_to_kind(Kind::Int64)?
            .f_to_device(device)?,
        test_x: images(&ds.test_images.f_narrow(0, 0, n_test)?)?,
        test_y: ds
            .test_labels
            .f_narrow(0, 0, n_test)?
            .f_to_kind(Kind::Int64)?
            .f_to_device(device)?,
        side: 28,
    })
}
