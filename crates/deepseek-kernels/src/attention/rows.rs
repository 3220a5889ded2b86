//! The rows of a cache as attention reads them: where keys and values lie in a row
//! ([`RowLayout`]), the 8-bit and bf16 row codecs, and the blocks of rows a sequence's cache
//! lends to the kernel ([`RowBlocks`]).

use crate::simd;

/// Where keys and values sit in a cache row.
#[derive(Clone, Copy, Debug)]
pub struct RowLayout {
    pub row_width: usize,
    pub key_offset: usize,
    pub key_len: usize,
    pub value_offset: usize,
    pub value_len: usize,
}

/// Values per scale in an 8-bit cache row.
pub const Q8_GROUP: usize = 32;

/// Bytes of one 8-bit cache row of `width` values: an f32 scale per [`Q8_GROUP`] values, then
/// the values as i8 (padded to 4 bytes).
pub fn q8_row_bytes(width: usize) -> usize {
    (width.div_ceil(Q8_GROUP) * 4 + width).div_ceil(4) * 4
}

/// Rounds `x` to an 8-bit cache row (`out` is [`q8_row_bytes`] long): per group of 32 values,
/// scale = max |x| / 127.
pub fn q8_quantize_row(x: &[f32], out: &mut [u8]) {
    let groups = x.len().div_ceil(Q8_GROUP);
    let (scales, values) = out.split_at_mut(groups * 4);
    for (g, chunk) in x.chunks(Q8_GROUP).enumerate() {
        let amax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        scales[g * 4..g * 4 + 4].copy_from_slice(&d.to_le_bytes());
        for (j, &v) in chunk.iter().enumerate() {
            // Round half away from zero without a libm call.
            let r = v * inv;
            let q = (r + 0.5f32.copysign(r)) as i32;
            values[g * Q8_GROUP + j] = q.clamp(-127, 127) as i8 as u8;
        }
    }
}

/// The f32 values of an 8-bit cache row.
pub fn q8_dequantize_row(row: &[u8], out: &mut [f32]) {
    let groups = out.len().div_ceil(Q8_GROUP);
    let (scales, values) = row.split_at(groups * 4);
    assert!(values.len() >= out.len(), "q8 cache row too short");
    #[cfg(target_arch = "x86_64")]
    if crate::tier::at_least(crate::tier::Tier::Avx512) {
        let whole = out.len() / Q8_GROUP;
        // SAFETY: AVX-512 F is present; `whole` groups of scales and values are in the row and
        // of outputs in `out` (checked above).
        unsafe { x86::q8_dequantize_groups(scales, values, whole, out) };
        q8_dequantize_plain(scales, values, out, whole);
        return;
    }
    q8_dequantize_plain(scales, values, out, 0);
}

/// [`q8_dequantize_row`] in plain code from group `from` on.
pub(crate) fn q8_dequantize_plain(scales: &[u8], values: &[u8], out: &mut [f32], from: usize) {
    for (g, o) in out.chunks_mut(Q8_GROUP).enumerate().skip(from) {
        let d = f32::from_le_bytes(scales[g * 4..g * 4 + 4].try_into().unwrap_or([0; 4]));
        for (j, v) in o.iter_mut().enumerate() {
            *v = values[g * Q8_GROUP + j] as i8 as f32 * d;
        }
    }
}

/// u16 values of one bf16 cache row of `width` values (padded to whole 4-byte words).
pub fn bf16_row_len(width: usize) -> usize {
    width.next_multiple_of(2)
}

/// Rounds `x` to a bf16 cache row (`out` is [`bf16_row_len`] long; round to nearest even).
pub fn bf16_round_row(x: &[f32], out: &mut [u16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = half::bf16::from_f32(v).to_bits();
    }
    out[x.len()..].fill(0);
}

/// A sequence's cache blocks of one layer: f32 rows, bf16 rows ([`bf16_round_row`]) or 8-bit
/// rows ([`q8_quantize_row`]).
pub enum RowData<'a> {
    F32(Vec<&'a [f32]>),
    Bf16(Vec<&'a [u16]>),
    Q8(Vec<&'a [u8]>),
}

/// Cache rows of one sequence, as a list of blocks of `block_tokens` rows each.
pub struct RowBlocks<'a> {
    pub data: RowData<'a>,
    pub block_tokens: usize,
    pub row_width: usize,
}

impl<'a> RowBlocks<'a> {
    pub fn f32(blocks: Vec<&'a [f32]>, block_tokens: usize, row_width: usize) -> Self {
        RowBlocks {
            data: RowData::F32(blocks),
            block_tokens,
            row_width,
        }
    }

    /// Row `t` as f32.
    pub fn row_f32(&self, t: usize, out: &mut [f32]) {
        let (b, i) = (t / self.block_tokens, t % self.block_tokens);
        let w = self.row_width;
        match &self.data {
            RowData::F32(blocks) => out.copy_from_slice(&blocks[b][i * w..(i + 1) * w]),
            RowData::Bf16(blocks) => {
                let rl = bf16_row_len(w);
                simd::bf16_to_f32(&blocks[b][i * rl..i * rl + w], out);
            }
            RowData::Q8(blocks) => {
                let rb = q8_row_bytes(w);
                q8_dequantize_row(&blocks[b][i * rb..(i + 1) * rb], out)
            }
        }
    }

    /// Rows `start..start + len` as one f32 slice: a view into the block when the rows are f32
    /// and in one block, else copied (or dequantized) into `scratch`.
    pub(crate) fn rows<'s>(
        &'s self,
        start: usize,
        len: usize,
        scratch: &'s mut Vec<f32>,
    ) -> &'s [f32] {
        let w = self.row_width;
        let (b, i) = (start / self.block_tokens, start % self.block_tokens);
        if let RowData::F32(blocks) = &self.data {
            if i + len <= self.block_tokens {
                return &blocks[b][i * w..(i + len) * w];
            }
        }
        scratch.resize(len * w, 0.0);
        for r in 0..len {
            self.row_f32(start + r, &mut scratch[r * w..(r + 1) * w]);
        }
        &scratch[..len * w]
    }
}

/// Rows scored and summed together: the block's scores and rows stay in L1/L2 between the
/// score pass and the value pass, so the cache is streamed from memory once.
pub(crate) const BLOCK_ROWS: usize = 64;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Q8_GROUP;
    use std::arch::x86_64::*;

    /// The first `groups` groups of 32 values of an 8-bit row: bytes widened, times their scale.
    ///
    /// # Safety
    /// AVX-512 F; `scales` holds `groups` f32, `values` and `out` `32 · groups` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn q8_dequantize_groups(
        scales: &[u8],
        values: &[u8],
        groups: usize,
        out: &mut [f32],
    ) {
        assert!(scales.len() >= 4 * groups && values.len() >= Q8_GROUP * groups);
        assert!(out.len() >= Q8_GROUP * groups);
        for g in 0..groups {
            let d = _mm512_set1_ps((scales.as_ptr().add(4 * g) as *const f32).read_unaligned());
            for h in 0..2 {
                let at = g * Q8_GROUP + 16 * h;
                let b = _mm_loadu_si128(values.as_ptr().add(at) as *const __m128i);
                let v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
                _mm512_storeu_ps(out.as_mut_ptr().add(at), _mm512_mul_ps(v, d));
            }
        }
    }
}
