//! Projection matrices held in a compressed [`WeightFormat`] on the CPU: the checkpoints'
//! `[out, in]` rows, each row's values (bf16/f16 bits, or ggml's Q8_0/Q4_0 block levels)
//! in one cache-line aligned buffer on huge pages, and the blocks' scales beside it. Decode
//! streams these bytes through `packed_dots.rs`; prefill, whose products have many rows,
//! expands a matrix to f32 for the gemm (see [`super::project_packed`]).

use crate::weights::{BLOCK, WeightFormat, checked_block_scales};
use half::{bf16, f16};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use super::layout::{ALIGN_BYTES, advise_huge_pages};

/// A `[out, in]` matrix in a compressed format (never f32: f32 weights stay Burn tensors).
pub struct PackedMatrix {
    /// The official name (`blocks.0.att.key.weight`), for files written from the model.
    name: String,
    format: WeightFormat,
    out: usize,
    input: usize,
    /// The rows' bytes start at `offset` (a cache line).
    buffer: Vec<u8>,
    offset: usize,
    /// Block formats: one scale per block, row by row (`out * in / 32`), the f16 scale as f32.
    scales: Vec<f32>,
    /// Block formats: multiply by f32 inputs (`packed_dots.rs`) even where the CPU has the
    /// 8-bit input kernels (`int8_dots.rs`); see [`PackedMatrix::set_exact_inputs`].
    exact_inputs: AtomicBool,
}

impl fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PackedMatrix({} {} [{}, {}])",
            self.name, self.format, self.out, self.input
        )
    }
}

/// The bytes of rows and their scales, as the kernels read them.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub format: WeightFormat,
    /// Weights per row.
    pub k: usize,
    pub bytes: &'a [u8],
    pub scales: &'a [f32],
}

impl PackedMatrix {
    /// `values` (`[out, in]`, row-major) in `format`.
    ///
    /// # Panics
    /// If `format` is f32, or a block format whose blocks do not divide the rows (the loader
    /// asks [`WeightFormat::for_tensor`] first), or `values` is not `out * input` long.
    pub fn pack(
        name: &str,
        format: WeightFormat,
        values: &[f32],
        out: usize,
        input: usize,
    ) -> Self {
        assert_ne!(format, WeightFormat::F32, "f32 weights are not packed");
        assert_eq!(values.len(), out * input);
        let (mut buffer, offset) = aligned_buffer(format.level_bytes(values.len()));
        let mut scales = Vec::new();
        match format {
            WeightFormat::Bf16 => {
                for v in values {
                    buffer.extend_from_slice(&bf16::from_f32(*v).to_le_bytes());
                }
            }
            WeightFormat::F16 => {
                for v in values {
                    buffer.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
                }
            }
            WeightFormat::Q8 | WeightFormat::Q4 => {
                assert!(input.is_multiple_of(BLOCK));
                scales.reserve(values.len() / BLOCK);
                for block in values.chunks_exact(BLOCK) {
                    let (d, q) = format.quantize_block(block);
                    scales.push(d.to_f32());
                    if format == WeightFormat::Q8 {
                        buffer.extend(q.iter().map(|&q| q as u8));
                    } else {
                        // ggml's Q4_0: byte j holds value j (low nibble) and j + 16 (high).
                        let half = BLOCK / 2;
                        buffer.extend((0..half).map(|j| (q[j] as u8) | ((q[j + half] as u8) << 4)));
                    }
                }
            }
            WeightFormat::F32 => unreachable!(),
        }
        Self {
            name: name.to_string(),
            format,
            out,
            input,
            buffer,
            offset,
            scales,
            exact_inputs: AtomicBool::new(false),
        }
    }

    /// A matrix already in a block format, as a file stores it: `levels` (the format's
    /// [`level_bytes`](WeightFormat::level_bytes) for `out * input` values) and `scales`
    /// (little-endian f16, one per block). Nothing is re-quantized.
    ///
    /// # Errors
    /// A description of what does not fit (lengths, a width that is not whole blocks, a scale
    /// that is not finite), for the loader to report with the file's name.
    pub fn from_blocks(
        name: &str,
        format: WeightFormat,
        levels: &[u8],
        scales: &[u8],
        out: usize,
        input: usize,
    ) -> Result<Self, String> {
        let scales = checked_block_scales(format, levels, scales, [out, input])?;
        let (mut buffer, offset) = aligned_buffer(levels.len());
        buffer.extend_from_slice(levels);
        Ok(Self {
            name: name.to_string(),
            format,
            out,
            input,
            buffer,
            offset,
            scales,
            exact_inputs: AtomicBool::new(false),
        })
    }

    /// The official name of the matrix.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The values as the format stores them (bf16/f16 bits, or block levels), and for block
    /// formats the scales as little-endian f16: what a file of this format holds.
    pub fn stored_bytes(&self) -> (&[u8], Vec<u8>) {
        let scales = self
            .scales
            .iter()
            .flat_map(|d| f16::from_f32(*d).to_le_bytes())
            .collect();
        (&self.buffer[self.offset..], scales)
    }

    /// The format.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// For q8/q4 matrices: `true` multiplies by the inputs as they are (f32), `false` (the
    /// default) lets CPUs with AVX-512 VNNI round the inputs to 8 bits per block of 32 first
    /// and multiply as integers, as ggml does: faster, within the error bound documented
    /// in the CPU module's `int8_dots.rs` (at most `max|x_b| / 254 · Σ|w_i|` per block `b`
    /// of 32 inputs). Half formats always use f32 inputs.
    pub fn set_exact_inputs(&self, exact: bool) {
        self.exact_inputs.store(exact, Ordering::Relaxed);
    }

    /// Whether products use the inputs as they are (see [`PackedMatrix::set_exact_inputs`]).
    pub fn exact_inputs(&self) -> bool {
        !self.format.is_block() || self.exact_inputs.load(Ordering::Relaxed)
    }

    /// Whether this CPU runs this matrix's products on 8-bit inputs.
    pub fn rounds_inputs(&self) -> bool {
        !self.exact_inputs() && super::int8_dots::available()
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.out, self.input]
    }

    /// Bytes read by one product with every row: values and scales as the format stores them.
    pub fn bytes(&self) -> usize {
        self.format.row_bytes(self.input) * self.out
    }

    pub(super) fn rows(&self) -> Rows<'_> {
        Rows {
            format: self.format,
            k: self.input,
            bytes: &self.buffer[self.offset..],
            scales: &self.scales,
        }
    }

    /// The matrix in f32, `[out, in]` row-major: the values every kernel multiplies by.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut values = vec![0f32; self.out * self.input];
        self.expand_rows(0..self.out, &mut values);
        values
    }

    /// Rows `rows` in f32 into `values` (`rows.len() * in` long): what prefill multiplies by
    /// (see `packed_prefill.rs`), so written as loops the compiler vectorizes (f16 through
    /// `half`'s F16C path), on every thread of the pool: expanding the 0.1B shape's
    /// projections (85M weights) on one thread would otherwise cost a fifth of a 512-token
    /// prefill.
    pub(super) fn expand_rows(&self, rows: Range<usize>, values: &mut [f32]) {
        use rayon::prelude::*;
        assert!(rows.end <= self.out && values.len() == rows.len() * self.input);
        let first = rows.start * self.input;
        let n = values.len();
        let bytes = &self.buffer[self.offset..][self.format.level_bytes(first)..]
            [..self.format.level_bytes(n)];
        let scales = if self.format.is_block() {
            &self.scales[first / BLOCK..][..n / BLOCK]
        } else {
            &[]
        };
        // Pieces of whole rows, a few per thread.
        let per_piece = rows.len().div_ceil(4 * rayon::current_num_threads()).max(1);
        let piece = per_piece * self.input;
        let piece_bytes = self.format.level_bytes(piece);
        let piece_scales = piece / BLOCK;
        values
            .par_chunks_mut(piece)
            .enumerate()
            .for_each(|(p, values)| {
                let len = values.len();
                let bytes = &bytes[p * piece_bytes..][..self.format.level_bytes(len)];
                let scales = if self.format.is_block() {
                    &scales[p * piece_scales..][..len / BLOCK]
                } else {
                    &[]
                };
                expand(self.format, bytes, scales, values);
            });
    }
}

/// `values` from their packed `bytes` (and block `scales`), with the widest vectors this CPU
/// has: the same loops compiled for SSE2 only took 2.1-2.4 ns a weight (the 768 x 3072 matrix
/// of the 0.1B shape's channel-mix, one thread), a fifth of a 512-row product.
fn expand(format: WeightFormat, bytes: &[u8], scales: &[f32], values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features were just checked.
            return unsafe { expand_avx512(format, bytes, scales, values) };
        }
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features were just checked.
            return unsafe { expand_avx2(format, bytes, scales, values) };
        }
    }
    expand_loops(format, bytes, scales, values)
}

/// [`expand_loops`] for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
fn expand_avx512(format: WeightFormat, bytes: &[u8], scales: &[f32], values: &mut [f32]) {
    expand_loops(format, bytes, scales, values)
}

/// [`expand_loops`] for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn expand_avx2(format: WeightFormat, bytes: &[u8], scales: &[f32], values: &mut [f32]) {
    expand_loops(format, bytes, scales, values)
}

#[inline(always)]
fn expand_loops(format: WeightFormat, bytes: &[u8], scales: &[f32], values: &mut [f32]) {
    match format {
        WeightFormat::Bf16 => {
            for (v, c) in values.iter_mut().zip(bytes.chunks_exact(2)) {
                *v = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        WeightFormat::F16 => {
            use half::slice::HalfFloatSliceExt;
            let halves: Vec<f16> = bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect();
            halves.convert_to_f32_slice(values);
        }
        WeightFormat::Q8 => {
            for ((v, q), d) in values
                .chunks_exact_mut(BLOCK)
                .zip(bytes.chunks_exact(BLOCK))
                .zip(scales)
            {
                for (v, &q) in v.iter_mut().zip(q) {
                    *v = f32::from(q as i8) * d;
                }
            }
        }
        WeightFormat::Q4 => {
            let half = BLOCK / 2;
            for ((v, q), d) in values
                .chunks_exact_mut(BLOCK)
                .zip(bytes.chunks_exact(half))
                .zip(scales)
            {
                let (low, high) = v.split_at_mut(half);
                for ((l, h), &q) in low.iter_mut().zip(high).zip(q) {
                    *l = (f32::from(q & 15) - 8.0) * d;
                    *h = (f32::from(q >> 4) - 8.0) * d;
                }
            }
        }
        WeightFormat::F32 => unreachable!("f32 weights are not packed"),
    }
}

/// An empty buffer of `capacity` bytes (plus alignment) on huge pages, and the offset of its
/// first cache line, up to which it is already filled.
fn aligned_buffer(capacity: usize) -> (Vec<u8>, usize) {
    let mut buffer = Vec::<u8>::with_capacity(capacity + ALIGN_BYTES);
    advise_huge_pages(buffer.as_mut_ptr(), buffer.capacity());
    // The buffer is never reallocated after this (its length stays within the capacity), so
    // the boundary stays where it is.
    let offset = buffer.as_ptr().align_offset(ALIGN_BYTES).min(ALIGN_BYTES);
    buffer.resize(offset, 0);
    (buffer, offset)
}

impl Rows<'_> {
    /// Whether the bytes and scales hold the first `rows` rows (what the kernels check
    /// before their unchecked loads).
    pub fn covers(&self, rows: usize) -> bool {
        let n = rows * self.k;
        self.format != WeightFormat::F32
            && self.bytes.len() >= self.format.level_bytes(n)
            && (!self.format.is_block() || self.scales.len() >= n / BLOCK)
    }

    /// Weight `(o, i)` as f32.
    #[inline(always)]
    pub fn get(&self, o: usize, i: usize) -> f32 {
        let at = o * self.k + i;
        match self.format {
            WeightFormat::Bf16 => {
                bf16::from_le_bytes([self.bytes[2 * at], self.bytes[2 * at + 1]]).to_f32()
            }
            WeightFormat::F16 => {
                f16::from_le_bytes([self.bytes[2 * at], self.bytes[2 * at + 1]]).to_f32()
            }
            WeightFormat::Q8 => f32::from(self.bytes[at] as i8) * self.scales[at / BLOCK],
            WeightFormat::Q4 => {
                let within = at % BLOCK;
                let byte = self.bytes[at / BLOCK * (BLOCK / 2) + within % (BLOCK / 2)];
                let q = if within < BLOCK / 2 {
                    byte & 15
                } else {
                    byte >> 4
                };
                (f32::from(q) - 8.0) * self.scales[at / BLOCK]
            }
            WeightFormat::F32 => unreachable!("f32 weights are not packed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::Lcg;

    /// Packing keeps exactly the values of the format's round trip, and the buffer starts on
    /// a cache line.
    #[test]
    fn packed_values_are_the_formats_round_trip() {
        let mut rng = Lcg::new(9);
        let (out, input) = (5, 96);
        let values = rng.vec(out * input, 0.7);
        for format in [
            WeightFormat::Bf16,
            WeightFormat::F16,
            WeightFormat::Q8,
            WeightFormat::Q4,
        ] {
            let packed = PackedMatrix::pack("m", format, &values, out, input);
            assert_eq!(packed.rows().bytes.as_ptr().align_offset(ALIGN_BYTES), 0);
            assert_eq!(
                packed.to_f32(),
                format.round_trip(&values, input),
                "{format}"
            );
            assert_eq!(packed.bytes(), format.row_bytes(input) * out);
            if format.is_block() {
                let (levels, scales) = packed.stored_bytes();
                let again =
                    PackedMatrix::from_blocks("m", format, levels, &scales, out, input).unwrap();
                assert_eq!(again.to_f32(), packed.to_f32());
                assert!(
                    PackedMatrix::from_blocks("m", format, levels, &scales[2..], out, input)
                        .is_err()
                );
            }
        }
    }
}
