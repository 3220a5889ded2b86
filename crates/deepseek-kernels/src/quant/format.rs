//! The GGML block formats: their names, block sizes and byte layouts, and the helpers that read
//! and write their f16 scales and packed 6-bit scales.

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
    // llama.cpp's lattice i-quants (IQ2_XXS and IQ3_XXS written, the others read): groups of 8
    // (or 4) values are points of a fixed grid, indexed with a few bits, with their signs apart.
    // 256-value super-blocks.
    /// 2.06 bits per weight: 8-bit indices into 256 points of {8, 25, 43}⁸, 7-bit sign patterns,
    /// a 4-bit scale per 32 values.
    IQ2XXS,
    /// 2.31 bits: 9-bit indices into 512 points, 7-bit signs, a 4-bit scale per 16 values.
    IQ2XS,
    /// 2.56 bits: 10-bit indices into 1024 points, 8 explicit signs, a 4-bit scale per 16.
    IQ2S,
    /// 3.06 bits: 8-bit indices into 256 points of 4 values (4..62), 7-bit signs, a 4-bit
    /// scale per 32.
    IQ3XXS,
    /// 3.44 bits: 9-bit indices into 512 points of 4 odd values (1..15), 8 explicit signs, a
    /// 4-bit scale per 32.
    IQ3S,
    /// 1.56 bits: 11-bit indices into 2048 points of {-1, 0, 1}⁸ shifted by ±1/8, a 3-bit scale
    /// per 32.
    IQ1S,
    /// 1.75 bits: as IQ1_S with a 3-bit scale per 16 and the shift's sign per 8; the f16
    /// super-block scale spread over the scales' top nibbles.
    IQ1M,
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

    /// llama.cpp's lattice i-quants (see [`super::iq`]).
    pub const LATTICE: [QuantType; 7] = [
        QuantType::IQ2XXS,
        QuantType::IQ2XS,
        QuantType::IQ2S,
        QuantType::IQ3XXS,
        QuantType::IQ3S,
        QuantType::IQ1S,
        QuantType::IQ1M,
    ];

    /// llama.cpp's lattice i-quants (IQ1–IQ3): values are grid points ([`super::iq`]).
    pub fn is_lattice(self) -> bool {
        Self::LATTICE.contains(&self)
    }

    /// The lattice types `quantize` writes ([`super::iq_quantize`]).
    pub const LATTICE_WRITTEN: [QuantType; 7] = [
        QuantType::IQ1S,
        QuantType::IQ1M,
        QuantType::IQ2XXS,
        QuantType::IQ2XS,
        QuantType::IQ2S,
        QuantType::IQ3XXS,
        QuantType::IQ3S,
    ];

    /// Whether `quantize` can write this type: all but the lattice types other than
    /// [`Self::LATTICE_WRITTEN`].
    pub fn can_quantize(self) -> bool {
        !self.is_lattice() || Self::LATTICE_WRITTEN.contains(&self)
    }

    /// Every type: the block formats, then the lattice types.
    pub fn every() -> impl Iterator<Item = QuantType> {
        Self::ALL.into_iter().chain(Self::LATTICE)
    }

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
            | QuantType::IQ4XS
            | QuantType::IQ2XXS
            | QuantType::IQ2XS
            | QuantType::IQ2S
            | QuantType::IQ3XXS
            | QuantType::IQ3S
            | QuantType::IQ1S
            | QuantType::IQ1M => QK_K,
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
            QuantType::IQ2XXS => 2 + 64,
            QuantType::IQ2XS => 2 + 64 + 8,
            QuantType::IQ2S => 2 + 32 + 32 + 8 + 8,
            QuantType::IQ3XXS => 2 + 64 + 32,
            QuantType::IQ3S => 2 + 64 + 8 + 32 + 4,
            QuantType::IQ1S => 2 + 32 + 16,
            QuantType::IQ1M => 32 + 16 + 8,
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
            QuantType::IQ2XXS => 16,
            QuantType::IQ2XS => 17,
            QuantType::IQ3XXS => 18,
            QuantType::IQ1S => 19,
            QuantType::IQ3S => 21,
            QuantType::IQ2S => 22,
            QuantType::IQ1M => 29,
        }
    }

    pub fn from_ggml_type(id: u32) -> Option<Self> {
        Self::every().find(|t| t.ggml_type() == id)
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
            QuantType::IQ2XXS => "iq2_xxs",
            QuantType::IQ2XS => "iq2_xs",
            QuantType::IQ2S => "iq2_s",
            QuantType::IQ3XXS => "iq3_xxs",
            QuantType::IQ3S => "iq3_s",
            QuantType::IQ1S => "iq1_s",
            QuantType::IQ1M => "iq1_m",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::every().find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

pub(crate) fn put_f16(b: &mut [u8], i: usize, v: f32) {
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
