//! ggml's "K" quantizations (Q4_K, Q5_K, Q6_K: super-blocks of 256 values with 6- or 8-bit
//! sub-block scales), the types llama.cpp's RWKV GGUF releases use most besides F16 and Q8_0.
//! No format of ours holds them, so they are dequantized to f32 as a tensor is read (and the
//! loader packs the result as `q8` by default, `load::stored_format`): the arithmetic follows
//! ggml's `dequantize_row_q*_K` (`ggml-quants.c`) operation for operation, so that the values
//! are bit-identical to llama.cpp's (checked against gguf-py's dequantizer in
//! `tests/suite/formats.rs`).

use half::f16;

/// Values per super-block.
pub const QK_K: usize = 256;

/// The K types this build reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KQuant {
    /// 4.5 bits a value: f16 `d`, `dmin`, 12 bytes of 6-bit scales and mins, 128 bytes of
    /// nibbles.
    Q4K,
    /// 5.5 bits: as Q4_K plus 32 bytes of fifth bits.
    Q5K,
    /// 6.5625 bits: 128 bytes of low nibbles, 64 of high pairs, 16 int8 scales, f16 `d`.
    Q6K,
}

impl KQuant {
    /// Bytes per super-block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Dequantizes whole super-blocks (`bytes.len()` a multiple of
    /// [`block_bytes`](Self::block_bytes), checked when the file was opened).
    pub fn dequantize(self, bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::with_capacity(bytes.len() / self.block_bytes() * QK_K);
        for block in bytes.chunks_exact(self.block_bytes()) {
            match self {
                Self::Q4K => q4_k(block, &mut out),
                Self::Q5K => q5_k(block, &mut out),
                Self::Q6K => q6_k(block, &mut out),
            }
        }
        out
    }
}

fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// Scale and min of sub-block `j` (0..8) from Q4_K/Q5_K's 12 packed bytes: the first four
/// sub-blocks keep 6 bits in bytes 0..8; the last four split theirs between a nibble of bytes
/// 8..12 and the top two bits of bytes 0..8.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn q4_k(block: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(&block[0..2]), half(&block[2..4]));
    let scales = &block[4..16];
    let qs = &block[16..144];
    for (j, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min(2 * j, scales);
        let (sc2, m2) = scale_min(2 * j + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        out.extend(q.iter().map(|&b| d1 * f32::from(b & 0xF) - m1));
        out.extend(q.iter().map(|&b| d2 * f32::from(b >> 4) - m2));
    }
}

fn q5_k(block: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(&block[0..2]), half(&block[2..4]));
    let scales = &block[4..16];
    let qh = &block[16..48];
    let qs = &block[48..176];
    for (j, ql) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min(2 * j, scales);
        let (sc2, m2) = scale_min(2 * j + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        // The fifth bit of the low half of group j is bit 2j of qh, the high half's 2j + 1.
        let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
        let high = |h: u8, bit: u8| if h & bit != 0 { 16 } else { 0 };
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&l, &h)| d1 * f32::from((l & 0xF) + high(h, u1)) - m1),
        );
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&l, &h)| d2 * f32::from((l >> 4) + high(h, u2)) - m2),
        );
    }
}

fn q6_k(block: &[u8], out: &mut Vec<f32>) {
    let d = half(&block[208..210]);
    let start = out.len();
    out.resize(start + QK_K, 0.0);
    let y = &mut out[start..];
    // Two halves of 128 values: 64 bytes of low nibbles, 32 of high bit pairs, 8 scales each.
    for n in 0..2 {
        let ql = &block[64 * n..64 * n + 64];
        let qh = &block[128 + 32 * n..128 + 32 * n + 32];
        let sc = &block[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q = |low: u8, shift: u32| -> f32 {
                f32::from((low | (((qh[l] >> shift) & 3) << 4)) as i8 - 32)
            };
            let scale = |i: usize| d * f32::from(sc[i] as i8);
            y[l] = scale(is) * q(ql[l] & 0xF, 0);
            y[l + 32] = scale(is + 2) * q(ql[l + 32] & 0xF, 2);
            y[l + 64] = scale(is + 4) * q(ql[l] >> 4, 4);
            y[l + 96] = scale(is + 6) * q(ql[l + 32] >> 4, 6);
        }
    }
}
