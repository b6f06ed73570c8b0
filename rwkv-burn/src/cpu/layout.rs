//! How decode's weight matrices are laid out on flex: the checkpoints' `[out, in]` rows in one
//! cache-line aligned buffer on huge pages, behind a transposed view that Burn sees as
//! `[in, out]` and [`super::matvec`] streams row by row.

use burn::backend::Flex;
use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{Device, Tensor, TensorData};

/// Where weight storage starts: a cache line, so that rows of a multiple of 16 floats (every
/// released shape) start on one too and no vector load straddles two lines. Flex's own buffers
/// are only 16-byte aligned. Measured on this 2-core Zen 5 (a standalone loop over the 4-169m
/// token's matrices, 524 MB, one thread): 36.5 -> 38.9 GB/s with AVX2 loads, 28.3 -> 40.8
/// with AVX-512 loads (which straddle on every load when misaligned).
pub(super) const ALIGN_BYTES: usize = 64;

/// A checkpoint's `[out, in]` matrix (`values`, row-major) as Burn's `[in, out]`: a transposed
/// view of a dense buffer whose first element sits on a cache line, the layout
/// [`super::matvec::small_rows`] streams. On the autodiff flex device (training, whose products never take
/// that path) a plain transposed view.
pub(super) fn weight_rows(values: &[f32], out: usize, input: usize, device: &Device) -> Tensor<2> {
    // Devices compare equal with and without autodiff; only a plain flex tensor converts.
    let autodiff = Tensor::<1>::zeros([1], device)
        .try_into_primitive::<Flex>()
        .is_err();
    if autodiff {
        return Tensor::<2>::from_data(TensorData::new(values.to_vec(), [out, input]), device)
            .transpose();
    }
    let pad = ALIGN_BYTES / size_of::<f32>();
    let mut buffer = Vec::<f32>::with_capacity(values.len() + pad);
    advise_huge_pages(
        buffer.as_mut_ptr().cast(),
        buffer.capacity() * size_of::<f32>(),
    );
    // Elements before the boundary; the buffer is never reallocated after this (its length
    // stays within the capacity), so the boundary stays where it is.
    let offset = buffer.as_ptr().align_offset(ALIGN_BYTES).min(pad);
    buffer.resize(offset, 0.0);
    buffer.extend_from_slice(values);
    let len = buffer.len();
    let storage = FlexTensor::from_data(TensorData::new(buffer, [len]));
    let view = storage.with_layout(Layout::new(
        [input, out].into(),
        vec![1, input as isize],
        offset,
    ));
    Tensor::<2>::from_primitive::<Flex>(view)
}

/// Asks Linux to back the (not yet touched) `bytes` from `start` with 2 MiB pages where it
/// can, before the first write faults it in: decode streams every weight once per token, and
/// with 4 KiB pages that is a TLB miss every 4 KiB. Transparent huge pages are often in
/// `madvise` mode, so without asking there are none. Measured with a standalone loop over
/// the 4-169m token's matrices on one thread: 39.6 -> 40.9 GB/s. Best effort: an error
/// (THP off, another kernel) changes nothing but speed.
pub(super) fn advise_huge_pages(start: *mut u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = start as usize;
        let end = start + bytes;
        let (first, last) = (start.next_multiple_of(PAGE), end / PAGE * PAGE);
        if last > first {
            // SAFETY: the range lies inside this vector's allocation, and MADV_HUGEPAGE only
            // changes how the kernel backs it, never its contents.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_rows_are_an_aligned_transposed_view() {
        let device = burn::tensor::Device::flex();
        let (out, input) = (5, 32);
        let values: Vec<f32> = (0..out * input).map(|v| v as f32).collect();
        for _ in 0..4 {
            let weight = weight_rows(&values, out, input, &device);
            assert_eq!(weight.dims(), [input, out]);
            let flex = weight.clone().try_into_primitive::<Flex>().unwrap();
            let start = flex.layout().start_offset();
            let first = flex.storage::<f32>()[start..].as_ptr();
            assert_eq!(first.align_offset(ALIGN_BYTES), 0);
            let got = weight.clone().into_data().try_to_vec::<f32>().unwrap();
            for i in 0..input {
                for o in 0..out {
                    assert_eq!(got[i * out + o], values[o * input + i]);
                }
            }
            let x = Tensor::<2>::ones([1, input], &device);
            assert!(super::super::matvec::small_rows(&x, &weight).is_some());
        }
    }
}
