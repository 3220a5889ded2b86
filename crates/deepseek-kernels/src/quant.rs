//! llama.cpp's (GGML) quantized block formats: their byte layouts, dequantization, quantization,
//! and the dot product of a quantized weight row with an 8-bit quantized activation.
//!
//! Activations are quantized per 32 values (an f32 scale, the int8 values and their sum), for
//! every weight format: a K-quant super-block of 256 is eight such activation blocks. That is at
//! least as precise as llama.cpp's Q8_0/Q8_K activations, and lets one integer dot product of 32
//! (or 16) int8 pairs serve every format: each weight block is unpacked to int8 on the stack, and
//! its scale (and min) applied once per block.

/// Values per block of the 32-wide formats (and per activation block).
pub const QK: usize = 32;
/// Values per K-quant super-block.
pub const QK_K: usize = 256;

/// A GGML block format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// 4-bit indices into a fixed non-linear table of int8 levels, an f16 scale per 32 values.
    IQ4NL,
    /// IQ4_NL's levels in 256-value super-blocks with a 6-bit signed scale per 32 values.
    IQ4XS,
}

/// The levels IQ4_NL and IQ4_XS index (llama.cpp's `kvalues_iq4nl`).
pub(crate) const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

impl QuantType {
    pub const ALL: [QuantType; 12] = [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q2K,
        QuantType::Q3K,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
        QuantType::IQ4NL,
        QuantType::IQ4XS,
    ];

    /// Values per block.
    pub fn block_elems(self) -> usize {
        match self {
            QuantType::Q8_0
            | QuantType::Q4_0
            | QuantType::Q4_1
            | QuantType::Q5_0
            | QuantType::Q5_1
            | QuantType::IQ4NL => QK,
            QuantType::Q2K
            | QuantType::Q3K
            | QuantType::Q4K
            | QuantType::Q5K
            | QuantType::Q6K
            | QuantType::IQ4XS => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::Q8_0 => 2 + 32,
            QuantType::Q4_0 => 2 + 16,
            QuantType::Q4_1 => 2 + 2 + 16,
            QuantType::Q5_0 => 2 + 4 + 16,
            QuantType::Q5_1 => 2 + 2 + 4 + 16,
            QuantType::Q2K => 16 + 64 + 2 + 2,
            QuantType::Q3K => 32 + 64 + 12 + 2,
            QuantType::Q4K => 2 + 2 + 12 + 128,
            QuantType::Q5K => 2 + 2 + 12 + 32 + 128,
            QuantType::Q6K => 128 + 64 + 16 + 2,
            QuantType::IQ4NL => 2 + 16,
            QuantType::IQ4XS => 2 + 2 + 4 + 128,
        }
    }

    /// Bytes of a row of `cols` values (`cols` must be a multiple of the block size).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_elems() * self.block_bytes()
    }

    /// GGML's type id (as stored in GGUF tensor infos).
    pub fn ggml_type(self) -> u32 {
        match self {
            QuantType::Q4_0 => 2,
            QuantType::Q4_1 => 3,
            QuantType::Q5_0 => 6,
            QuantType::Q5_1 => 7,
            QuantType::Q8_0 => 8,
            QuantType::Q2K => 10,
            QuantType::Q3K => 11,
            QuantType::Q4K => 12,
            QuantType::Q5K => 13,
            QuantType::Q6K => 14,
            QuantType::IQ4NL => 20,
            QuantType::IQ4XS => 23,
        }
    }

    pub fn from_ggml_type(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_type() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4_0 => "q4_0",
            QuantType::Q4_1 => "q4_1",
            QuantType::Q5_0 => "q5_0",
            QuantType::Q5_1 => "q5_1",
            QuantType::Q2K => "q2_k",
            QuantType::Q3K => "q3_k",
            QuantType::Q4K => "q4_k",
            QuantType::Q5K => "q5_k",
            QuantType::Q6K => "q6_k",
            QuantType::IQ4NL => "iq4_nl",
            QuantType::IQ4XS => "iq4_xs",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

fn put_f16(b: &mut [u8], i: usize, v: f32) {
    b[i..i + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
}

/// Scale and min of sub-block `j` (0..8) from a K-quant's 12 packed 6-bit scale bytes.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The inverse of [`scale_min_k4`]: eight 6-bit scales and mins into 12 bytes.
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut scales = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            scales[j] |= ls[j];
            scales[j + 4] |= lm[j];
        } else {
            scales[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            scales[j - 4] |= (ls[j] >> 4) << 6;
            scales[j] |= (lm[j] >> 4) << 6;
        }
    }
    scales
}

// ---- unpacking one block into integers (shared by dequantization and the dot products) ----

/// Q4_0 / Q5_0 / Q8_0: the block's int8 values (offsets removed) and its scale; Q4_1 / Q5_1:
/// the unsigned values and the scale (the min is the block's second f16).
#[inline(always)]
fn unpack_32(t: QuantType, b: &[u8], q: &mut [i8; QK]) -> f32 {
    match t {
        QuantType::Q8_0 => {
            for (o, &v) in q.iter_mut().zip(&b[2..34]) {
                *o = v as i8;
            }
        }
        QuantType::Q4_0 => {
            let qs = &b[2..18];
            for j in 0..16 {
                q[j] = (qs[j] & 0xF) as i8 - 8;
                q[j + 16] = (qs[j] >> 4) as i8 - 8;
            }
        }
        QuantType::Q4_1 => {
            let qs = &b[4..20];
            for j in 0..16 {
                q[j] = (qs[j] & 0xF) as i8;
                q[j + 16] = (qs[j] >> 4) as i8;
            }
        }
        QuantType::Q5_0 | QuantType::Q5_1 => {
            // Q5_1: the same bits after a second f16 (the min), values unsigned.
            let (o, off) = if t == QuantType::Q5_0 {
                (2, 16)
            } else {
                (4, 0)
            };
            let qh = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            let qs = &b[o + 4..o + 20];
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) as u8 & 0x10;
                let h1 = (qh >> (j + 12)) as u8 & 0x10;
                q[j] = ((qs[j] & 0xF) | h0) as i8 - off;
                q[j + 16] = ((qs[j] >> 4) | h1) as i8 - off;
            }
        }
        QuantType::IQ4NL => {
            let qs = &b[2..18];
            for j in 0..16 {
                q[j] = IQ4_LEVELS[(qs[j] & 0xF) as usize];
                q[j + 16] = IQ4_LEVELS[(qs[j] >> 4) as usize];
            }
        }
        _ => unreachable!("unpack_32 on a K-quant"),
    }
    f16_at(b, 0)
}

/// A K-quant super-block unpacked: 256 integer values, and per 32-value sub-block the factors
/// such that value = d_sub[i] * q - m_sub[i] (Q4_K, Q5_K). Q6_K and Q3_K have 16-value
/// sub-blocks with signed scales: value = d * scale16[i] * q; Q2_K has 16-value sub-blocks
/// with 4-bit scales and mins: value = d * scale16[i] * q - dmin * min16[i].
struct KBlock {
    q: [i8; QK_K],
    d: f32,
    dmin: f32,
    scales: [u8; 8],
    mins: [u8; 8],
    scales16: [i8; 16],
    mins16: [u8; 16],
}

/// Q3_K's sixteen 6-bit scales (stored + 32): low nibbles in bytes 0–7 (sub-blocks 0–7 low,
/// 8–15 high), the top two bits in bytes 8–11 (two bits per sub-block, `j % 4`'s byte at
/// shift `2 * (j / 4)`).
pub(crate) fn q3k_scale(j: usize, sc: &[u8]) -> i8 {
    let lo = (sc[j % 8] >> (4 * (j / 8))) & 0xF;
    let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i8 - 32
}

#[inline(always)]
fn unpack_k(t: QuantType, b: &[u8], k: &mut KBlock) {
    match t {
        QuantType::Q4K | QuantType::Q5K => {
            k.d = f16_at(b, 0);
            k.dmin = f16_at(b, 2);
            let sc = &b[4..16];
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, sc);
                k.scales[j] = s;
                k.mins[j] = m;
            }
            if t == QuantType::Q4K {
                let qs = &b[16..144];
                for c in 0..4 {
                    for l in 0..32 {
                        k.q[c * 64 + l] = (qs[c * 32 + l] & 0xF) as i8;
                        k.q[c * 64 + 32 + l] = (qs[c * 32 + l] >> 4) as i8;
                    }
                }
            } else {
                let qh = &b[16..48];
                let qs = &b[48..176];
                for c in 0..4 {
                    for l in 0..32 {
                        let h = qh[l] >> (2 * c);
                        k.q[c * 64 + l] = ((qs[c * 32 + l] & 0xF) | ((h & 1) << 4)) as i8;
                        k.q[c * 64 + 32 + l] = ((qs[c * 32 + l] >> 4) | ((h & 2) << 3)) as i8;
                    }
                }
            }
        }
        QuantType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            k.d = f16_at(b, 208);
            for (o, &s) in k.scales16.iter_mut().zip(sc) {
                *o = s as i8;
            }
            for n in 0..2 {
                let (ql, qh) = (&ql[n * 64..], &qh[n * 32..]);
                let y = &mut k.q[n * 128..];
                for l in 0..32 {
                    y[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                    y[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                    y[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                    y[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                }
            }
        }
        QuantType::Q2K => {
            // 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit values:
            // value i = 128n + 32j + l is bits 2j of byte 32n + l.
            let (sc, qs) = (&b[0..16], &b[16..80]);
            k.d = f16_at(b, 80);
            k.dmin = f16_at(b, 82);
            for ((s, m), &v) in k.scales16.iter_mut().zip(&mut k.mins16).zip(sc) {
                *s = (v & 0xF) as i8;
                *m = v >> 4;
            }
            for (i, q) in k.q.iter_mut().enumerate() {
                let (n, j, l) = (i / 128, (i / 32) % 4, i % 32);
                *q = ((qs[n * 32 + l] >> (2 * j)) & 3) as i8;
            }
        }
        QuantType::Q3K => {
            // As Q2_K's values, minus 4 where bit i/32 of hmask[i % 32] is clear.
            let (hm, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
            k.d = f16_at(b, 108);
            for j in 0..16 {
                k.scales16[j] = q3k_scale(j, sc);
            }
            for (i, q) in k.q.iter_mut().enumerate() {
                let (n, j, l) = (i / 128, (i / 32) % 4, i % 32);
                let low = ((qs[n * 32 + l] >> (2 * j)) & 3) as i8;
                let high = (hm[l] >> (i / 32)) & 1;
                *q = low - if high == 0 { 4 } else { 0 };
            }
        }
        QuantType::IQ4XS => {
            // Per 32 values a 6-bit scale (low 4 bits in scales_l, top 2 in scales_h), stored
            // + 32; the two 16-value halves of `scales16` get the same one.
            k.d = f16_at(b, 0);
            let sh = u16::from_le_bytes([b[2], b[3]]);
            let (sl, qs) = (&b[4..8], &b[8..136]);
            for ib in 0..8 {
                let ls =
                    ((sl[ib / 2] >> (4 * (ib % 2))) & 0xF) | ((((sh >> (2 * ib)) & 3) as u8) << 4);
                k.scales16[2 * ib] = ls as i8 - 32;
                k.scales16[2 * ib + 1] = ls as i8 - 32;
                for j in 0..16 {
                    let v = qs[ib * 16 + j];
                    k.q[ib * 32 + j] = IQ4_LEVELS[(v & 0xF) as usize];
                    k.q[ib * 32 + 16 + j] = IQ4_LEVELS[(v >> 4) as usize];
                }
            }
        }
        _ => unreachable!("unpack_k on a 32-wide format"),
    }
}

impl KBlock {
    fn new() -> Self {
        KBlock {
            q: [0; QK_K],
            d: 0.0,
            dmin: 0.0,
            scales: [0; 8],
            mins: [0; 8],
            scales16: [0; 16],
            mins16: [0; 16],
        }
    }
}

/// Q4_0 or Q5_0 blocks rewritten as Q8_0 blocks with the same values (same f16 scale; the
/// offset-removed values, -8..7 or -16..15, as bytes).
pub fn to_q8_0(t: QuantType, bytes: &[u8]) -> Vec<u8> {
    assert!(matches!(
        t,
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0
    ));
    let bb = t.block_bytes();
    let mut out = Vec::with_capacity(bytes.len() / bb * 34);
    let mut q = [0i8; QK];
    for b in bytes.chunks_exact(bb) {
        unpack_32(t, b, &mut q);
        out.extend_from_slice(&b[0..2]);
        out.extend(q.iter().map(|&v| v as u8));
    }
    out
}

/// Q4_0 blocks as Q5_0 blocks of the same values, exactly: the same scale, `q + 8` for each
/// 4-bit `q` (its low four bits `q ^ 8`, its fifth bit bit 3 of `q`). 22 bytes per 32 values
/// instead of Q8_0's 34, for the Q5_0 kernels.
pub fn q4_0_to_q5_0(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / 18 * 22);
    for b in bytes.chunks_exact(18) {
        let mut qh = 0u32;
        for (j, &v) in b[2..18].iter().enumerate() {
            qh |= (((v >> 3) & 1) as u32) << j;
            qh |= (((v >> 7) & 1) as u32) << (j + 16);
        }
        out.extend_from_slice(&b[0..2]);
        out.extend_from_slice(&qh.to_le_bytes());
        out.extend(b[2..18].iter().map(|&v| v ^ 0x88));
    }
    out
}

/// Dequantizes a row of blocks into `out` (`out.len()` values).
pub fn dequantize_row(t: QuantType, bytes: &[u8], out: &mut [f32]) {
    let (be, bb) = (t.block_elems(), t.block_bytes());
    assert_eq!(out.len() % be, 0);
    assert!(bytes.len() >= out.len() / be * bb);
    #[cfg(target_arch = "x86_64")]
    if matches!(byte_dot_isa(), ByteDotIsa::Avx2 | ByteDotIsa::Vnni) {
        // SAFETY: AVX2, FMA and F16C were detected (`byte_dot_isa`); lengths checked above.
        unsafe { crate::quant_x86::dequantize_row_avx2(t, bytes, out) };
        return;
    }
    dequantize_row_plain(t, bytes, out)
}

/// [`dequantize_row`] in plain code (the reference the SIMD form is tested against).
pub fn dequantize_row_plain(t: QuantType, bytes: &[u8], out: &mut [f32]) {
    let (be, bb) = (t.block_elems(), t.block_bytes());
    assert_eq!(out.len() % be, 0);
    assert!(bytes.len() >= out.len() / be * bb);
    match t {
        QuantType::Q2K
        | QuantType::Q3K
        | QuantType::Q4K
        | QuantType::Q5K
        | QuantType::Q6K
        | QuantType::IQ4XS => {
            let mut k = KBlock::new();
            for (o, b) in out.chunks_exact_mut(QK_K).zip(bytes.chunks_exact(bb)) {
                unpack_k(t, b, &mut k);
                if matches!(t, QuantType::Q6K | QuantType::Q3K | QuantType::IQ4XS) {
                    for (i, v) in o.iter_mut().enumerate() {
                        *v = k.d * k.scales16[i / 16] as f32 * k.q[i] as f32;
                    }
                } else if t == QuantType::Q2K {
                    for (i, v) in o.iter_mut().enumerate() {
                        let j = i / 16;
                        *v = k.d * k.scales16[j] as f32 * k.q[i] as f32
                            - k.dmin * k.mins16[j] as f32;
                    }
                } else {
                    for (i, v) in o.iter_mut().enumerate() {
                        let j = i / 32;
                        *v = k.d * k.scales[j] as f32 * k.q[i] as f32 - k.dmin * k.mins[j] as f32;
                    }
                }
            }
        }
        _ => {
            let mut q = [0i8; QK];
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(bb)) {
                let d = unpack_32(t, b, &mut q);
                let m = if matches!(t, QuantType::Q4_1 | QuantType::Q5_1) {
                    f16_at(b, 2)
                } else {
                    0.0
                };
                for (v, &qi) in o.iter_mut().zip(&q) {
                    *v = d * qi as f32 + m;
                }
            }
        }
    }
}

// ---- activations ----

static EXACT_ACTIVATIONS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Multiply quantized weights with f32 activations (each row dequantized, then an f32 dot)
/// instead of 8-bit ones: several times slower, and free of the activations' rounding. For
/// accuracy checks; also set by `DEEPSEEK_EXACT_ACTIVATIONS=1`.
pub fn set_exact_activations(on: bool) {
    EXACT_ACTIVATIONS.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn exact_activations() -> bool {
    static FROM_ENV: std::sync::Once = std::sync::Once::new();
    FROM_ENV.call_once(|| {
        if crate::tuning::get().exact_activations.value == 1 {
            set_exact_activations(true);
        }
    });
    EXACT_ACTIVATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Quantizes one scale block `xs` (a multiple of 32 values) to int8 with one scale, writing
/// each 32 values' sum to `sums`; returns the scale. The rounding is half away from zero,
/// done without a libm call (|y| ≤ 127).
pub fn quantize_block_reference(xs: &[f32], qs: &mut [i8], sums: &mut [i32]) -> f32 {
    let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for ((xb, qb), sum) in xs.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(sums) {
        *sum = 0;
        for (q, &v) in qb.iter_mut().zip(xb) {
            let y = v * id;
            *q = (y + 0.5f32.copysign(y)) as i8;
            *sum += *q as i32;
        }
    }
    d
}

/// `n` rows of activations quantized to int8: a scale per 32 values (or the same scale for all
/// 8 blocks of a 256-value super-block, see [`QuantizedActivations::per_super_block`]), the
/// int8 values, and each 32-value block's sum (each 16-value block's, see
/// [`QuantizedActivations::per_super_block_sums16`]).
pub struct QuantizedActivations {
    pub cols: usize,
    /// Values per scale: 32, or 256 for [`QuantizedActivations::per_super_block`].
    pub scale_block: usize,
    /// Values per entry of `sums`: 32, or 16.
    pub sum_block: usize,
    pub d: Vec<f32>,
    pub sums: Vec<i32>,
    pub qs: Vec<i8>,
}

impl QuantizedActivations {
    /// Quantizes `x` (`[n, cols]`, `cols` a multiple of 32), one scale per 32 values.
    pub fn new(x: &[f32], cols: usize) -> Self {
        Self::with_scale_block(x, cols, QK)
    }

    /// Quantizes `x` (`[n, cols]`, `cols` a multiple of 256) with one scale per 256 values,
    /// as llama.cpp's Q8_K, still stored once per 32-value block. K-quant kernels can then sum
    /// a whole super-block in integers (the AVX2 Q4_Kx8 kernel requires this form); the
    /// rounding is coarser where a block's values are much smaller than its super-block's.
    pub fn per_super_block(x: &[f32], cols: usize) -> Self {
        Self::with_scale_block(x, cols, QK_K)
    }

    /// [`QuantizedActivations::per_super_block`] with a sum per 16 values instead of per 32:
    /// the K-quants whose scales cover 16 values (Q6_K, Q3_K, Q2_K) take their offsets and
    /// mins against these sums in their repacked kernels.
    pub fn per_super_block_sums16(x: &[f32], cols: usize) -> Self {
        let mut a = Self::per_super_block(x, cols);
        a.sum_block = 16;
        a.sums =
            a.qs.chunks_exact(16)
                .map(|c| c.iter().map(|&v| v as i32).sum())
                .collect();
        a
    }

    fn with_scale_block(x: &[f32], cols: usize, block: usize) -> Self {
        assert!(
            cols.is_multiple_of(block),
            "activation width {cols} must be a multiple of {block}"
        );
        let nb = x.len() / QK;
        let mut a = QuantizedActivations {
            cols,
            scale_block: block,
            sum_block: QK,
            d: vec![0.0; nb],
            sums: vec![0; nb],
            qs: vec![0; x.len()],
        };
        let per = block / QK;
        // Through `simd::isa`, so `DEEPSEEK_ISA=scalar` takes the reference (bit-identical).
        #[cfg(target_arch = "x86_64")]
        let avx2 = matches!(
            crate::simd::isa(),
            crate::simd::Isa::Avx2 | crate::simd::Isa::Avx512
        );
        for (s, (xs, qs)) in x
            .chunks_exact(block)
            .zip(a.qs.chunks_exact_mut(block))
            .enumerate()
        {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 detected at run time (both ISAs include it); `xs` and `qs` are
                // `block` long.
                let d = unsafe {
                    crate::quant_x86::quantize_activations_avx2(
                        xs,
                        qs,
                        &mut a.sums[s * per..][..per],
                    )
                };
                a.d[s * per..][..per].fill(d);
                continue;
            }
            let d = quantize_block_reference(xs, qs, &mut a.sums[s * per..][..per]);
            a.d[s * per..][..per].fill(d);
        }
        a
    }

    /// Row `t` as (scales, sums, values).
    pub fn row(&self, t: usize) -> (&[f32], &[i32], &[i8]) {
        let (nb, ns) = (self.cols / QK, self.cols / self.sum_block);
        (
            &self.d[t * nb..(t + 1) * nb],
            &self.sums[t * ns..(t + 1) * ns],
            &self.qs[t * self.cols..(t + 1) * self.cols],
        )
    }
}

#[inline(always)]
fn idot<const N: usize>(a: &[i8], b: &[i8]) -> i32 {
    let (a, b) = (&a[..N], &b[..N]);
    let mut s = 0i32;
    for i in 0..N {
        s += a[i] as i32 * b[i] as i32;
    }
    s
}

/// Dot product of one quantized weight row with one activation row (plain code).
#[inline(always)]
pub(crate) fn dot_row_generic(t: QuantType, w: &[u8], ad: &[f32], asum: &[i32], aq: &[i8]) -> f32 {
    dot_rows_unpacked::<ScalarDot, 1>(t, w, &[(ad, asum, aq)])[0]
}

/// Sixteen ones: a dot product with them sums 16 activations (Q2_K's mins).
const ONES: [i8; 16] = [1; 16];

/// Integer dot products of the unpacked weight values with the int8 activations.
pub(crate) trait IntDot {
    fn dot32(w: &[i8], a: &[i8]) -> i32;
    fn dot16(w: &[i8], a: &[i8]) -> i32;
}

pub(crate) struct ScalarDot;

impl IntDot for ScalarDot {
    #[inline(always)]
    fn dot32(w: &[i8], a: &[i8]) -> i32 {
        idot::<32>(w, a)
    }
    #[inline(always)]
    fn dot16(w: &[i8], a: &[i8]) -> i32 {
        idot::<16>(w, a)
    }
}

/// One quantized weight row against `T` activation rows: each block is unpacked to integers
/// once for all `T`, then `D` does the integer dot products.
#[inline(always)]
pub(crate) fn dot_rows_unpacked<D: IntDot, const T: usize>(
    t: QuantType,
    w: &[u8],
    acts: &[(&[f32], &[i32], &[i8]); T],
) -> [f32; T] {
    let bb = t.block_bytes();
    let mut acc = [0.0f32; T];
    match t {
        QuantType::Q4K | QuantType::Q5K => {
            let mut k = KBlock::new();
            for (sb, b) in w.chunks_exact(bb).enumerate() {
                unpack_k(t, b, &mut k);
                for (acc, &(ad, asum, aq)) in acc.iter_mut().zip(acts) {
                    let mut s_sc = 0.0f32;
                    let mut s_min = 0.0f32;
                    for j in 0..8 {
                        let ab = sb * 8 + j;
                        let i = D::dot32(&k.q[j * 32..j * 32 + 32], &aq[ab * 32..ab * 32 + 32]);
                        s_sc += ad[ab] * (k.scales[j] as i32 * i) as f32;
                        s_min += ad[ab] * (k.mins[j] as i32 * asum[ab]) as f32;
                    }
                    *acc += k.d * s_sc - k.dmin * s_min;
                }
            }
        }
        QuantType::Q6K | QuantType::Q3K | QuantType::Q2K | QuantType::IQ4XS => {
            let mut k = KBlock::new();
            for (sb, b) in w.chunks_exact(bb).enumerate() {
                unpack_k(t, b, &mut k);
                for (acc, &(ad, _, aq)) in acc.iter_mut().zip(acts) {
                    if t == QuantType::Q2K {
                        // The mins meet the activations' sums over 16 values.
                        let mut m = 0.0f32;
                        for j in 0..8 {
                            let ab = sb * 8 + j;
                            let s0 = D::dot16(&ONES, &aq[ab * 32..ab * 32 + 16]);
                            let s1 = D::dot16(&ONES, &aq[ab * 32 + 16..ab * 32 + 32]);
                            let i = k.mins16[2 * j] as i32 * s0 + k.mins16[2 * j + 1] as i32 * s1;
                            m += ad[ab] * i as f32;
                        }
                        *acc -= k.dmin * m;
                    }
                    let mut s = 0.0f32;
                    for j in 0..8 {
                        let ab = sb * 8 + j;
                        let lo = D::dot16(&k.q[j * 32..j * 32 + 16], &aq[ab * 32..ab * 32 + 16]);
                        let hi = D::dot16(
                            &k.q[j * 32 + 16..j * 32 + 32],
                            &aq[ab * 32 + 16..ab * 32 + 32],
                        );
                        let i = k.scales16[2 * j] as i32 * lo + k.scales16[2 * j + 1] as i32 * hi;
                        s += ad[ab] * i as f32;
                    }
                    *acc += k.d * s;
                }
            }
        }
        _ => {
            let mut q = [0i8; QK];
            for (ab, b) in w.chunks_exact(bb).enumerate() {
                let d = unpack_32(t, b, &mut q);
                for (acc, &(ad, asum, aq)) in acc.iter_mut().zip(acts) {
                    let i = D::dot32(&q, &aq[ab * 32..ab * 32 + 32]);
                    *acc += d * ad[ab] * i as f32;
                    if matches!(t, QuantType::Q4_1 | QuantType::Q5_1) {
                        *acc += f16_at(b, 2) * ad[ab] * asum[ab] as f32;
                    }
                }
            }
        }
    }
    acc
}

/// Which integer dot-product code runs, from the active [`crate::tier`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ByteDotIsa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
    /// AArch64 with the `sdot` instruction (Armv8.2 dot product).
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

pub(crate) fn byte_dot_isa() -> ByteDotIsa {
    use crate::tier::{self, Tier};
    match tier::active() {
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 | Tier::Avx512 => ByteDotIsa::Avx2,
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512Vnni | Tier::Avx512Bf16 | Tier::Amx => ByteDotIsa::Vnni,
        #[cfg(target_arch = "aarch64")]
        Tier::NeonDot => ByteDotIsa::NeonDot,
        _ => ByteDotIsa::Scalar,
    }
}

/// `Σ w·x` of one quantized weight row (`row_bytes(cols)` bytes) with `T` activation rows of
/// `a` starting at `row0`: the weight blocks are unpacked once for all `T`.
pub fn dot_rows<const T: usize>(
    t: QuantType,
    w: &[u8],
    a: &QuantizedActivations,
    row0: usize,
) -> [f32; T] {
    assert!(w.len() >= t.row_bytes(a.cols));
    let acts: [(&[f32], &[i32], &[i8]); T] = std::array::from_fn(|k| a.row(row0 + k));
    match byte_dot_isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the features were detected at run time; row lengths checked above.
        ByteDotIsa::Vnni => unsafe { crate::quant_x86::dot_rows_vnni::<T>(t, w, &acts) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        ByteDotIsa::Avx2 => unsafe { crate::quant_x86::dot_rows_avx2::<T>(t, w, &acts) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `dotprod` was detected at run time; row lengths checked above.
        ByteDotIsa::NeonDot => unsafe { crate::quant_neon::dot_rows::<T>(t, w, &acts) },
        ByteDotIsa::Scalar => dot_rows_unpacked::<ScalarDot, T>(t, w, &acts),
    }
}

/// `Σ w·x` for a quantized weight row and activation row `row` of `a`.
pub fn dot_row(t: QuantType, w: &[u8], a: &QuantizedActivations, row: usize) -> f32 {
    dot_rows::<1>(t, w, a, row)[0]
}

/// Plain reference for tests: dequantize the row and multiply in f64.
pub fn dot_row_reference(t: QuantType, w: &[u8], x: &[f32]) -> f32 {
    let mut deq = vec![0.0; x.len()];
    dequantize_row(t, w, &mut deq);
    deq.iter()
        .zip(x)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum::<f64>() as f32
}

// ---- quantization (for `deepseek quantize`) ----

/// Quantizes `x` (a multiple of the block size) into `out` (`row_bytes(x.len())` bytes).
/// The 32-wide formats round as llama.cpp's reference quantizers do (byte-identical to them);
/// the K-quants use a simpler min/max search than llama.cpp's, in the same format.
pub fn quantize_row(t: QuantType, x: &[f32], out: &mut [u8]) {
    let (be, bb) = (t.block_elems(), t.block_bytes());
    assert_eq!(
        x.len() % be,
        0,
        "{} needs rows that are a multiple of {be}",
        t.name()
    );
    assert_eq!(out.len(), x.len() / be * bb);
    for (xb, ob) in x.chunks_exact(be).zip(out.chunks_exact_mut(bb)) {
        match t {
            QuantType::Q8_0 => {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(ob, 0, d);
                for (o, &v) in ob[2..].iter_mut().zip(xb) {
                    *o = (v * id).round() as i8 as u8;
                }
            }
            QuantType::Q4_0 | QuantType::Q5_0 => {
                // The value of largest magnitude maps to -8 (-16), keeping its sign.
                let (nmax, levels) = if t == QuantType::Q4_0 {
                    (-8.0, 15)
                } else {
                    (-16.0, 31)
                };
                let max = xb
                    .iter()
                    .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / nmax;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(ob, 0, d);
                let off = -nmax + 0.5;
                let q = |v: f32| ((v * id + off) as i32).min(levels) as u8;
                if t == QuantType::Q4_0 {
                    for j in 0..16 {
                        ob[2 + j] = q(xb[j]) | (q(xb[j + 16]) << 4);
                    }
                } else {
                    let mut qh = 0u32;
                    for j in 0..16 {
                        let (a, b) = (q(xb[j]), q(xb[j + 16]));
                        ob[6 + j] = (a & 0xF) | ((b & 0xF) << 4);
                        qh |= (((a & 0x10) >> 4) as u32) << j;
                        qh |= (((b & 0x10) >> 4) as u32) << (j + 16);
                    }
                    ob[2..6].copy_from_slice(&qh.to_le_bytes());
                }
            }
            QuantType::Q4_1 => {
                let min = xb.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                let max = xb.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(ob, 0, d);
                put_f16(ob, 2, min);
                let q = |v: f32| (((v - min) * id + 0.5) as i32).min(15) as u8;
                for j in 0..16 {
                    ob[4 + j] = q(xb[j]) | (q(xb[j + 16]) << 4);
                }
            }
            QuantType::Q5_1 => {
                let min = xb.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                let max = xb.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let d = (max - min) / 31.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(ob, 0, d);
                put_f16(ob, 2, min);
                let q = |v: f32| (((v - min) * id + 0.5) as i32).min(31) as u8;
                let mut qh = 0u32;
                for j in 0..16 {
                    let (a, b) = (q(xb[j]), q(xb[j + 16]));
                    ob[8 + j] = (a & 0xF) | ((b & 0xF) << 4);
                    qh |= ((a >> 4) as u32) << j | ((b >> 4) as u32) << (j + 16);
                }
                ob[4..8].copy_from_slice(&qh.to_le_bytes());
            }
            QuantType::Q2K => quantize_q2k(xb, ob),
            QuantType::Q3K => quantize_q3k(xb, ob),
            QuantType::Q4K | QuantType::Q5K => quantize_k_minmax(t, xb, ob),
            QuantType::Q6K => quantize_q6k(xb, ob),
            QuantType::IQ4NL => {
                let d = iq4_scale(xb);
                put_f16(ob, 0, d);
                let mut q = [0u8; QK];
                iq4_indices(xb, f16_at(ob, 0), &mut q);
                for j in 0..16 {
                    ob[2 + j] = q[j] | (q[j + 16] << 4);
                }
            }
            QuantType::IQ4XS => quantize_iq4xs(xb, ob),
        }
    }
}

/// An IQ4 scale for `x`: its value of largest magnitude on the table's -127 or on its 113,
/// whichever fits `x` with the smaller squared error.
fn iq4_scale(x: &[f32]) -> f32 {
    let max = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let err = |d: f32| -> f32 {
        let mut q = [0u8; QK];
        let q = &mut q[..x.len()]; // a 32-value block (IQ4_NL) or sub-block (IQ4_XS)
        iq4_indices(x, d, q);
        x.iter()
            .zip(q.iter())
            .map(|(&v, &i)| (v - d * IQ4_LEVELS[i as usize] as f32).powi(2))
            .sum()
    };
    let (a, b) = (max / -127.0, max / 113.0);
    if err(b) < err(a) {
        b
    } else {
        a
    }
}

/// The nearest level of `x / d` for each value (index 8, the level 1, for a zero scale).
fn iq4_indices(x: &[f32], d: f32, q: &mut [u8]) {
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (o, &v) in q.iter_mut().zip(x) {
        let y = v * id;
        let mut best = 0;
        for (i, &l) in IQ4_LEVELS.iter().enumerate() {
            if (y - l as f32).abs() < (y - IQ4_LEVELS[best] as f32).abs() {
                best = i;
            }
        }
        *o = best as u8;
    }
}

/// IQ4_XS: per 32 values IQ4_NL's scale choice, the eight scales quantized to 6 signed bits
/// against the super-block's `d` (largest magnitude on -32).
fn quantize_iq4xs(x: &[f32], out: &mut [u8]) {
    let mut sc = [0.0f32; 8];
    for (ib, s) in sc.iter_mut().enumerate() {
        *s = iq4_scale(&x[ib * 32..(ib + 1) * 32]);
    }
    let max_sc = sc
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    put_f16(out, 0, max_sc / -32.0);
    let d = f16_at(out, 0);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sh = 0u16;
    out[4..8].fill(0);
    for ib in 0..8 {
        let ls = ((sc[ib] * id).round() as i32).clamp(-32, 31);
        let stored = (ls + 32) as u8;
        out[4 + ib / 2] |= (stored & 0xF) << (4 * (ib % 2));
        sh |= ((stored >> 4) as u16) << (2 * ib);
        let mut q = [0u8; 32];
        iq4_indices(&x[ib * 32..(ib + 1) * 32], d * ls as f32, &mut q);
        for j in 0..16 {
            out[8 + ib * 16 + j] = q[j] | (q[j + 16] << 4);
        }
    }
    out[2..4].copy_from_slice(&sh.to_le_bytes());
}

/// Q2_K: per 16-value sub-block an affine (scale, min) fit by min/max over 0..3, the scales
/// and mins quantized to 4 bits against the super-block's `d` and `dmin`.
fn quantize_q2k(x: &[f32], out: &mut [u8]) {
    let mut sc = [0.0f32; 16];
    let mut mn = [0.0f32; 16];
    for j in 0..16 {
        let s = &x[j * 16..(j + 1) * 16];
        let lo = s.iter().fold(0.0f32, |m, &v| m.min(v));
        let hi = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        sc[j] = (hi - lo) / 3.0;
        mn[j] = -lo;
    }
    put_f16(out, 80, sc.iter().fold(0.0f32, |m, &v| m.max(v)) / 15.0);
    put_f16(out, 82, mn.iter().fold(0.0f32, |m, &v| m.max(v)) / 15.0);
    let (d, dmin) = (f16_at(out, 80), f16_at(out, 82));
    let code = |v: f32, unit: f32| {
        if unit > 0.0 {
            ((v / unit).round() as i32).clamp(0, 15) as u8
        } else {
            0
        }
    };
    let mut q = [0u8; QK_K];
    for j in 0..16 {
        let (ls, lm) = (code(sc[j], d), code(mn[j], dmin));
        out[j] = ls | (lm << 4);
        let (dj, mj) = (d * ls as f32, dmin * lm as f32);
        let id = if dj > 0.0 { 1.0 / dj } else { 0.0 };
        for l in 0..16 {
            q[j * 16 + l] = (((x[j * 16 + l] + mj) * id).round() as i32).clamp(0, 3) as u8;
        }
    }
    let qs = &mut out[16..80];
    qs.fill(0);
    for (i, &v) in q.iter().enumerate() {
        let (n, j, l) = (i / 128, (i / 32) % 4, i % 32);
        qs[n * 32 + l] |= v << (2 * j);
    }
}

/// Q3_K: per 16-value sub-block a signed scale (the value of largest magnitude maps to -4 or
/// to +3, whichever fits the sub-block with the smaller squared error: with only 8 levels the
/// lost level on one side matters), the 16 scales quantized to 6 bits (-32..31) against the
/// super-block's `d`.
fn quantize_q3k(x: &[f32], out: &mut [u8]) {
    let mut sc = [0.0f32; 16];
    for (j, s) in sc.iter_mut().enumerate() {
        let sub = &x[j * 16..(j + 1) * 16];
        let max = sub
            .iter()
            .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let err = |scale: f32| -> f32 {
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            sub.iter()
                .map(|&v| {
                    let q = (v * inv).round().clamp(-4.0, 3.0);
                    (v - q * scale).powi(2)
                })
                .sum()
        };
        let (a, b) = (max / -4.0, max / 3.0);
        *s = if err(b) < err(a) { b } else { a };
    }
    let max_sc = sc
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    put_f16(out, 108, max_sc / -32.0);
    let d = f16_at(out, 108);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (hm, rest) = out.split_at_mut(32);
    let (qs, scales) = rest.split_at_mut(64);
    hm.fill(0);
    qs.fill(0);
    scales[..12].fill(0);
    for j in 0..16 {
        let ls = ((sc[j] * id).round() as i32).clamp(-32, 31);
        let stored = (ls + 32) as u8;
        scales[j % 8] |= (stored & 0xF) << (4 * (j / 8));
        scales[8 + j % 4] |= (stored >> 4) << (2 * (j / 4));
        let dj = d * ls as f32;
        let idj = if dj != 0.0 { 1.0 / dj } else { 0.0 };
        for l in 0..16 {
            let i = j * 16 + l;
            let u = ((x[i] * idj).round() as i32).clamp(-4, 3) + 4; // 0..7
            let (n, b, pos) = (i / 128, (i / 32) % 4, i % 32);
            qs[n * 32 + pos] |= ((u & 3) as u8) << (2 * b);
            hm[pos] |= ((u >> 2) as u8) << (i / 32);
        }
    }
}

/// Q4_K / Q5_K: per 32-value sub-block an affine (scale, min) fit by min/max, then the eight
/// scales and mins quantized to 6 bits against the super-block's `d` and `dmin`.
fn quantize_k_minmax(t: QuantType, x: &[f32], out: &mut [u8]) {
    let levels = if t == QuantType::Q4K { 15.0 } else { 31.0 };
    let mut sc = [0.0f32; 8];
    let mut mn = [0.0f32; 8];
    for j in 0..8 {
        let s = &x[j * 32..(j + 1) * 32];
        let lo = s.iter().fold(0.0f32, |m, &v| m.min(v)); // min ≤ 0: stored as a positive min
        let hi = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        sc[j] = (hi - lo) / levels;
        mn[j] = -lo;
    }
    let max_sc = sc.iter().fold(0.0f32, |m, &v| m.max(v));
    let max_mn = mn.iter().fold(0.0f32, |m, &v| m.max(v));
    let d = max_sc / 63.0;
    let dmin = max_mn / 63.0;
    put_f16(out, 0, d);
    put_f16(out, 2, dmin);
    // Use the f16-rounded super scales so the 6-bit codes match what is decoded.
    let (d, dmin) = (f16_at(out, 0), f16_at(out, 2));
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = if d > 0.0 {
            ((sc[j] / d).round() as i32).clamp(0, 63) as u8
        } else {
            0
        };
        lm[j] = if dmin > 0.0 {
            ((mn[j] / dmin).round() as i32).clamp(0, 63) as u8
        } else {
            0
        };
    }
    out[4..16].copy_from_slice(&pack_scale_min_k4(&ls, &lm));
    let mut q = [0u8; QK_K];
    for j in 0..8 {
        let (dj, mj) = (d * ls[j] as f32, dmin * lm[j] as f32);
        let id = if dj > 0.0 { 1.0 / dj } else { 0.0 };
        for l in 0..32 {
            let v = ((x[j * 32 + l] + mj) * id).round() as i32;
            q[j * 32 + l] = v.clamp(0, levels as i32) as u8;
        }
    }
    if t == QuantType::Q4K {
        let qs = &mut out[16..144];
        for c in 0..4 {
            for l in 0..32 {
                qs[c * 32 + l] = q[c * 64 + l] | (q[c * 64 + 32 + l] << 4);
            }
        }
    } else {
        let (qh, qs) = out[16..176].split_at_mut(32);
        qh.fill(0);
        for c in 0..4 {
            for l in 0..32 {
                let (a, b) = (q[c * 64 + l], q[c * 64 + 32 + l]);
                qs[c * 32 + l] = (a & 0xF) | ((b & 0xF) << 4);
                qh[l] |= ((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1));
            }
        }
    }
}

/// Q6_K: per 16-value sub-block a signed scale (largest magnitude maps to -32), the 16 scales
/// quantized to int8 against the super-block's `d`.
fn quantize_q6k(x: &[f32], out: &mut [u8]) {
    let mut sc = [0.0f32; 16];
    for (j, s) in sc.iter_mut().enumerate() {
        let max =
            x[j * 16..(j + 1) * 16]
                .iter()
                .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        *s = max / -32.0;
    }
    let max_sc = sc
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max_sc / -128.0;
    out[208..210].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
    let d = f16_at(out, 208);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut ls = [0i8; 16];
    for j in 0..16 {
        ls[j] = ((sc[j] * id).round() as i32).clamp(-128, 127) as i8;
    }
    let mut q = [0u8; QK_K];
    for j in 0..16 {
        let dj = d * ls[j] as f32;
        let idj = if dj != 0.0 { 1.0 / dj } else { 0.0 };
        for l in 0..16 {
            let v = (x[j * 16 + l] * idj).round() as i32;
            q[j * 16 + l] = (v.clamp(-32, 31) + 32) as u8;
        }
    }
    let (ql, rest) = out.split_at_mut(128);
    let (qh, scales) = rest.split_at_mut(64);
    for (o, &s) in scales[..16].iter_mut().zip(&ls) {
        *o = s as u8;
    }
    for n in 0..2 {
        let (ql, qh, q) = (&mut ql[n * 64..], &mut qh[n * 32..], &q[n * 128..]);
        for l in 0..32 {
            let (q1, q2, q3, q4) = (q[l], q[l + 32], q[l + 64], q[l + 96]);
            ql[l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            ql[l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            qh[l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_blocks_become_q5_0_blocks_of_the_same_values() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37) % 61) as f32 / 30.0 - 1.0)
            .collect();
        let mut q4 = vec![0u8; QuantType::Q4_0.row_bytes(256)];
        quantize_row(QuantType::Q4_0, &x, &mut q4);
        // Every nibble value, so both halves of the fifth-bit rule are met.
        for (i, b) in q4[2..18].iter_mut().enumerate() {
            *b = (i as u8) | ((15 - i as u8) << 4);
        }
        let q5 = q4_0_to_q5_0(&q4);
        assert_eq!(q5.len(), QuantType::Q5_0.row_bytes(256));
        let (mut a, mut b) = (vec![0.0; 256], vec![0.0; 256]);
        dequantize_row_plain(QuantType::Q4_0, &q4, &mut a);
        dequantize_row_plain(QuantType::Q5_0, &q5, &mut b);
        assert_eq!(a, b);
    }
    use rand::{Rng, SeedableRng};

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_activation_quantization_is_bit_exact() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut r = rand::rngs::StdRng::seed_from_u64(9);
        for block in [QK, QK_K] {
            for case in 0..40 {
                let mut xs: Vec<f32> = (0..block).map(|_| r.random_range(-3.0..3.0)).collect();
                match case % 4 {
                    // All zero: scale 0, every value 0.
                    0 => xs.fill(0.0),
                    // A max of 127 (scale 1): half the values are ties at k + 0.5.
                    1 => {
                        for (i, v) in xs.iter_mut().enumerate() {
                            *v = (i % 200) as f32 / 2.0 - 50.0;
                        }
                        xs[1] = 127.0;
                    }
                    // Negative zeros and a single large value.
                    2 => {
                        xs.iter_mut().step_by(3).for_each(|v| *v = -0.0);
                        xs[block / 2] = -1e6;
                    }
                    _ => {}
                }
                let (mut q0, mut q1) = (vec![0i8; block], vec![0i8; block]);
                let (mut s0, mut s1) = (vec![0i32; block / QK], vec![7i32; block / QK]);
                let d0 = quantize_block_reference(&xs, &mut q0, &mut s0);
                // SAFETY: AVX2 detected above; lengths as required.
                let d1 =
                    unsafe { crate::quant_x86::quantize_activations_avx2(&xs, &mut q1, &mut s1) };
                assert_eq!(d0.to_bits(), d1.to_bits(), "scale, case {case}");
                assert_eq!(q0, q1, "values, block {block}, case {case}");
                assert_eq!(s0, s1, "sums, block {block}, case {case}");
            }
        }
    }

    #[test]
    fn super_block_activations_share_a_scale_and_round_to_it() {
        let mut r = rand::rngs::StdRng::seed_from_u64(5);
        let cols = 512;
        // Two rows; the second row's blocks differ in magnitude by 100x.
        let x: Vec<f32> = (0..2 * cols)
            .map(|i| {
                let v: f32 = r.random_range(-1.0..1.0);
                if i >= cols && (i / QK).is_multiple_of(2) {
                    v * 100.0
                } else {
                    v
                }
            })
            .collect();
        let a = QuantizedActivations::per_super_block(&x, cols);
        for (s, xs) in x.chunks(QK_K).enumerate() {
            let d = xs.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            for b in 0..QK_K / QK {
                let bi = s * QK_K / QK + b;
                assert_eq!(a.d[bi], d, "super-block {s}, block {b}");
                let q = &a.qs[bi * QK..(bi + 1) * QK];
                assert_eq!(a.sums[bi], q.iter().map(|&v| v as i32).sum::<i32>());
                for (&qv, &xv) in q.iter().zip(&xs[b * QK..(b + 1) * QK]) {
                    assert!((qv as f32 * d - xv).abs() <= 0.5 * d * 1.0001);
                }
            }
        }
    }

    fn vectors() -> serde_json::Value {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/quant/vectors.json"
        );
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn floats(v: &serde_json::Value) -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }

    fn ty(name: &str) -> QuantType {
        QuantType::from_name(name).unwrap()
    }

    #[test]
    fn dequantize_matches_gguf_py_for_every_type() {
        let v = vectors();
        for (name, case) in v.as_object().unwrap() {
            let t = ty(name);
            let blocks = hex(case["blocks"].as_str().unwrap());
            let want = floats(&case["dequant"]);
            let mut got = vec![0.0; want.len()];
            dequantize_row(t, &blocks, &mut got);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "{name}[{i}]: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn simd_dequantization_equals_plain() {
        let x = rand_vec(QK_K * 3, 31);
        for t in QuantType::ALL {
            let mut q = vec![0u8; t.row_bytes(x.len())];
            quantize_row(t, &x, &mut q);
            // Random bytes too, for every bit pattern of the scales and values; the f16
            // fields are kept from the quantized row (finite, of a sensible size).
            let mut r = rand::rngs::StdRng::seed_from_u64(32);
            let mut noise: Vec<u8> = (0..q.len()).map(|_| r.random::<u8>()).collect();
            let f16_fields = match t {
                QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => 0..4,
                QuantType::Q2K => 80..84,
                QuantType::Q3K => 108..110,
                QuantType::Q6K => 208..210,
                _ => 0..2, // Q8_0, Q4_0, Q5_0, IQ4_NL; IQ4_XS's d (its scales_h are random)
            };
            let bb = t.block_bytes();
            for (n, b) in noise.chunks_exact_mut(bb).zip(q.chunks_exact(bb)) {
                n[f16_fields.clone()].copy_from_slice(&b[f16_fields.clone()]);
            }
            for bytes in [q, noise] {
                let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
                dequantize_row(t, &bytes, &mut a);
                dequantize_row_plain(t, &bytes, &mut b);
                for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (u - v).abs() <= 1e-6 * (1.0 + v.abs()),
                        "{t:?}[{i}]: {u} vs {v}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantize_is_byte_identical_to_gguf_py() {
        let v = vectors();
        for name in ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"] {
            let case = &v[name];
            let t = ty(name);
            let x = floats(&case["input"]);
            let mut out = vec![0u8; t.row_bytes(x.len())];
            quantize_row(t, &x, &mut out);
            assert_eq!(out, hex(case["blocks"].as_str().unwrap()), "{name}");
        }
    }

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn k_quant_round_trip_error_is_small() {
        let x = rand_vec(QK_K * 4, 3);
        for (t, tol) in [
            (QuantType::Q4K, 0.08),
            (QuantType::Q5K, 0.04),
            (QuantType::Q6K, 0.035), // one step where a value mirrors the sub-block extreme
            (QuantType::Q8_0, 0.005),
            (QuantType::Q5_1, 0.04),
            (QuantType::Q3K, 0.3), // 8 levels: a step of a quarter to a third of the extreme
            (QuantType::Q2K, 0.4),
            (QuantType::IQ4NL, 0.12), // the levels are up to 24 apart (of 127) at the ends
            (QuantType::IQ4XS, 0.12),
        ] {
            let mut q = vec![0u8; t.row_bytes(x.len())];
            quantize_row(t, &x, &mut q);
            let mut y = vec![0.0; x.len()];
            dequantize_row(t, &q, &mut y);
            let err = x
                .iter()
                .zip(&y)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < tol, "{t:?}: max error {err}");
        }
    }

    /// With the activation's own rounding applied to the reference, every path agrees to
    /// float summation order.
    #[test]
    fn dot_is_exact_given_the_activation_rounding() {
        let cols = QK_K * 2;
        let x = rand_vec(cols, 21);
        // Both activation forms: a scale per 32 values, and one per super-block (the Q4_Kx8
        // kernels' form; every kernel must take either).
        for a in [
            QuantizedActivations::new(&x, cols),
            QuantizedActivations::per_super_block(&x, cols),
        ] {
            dot_is_exact_for(&a, cols);
        }
    }

    fn dot_is_exact_for(a: &QuantizedActivations, cols: usize) {
        let xq: Vec<f32> = (0..cols).map(|i| a.d[i / QK] * a.qs[i] as f32).collect();
        let w = rand_vec(cols, 22);
        for t in QuantType::ALL {
            let mut q = vec![0u8; t.row_bytes(cols)];
            quantize_row(t, &w, &mut q);
            let want = dot_row_reference(t, &q, &xq);
            let (ad, s, aq) = a.row(0);
            let generic = dot_row_generic(t, &q, ad, s, aq);
            let fast = dot_row(t, &q, a, 0);
            for g in [generic, fast] {
                assert!(
                    (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{t:?}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn dot_matches_dequantized_reference_on_every_isa() {
        let cols = QK_K * 3;
        let x = rand_vec(cols * 2, 11);
        let a = QuantizedActivations::new(&x, cols);
        let w = rand_vec(cols, 12);
        for t in QuantType::ALL {
            let mut q = vec![0u8; t.row_bytes(cols)];
            quantize_row(t, &w, &mut q);
            for row in 0..2 {
                let want = dot_row_reference(t, &q, &x[row * cols..(row + 1) * cols]);
                let (ad, s, aq) = a.row(row);
                let mut got = vec![dot_row_generic(t, &q, ad, s, aq)];
                #[cfg(target_arch = "x86_64")]
                {
                    let acts = [a.row(row)];
                    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
                        got.push(unsafe { crate::quant_x86::dot_rows_avx2::<1>(t, &q, &acts)[0] });
                    }
                    if is_x86_feature_detected!("avx512vnni")
                        && is_x86_feature_detected!("avx512vl")
                    {
                        got.push(unsafe { crate::quant_x86::dot_rows_vnni::<1>(t, &q, &acts)[0] });
                    }
                }
                #[cfg(target_arch = "aarch64")]
                if std::arch::is_aarch64_feature_detected!("dotprod") {
                    let acts = [a.row(row)];
                    got.push(unsafe { crate::quant_neon::dot_rows::<1>(t, &q, &acts)[0] });
                }
                got.push(dot_row(t, &q, &a, row));
                if row == 0 {
                    // The batched forms agree with the single-row one.
                    let two = dot_rows::<2>(t, &q, &a, 0);
                    assert!((two[0] - got[0]).abs() < 1e-3 * (1.0 + got[0].abs()));
                    assert!(
                        (two[1] - dot_row_generic(t, &q, a.row(1).0, a.row(1).1, a.row(1).2)).abs()
                            < 1e-3 * (1.0 + two[1].abs())
                    );
                }
                for g in got {
                    // The activation's 8-bit rounding: ~0.4% of Σ|w·x|.
                    let scale: f32 = w
                        .iter()
                        .zip(&x[row * cols..])
                        .map(|(a, b)| (a * b).abs())
                        .sum();
                    assert!((g - want).abs() < 0.01 * scale, "{t:?}: {g} vs {want}");
                }
            }
        }
    }
}
