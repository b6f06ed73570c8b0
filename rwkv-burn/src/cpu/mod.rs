//! The CPU decode path: how weights are laid out on the flex device and how the model
//! multiplies by them there. Two entry points, one for each side:
//!
//! - [`decode_weight`], for the loader: a checkpoint's `[out, in]` matrix placed where the
//!   decode kernels stream it (`layout.rs`);
//! - [`project`], for the model: `x @ W` through the fastest path the device has
//!   (`matvec.rs` for the few rows of decode, gemm for more, Burn's own op on other devices).
//!
//! [`on_worker`] runs a whole model call where those products split best. Everything that
//! depends on CPU micro-architecture (vector widths, alignment, huge pages, threads) stays
//! in this module; the model meets it only through these functions.

#[cfg(feature = "flex")]
mod int8_dots;
#[cfg(feature = "flex")]
mod layout;
#[cfg(feature = "flex")]
mod matvec;
#[cfg(feature = "flex")]
mod packed;
#[cfg(feature = "flex")]
mod packed_dots;
#[cfg(feature = "flex")]
mod packed_prefill;

#[cfg(feature = "flex")]
pub use packed::PackedMatrix;
/// Without flex no device holds packed weights; the type exists so that the model's
/// [`Projection`](crate::model::Projection) has one shape in every build.
#[cfg(not(feature = "flex"))]
#[derive(Debug)]
pub struct PackedMatrix(());

#[cfg(not(feature = "flex"))]
impl PackedMatrix {
    /// `[out, in]` (never called: no value of this type exists without flex).
    pub fn dims(&self) -> [usize; 2] {
        unreachable!("packed weights exist only with flex")
    }
    /// The format (never called).
    pub fn format(&self) -> crate::weights::WeightFormat {
        unreachable!("packed weights exist only with flex")
    }
    /// Bytes read per product (never called).
    pub fn bytes(&self) -> usize {
        unreachable!("packed weights exist only with flex")
    }
    /// The official name (never called).
    pub fn name(&self) -> &str {
        unreachable!("packed weights exist only with flex")
    }
    /// Sets f32 inputs for block formats (never called).
    pub fn set_exact_inputs(&self, _exact: bool) {
        unreachable!("packed weights exist only with flex")
    }
    /// Whether products use f32 inputs (never called).
    pub fn exact_inputs(&self) -> bool {
        unreachable!("packed weights exist only with flex")
    }
    /// Whether products round inputs to 8 bits (never called).
    pub fn rounds_inputs(&self) -> bool {
        unreachable!("packed weights exist only with flex")
    }
    /// Values and scales as stored (never called).
    pub fn stored_bytes(&self) -> (&[u8], Vec<u8>) {
        unreachable!("packed weights exist only with flex")
    }
}

use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

/// A checkpoint's `[out, in]` matrix (`values`, row-major) laid out for the CPU decode kernels
/// as Burn's `[in, out]`, or `None` where `device` has none (the loader then transposes on the
/// host).
pub(crate) fn decode_weight(
    values: &[f32],
    out: usize,
    input: usize,
    device: &Device,
) -> Option<Tensor<2>> {
    #[cfg(feature = "flex")]
    if is_flex(device) {
        return Some(layout::weight_rows(values, out, input, device));
    }
    let _ = (values, out, input, device);
    None
}

/// A checkpoint's `[out, in]` matrix in `format` (not f32) for the CPU decode kernels, or
/// `None` where `device` does not run them (the loader then computes in f32 with the format's
/// values).
pub(crate) fn pack_weight(
    name: &str,
    format: crate::weights::WeightFormat,
    values: &[f32],
    out: usize,
    input: usize,
    device: &Device,
) -> Option<PackedMatrix> {
    #[cfg(feature = "flex")]
    if holds_packed(device) {
        return Some(PackedMatrix::pack(name, format, values, out, input));
    }
    let _ = (name, format, values, out, input, device);
    None
}

/// A matrix a file stores in a block format, as it is (see [`PackedMatrix::from_blocks`]),
/// where `device` holds packed weights; `None` elsewhere.
pub(crate) fn packed_from_blocks(
    name: &str,
    format: crate::weights::WeightFormat,
    [levels, scales]: [&[u8]; 2],
    [out, input]: [usize; 2],
    device: &Device,
) -> Option<Result<PackedMatrix, String>> {
    #[cfg(feature = "flex")]
    if holds_packed(device) {
        return Some(PackedMatrix::from_blocks(
            name, format, levels, scales, out, input,
        ));
    }
    let _ = (name, format, levels, scales, out, input, device);
    None
}

/// Whether [`pack_weight`] packs weights for `device`.
pub(crate) fn holds_packed(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        is_flex(device) && !is_autodiff(device)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// Whether tensors on `device` carry autodiff (devices compare equal with and without it).
#[cfg(feature = "flex")]
fn is_autodiff(device: &Device) -> bool {
    use burn::backend::Flex;
    Tensor::<1>::zeros([1], device)
        .try_into_primitive::<Flex>()
        .is_err()
}

/// `x @ Wᵀ` for a packed `W [out, in]`, `x [.., in]` on flex. Up to 16 rows (decode, batched
/// decode) stream the packed rows, four input rows per pass; more rows (prefill) expand the
/// matrix to f32 slice by slice and use the gemm (`packed_prefill.rs`), whose cost then
/// dwarfs the expansion (a 768 x 768 matrix expands in well under a millisecond; 512 rows
/// multiply in tens).
pub(crate) fn project_packed<const D: usize>(weight: &PackedMatrix, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    {
        use burn::tensor::TensorData;
        let device = x.device();
        let dims = x.dims();
        let [out, input] = weight.dims();
        assert_eq!(dims[D - 1], input, "input width of a packed projection");
        let rows: usize = dims[..D - 1].iter().product();
        let mut shape = dims;
        shape[D - 1] = out;
        let x = x.reshape([rows, input]);
        if rows <= 4 * matvec::MAX_ROWS {
            let xs = x.into_data().convert::<f32>();
            let xs = xs.as_slice::<f32>().expect("f32 after convert");
            let mut y = Vec::with_capacity(rows * out);
            // In the groups whose sums do not depend on the row count (`Kernel::group`).
            let group_rows = matvec::Kernel::best().group();
            for group in xs.chunks(group_rows * input) {
                y.extend(packed_dots::packed_rows(group, group.len() / input, weight));
            }
            return Tensor::<2>::from_data(TensorData::new(y, [rows, out]), &device).reshape(shape);
        }
        let xs = x.into_data().convert::<f32>();
        let xs = xs.as_slice::<f32>().expect("f32 after convert");
        let y = packed_prefill::product(xs, rows, weight);
        Tensor::<2>::from_data(TensorData::new(y, [rows, out]), &device).reshape(shape)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = weight;
        unreachable!("packed weights exist only with flex: {:?}", x.dims())
    }
}

/// `x @ W` through a bias-free Linear.
///
/// On flex, a few rows (decode at batch 1 to 4) go through `matvec`, which reads each weight
/// row once for all of them on two threads, and more rows through a 2-D `matmul` (gemm with
/// its own threads). Measured side by side on 2 cores against gemm on dense `[in, out]`
/// weights split over two threads (`rwkv bench --preset P --prefill 256 --decode 200 --batch
/// 4`, alternating runs): batch-4 decode 110 -> 192 tok/s (4-169m) and 99 -> 157 (7-0.1b),
/// batch 1 and prefill unchanged. Other backends thread their own products.
pub(crate) fn project<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    if linear.bias.is_some() || !is_flex(&x.device()) {
        return linear.forward(x);
    }
    let dims = x.dims();
    let inputs = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    let weight = linear.weight.val();
    let mut out = dims;
    out[D - 1] = weight.dims()[1];
    let x = x.reshape([rows, inputs]);
    #[cfg(feature = "flex")]
    if let Some(y) = matvec::small_rows(&x, &weight) {
        return y.reshape(out);
    }
    x.matmul(weight).reshape(out)
}

/// Whether `device` is flex (without autodiff: training keeps the plain path).
fn is_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        *device == Device::flex()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// Runs `f`, a model call on `device`, on a rayon worker thread when [`project`] splits
/// products over threads there. From a worker, `project`'s `rayon::join` runs one half itself
/// and the other worker steals the other; from outside the pool both halves are injected and
/// the caller sleeps until they finish, a futex wake-up and sleep for every product (about 85
/// per token of the 169M shape). Measured on 2 cores (4-169m, `rwkv bench --prefill 64
/// --decode 256 --batch 2`, five runs each, alternating): batch-1 decode 79-82 -> 89-91
/// tok/s, batch 2 51-52 -> 57.
pub(crate) fn on_worker<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if is_flex(device) && rayon::current_num_threads() >= 2 {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::model::layers::linear;
    use crate::random::Lcg;
    use crate::test_util::assert_close;
    use burn::tensor::TensorData;

    #[test]
    fn split_matrix_vector_product_equals_the_plain_one() {
        let device = Device::flex();
        let (inputs, outputs) = (1024, 600); // above matvec's SPLIT_MIN_ELEMENTS
        let mut rng = Lcg::new(3);
        let weight = Tensor::<2>::from_data(
            TensorData::new(rng.vec(inputs * outputs, 0.1), [inputs, outputs]),
            &device,
        );
        let layer = linear(weight);
        for rows in [1, 2] {
            let x = Tensor::<3>::from_data(
                TensorData::new(rng.vec(rows * inputs, 1.0), [1, rows, inputs]),
                &device,
            );
            let got = project(&layer, x.clone());
            assert_eq!(got.dims(), [1, rows, outputs]);
            let want = layer.forward(x).into_data().try_to_vec::<f32>().unwrap();
            let got = got.into_data().try_to_vec::<f32>().unwrap();
            assert_close(&got, &want, 1e-5, "project");
        }
    }
}
