//! Q4_K and Q5_0 GEMM for prefill on AVX2 without VNNI: tokens along the vector lanes.
//!
//! The group kernels of [`crate::repack`] hold 8 weight bytes of each of 4 rows in a register
//! and broadcast each token's 8 activation bytes against it: per 32 byte products one
//! broadcast, one `vpmaddubsw` and one i16 add, plus the weights' unpacking and scales; on
//! Zen 3 both the broadcasts and the weight loads go through the two vector load ports
//! (llvm-mca, znver3: ~1.25 vector loads per `vpmaddubsw`), which bounds that kernel. Here the
//! activations are packed once per matmul so that one register holds 4 bytes of each of 8
//! tokens ([`Panels`]); a group's weights are decoded once per call to one byte per value, and
//! one broadcast of 4 bytes of a row meets two such registers (16 tokens). Two rows × 16
//! tokens per step: 4 loads for 4 `vpmaddubsw`, no spills.
//!
//! Integer bounds (activations are int8 with |a| ≤ 127):
//! - Q4_K: a `vpmaddubsw` lane holds 2 products of a 4-bit weight, 8 steps make a 32-value
//!   sub-block (16 × 15 × 127 < 2¹⁵); the sub-block's 6-bit scale pairs the lanes into i32
//!   with one `vpmaddwd`, summed over the 256-value super-block (< 2³¹). The activations carry
//!   one scale per super-block ([`QuantizedActivations::per_super_block`]), so the float work
//!   is once per super-block, row and 8 tokens.
//! - Q5_0 (stored as value + 16, 0..31): 4 steps fit in i16 (8 × 31 × 127 < 2¹⁵), then a
//!   `vpmaddwd` by ones widens them; the +16 comes off as 16 × the activations' block sum, and
//!   the float work is once per 32-value block (Q5_0's own scale).

use crate::quant::{QuantizedActivations, QK, QK_K};
use crate::repack::{self, Layout, GROUP, Q4K_SUPER_BYTES, Q5_0_BLOCK_BYTES, Q5_0_DECODED_BLOCK};

/// Tokens per packed panel (one AVX2 register of 4-byte groups).
const PANEL: usize = 8;

/// Fewest tokens worth packing for (`DEEPSEEK_QGEMM_MIN_TOKENS` overrides, for measuring).
/// Below it the group kernels do as well: the weights' decoding is paid per group and call,
/// and a panel's missing tokens are multiplied anyway.
pub fn min_tokens() -> usize {
    crate::tuning::get().qgemm_min_tokens.value as usize
}

/// Whether this CPU takes the kernels: AVX2 (with FMA and F16C) and no 512-bit VNNI, whose
/// group kernels do the products in one instruction.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::quant::byte_dot_isa() == crate::quant::ByteDotIsa::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Quantized activations `[n, cols]` repacked for [`gemm_rows`] against one layout's
/// weights, in panels of 8 tokens (the last one padded with zeros):
/// - `qs[p][k / 4][t][4]`: 4 values of each token per 32 bytes;
/// - `d[p][s][t]`: the scale of super-block `s` (Q4_K) or block `s` (Q5_0);
/// - Q4_K: `pair_sums[p][sb][j / 2][t][2]`, the sums of 32-value sub-blocks `j` and `j + 1`
///   as i16 (|sum| ≤ 32 × 127), so one `vpmaddwd` against a row's mins takes two sub-blocks;
/// - Q5_0: `offset_sums[p][b][t]`, 16 × block `b`'s sum (what the weights' +16 adds).
pub struct Panels {
    layout: Layout,
    n: usize,
    cols: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    pair_sums: Vec<i16>,
    offset_sums: Vec<i32>,
}

impl Panels {
    /// Packs `q` for `layout`'s weights when this CPU takes the kernels, the layout has one
    /// (Q4_Kx8, Q5_0x8) and there are at least [`min_tokens`] tokens; `None` otherwise.
    pub fn new(layout: Layout, q: &QuantizedActivations, n: usize) -> Option<Self> {
        if !available() || n < min_tokens() || !matches!(layout, Layout::Q4Kx8 | Layout::Q5_0x8) {
            return None;
        }
        Some(Self::pack(layout, q, n))
    }

    fn pack(layout: Layout, q: &QuantizedActivations, n: usize) -> Self {
        let cols = q.cols;
        let block = match layout {
            Layout::Q4Kx8 => QK_K,
            Layout::Q5_0x8 => QK,
            Layout::Q8_0x8
            | Layout::K16x8(_)
            | Layout::Q5Kx8
            | Layout::IQ4x8(_)
            | Layout::Q5_1x8 => {
                unreachable!("no panels for {layout:?}")
            }
        };
        assert_eq!(
            q.scale_block, block,
            "{layout:?} GEMM needs activations with one scale per {block} values"
        );
        assert_eq!(q.qs.len(), n * cols, "GEMM: activations are not [n, cols]");
        let (panels, ns) = (n.div_ceil(PANEL), cols / block);
        let mut x = Panels {
            layout,
            n,
            cols,
            qs: vec![0; panels * cols * PANEL],
            d: vec![0.0; panels * ns * PANEL],
            pair_sums: Vec::new(),
            offset_sums: Vec::new(),
        };
        match layout {
            Layout::Q4Kx8 => x.pair_sums = vec![0; panels * ns * 8 * PANEL],
            _ => x.offset_sums = vec![0; panels * ns * PANEL],
        }
        for t in 0..n {
            let (p, lane) = (t / PANEL, t % PANEL);
            let (ds, ss, xs) = q.row(t);
            let dst = &mut x.qs[p * cols * PANEL..][..cols * PANEL];
            for (k4, x4) in xs.chunks_exact(4).enumerate() {
                dst[k4 * 4 * PANEL + lane * 4..][..4].copy_from_slice(x4);
            }
            for s in 0..ns {
                x.d[(p * ns + s) * PANEL + lane] = ds[s * block / QK];
                match layout {
                    Layout::Q4Kx8 => {
                        for j in 0..8 {
                            let i = ((p * ns + s) * 4 + j / 2) * 2 * PANEL + lane * 2 + j % 2;
                            x.pair_sums[i] = ss[s * 8 + j] as i16;
                        }
                    }
                    _ => x.offset_sums[(p * ns + s) * PANEL + lane] = 16 * ss[s],
                }
            }
        }
        x
    }
}

/// `out[t * ld + r] = Σ_k w[r0 + r][k] · x[t][k]` for rows `r0..r0 + nr` of repacked `data`
/// (groups of 8 rows of `x`'s layout, `cols` wide) and every token of `x`.
pub fn gemm_rows(
    data: &[u8],
    cols: usize,
    r0: usize,
    nr: usize,
    x: &Panels,
    out: &mut [f32],
    ld: usize,
) {
    assert_eq!(
        x.cols, cols,
        "GEMM: activation width does not match the weights"
    );
    assert!(
        r0.is_multiple_of(GROUP) && nr.is_multiple_of(GROUP),
        "GEMM: rows must be whole groups of 8"
    );
    let gb = x.layout.group_bytes(cols);
    assert!(
        data.len() >= (r0 + nr) / GROUP * gb,
        "GEMM: weights too short"
    );
    assert!(
        x.n == 0 || nr == 0 || out.len() >= (x.n - 1) * ld + nr,
        "GEMM: output too short"
    );
    let mut dec = DecodedGroup::new(x.layout, cols);
    for gi in 0..nr / GROUP {
        dec.decode(&data[(r0 / GROUP + gi) * gb..][..gb]);
        group_against_panels(&dec, x, gi * GROUP, out, ld);
    }
}

/// One group decoded for the kernels: the weights one byte per value, in an order where 4
/// consecutive values of a row are 4 consecutive bytes, and the scales as the kernels take
/// them.
struct DecodedGroup {
    layout: Layout,
    /// Super-blocks (Q4_K) or blocks (Q5_0).
    blocks: usize,
    /// Q4_K: per super-block 2048 bytes, for 32-byte chunk c, 8-byte column group kk, nibble
    /// half h (sub-block 2c + h), the 8 bytes (0..15) of rows 0..8. Q5_0:
    /// [`repack::decode_q5_0_group`]'s bytes (0..31).
    q: Vec<u8>,
    /// `[block][row]`: Q4_K's `d`, Q5_0's scale.
    d: Vec<f32>,
    /// Q4_K: `[sb][row]`.
    dmin: Vec<f32>,
    /// Q4_K: `[sb][j][row]`, the 6-bit scale twice per u32 (an i16 pair for `vpmaddwd`).
    scales: Vec<u32>,
    /// Q4_K: `[sb][j / 2][row]`, the mins of sub-blocks `j` and `j + 1` as an i16 pair.
    mins: Vec<u32>,
}

/// Decoded bytes of one Q4_K super-block of a group.
const DECODED_SUPER: usize = GROUP * QK_K;

impl DecodedGroup {
    fn new(layout: Layout, cols: usize) -> Self {
        let (blocks, bytes) = match layout {
            Layout::Q4Kx8 => (cols / QK_K, DECODED_SUPER),
            _ => (cols / QK, Q5_0_DECODED_BLOCK),
        };
        let k = layout == Layout::Q4Kx8;
        DecodedGroup {
            layout,
            blocks,
            q: vec![0; blocks * bytes],
            d: vec![0.0; blocks * GROUP],
            dmin: vec![0.0; if k { blocks * GROUP } else { 0 }],
            scales: vec![0; if k { blocks * 8 * GROUP } else { 0 }],
            mins: vec![0; if k { blocks * 4 * GROUP } else { 0 }],
        }
    }

    fn decode(&mut self, group: &[u8]) {
        match self.layout {
            Layout::Q4Kx8 => self.decode_q4k(group),
            _ => {
                repack::decode_q5_0_group(group, self.blocks * QK, &mut self.q);
                for b in 0..self.blocks {
                    let src = &group[b * Q5_0_BLOCK_BYTES..][..2 * GROUP];
                    f16x8_to_f32(src, &mut self.d[b * GROUP..][..GROUP]);
                }
            }
        }
    }

    fn decode_q4k(&mut self, group: &[u8]) {
        for sb in 0..self.blocks {
            let src = &group[sb * Q4K_SUPER_BYTES..][..Q4K_SUPER_BYTES];
            f16x8_to_f32(&src[..16], &mut self.d[sb * GROUP..][..GROUP]);
            f16x8_to_f32(&src[16..32], &mut self.dmin[sb * GROUP..][..GROUP]);
            for r in 0..GROUP {
                for j in 0..8 {
                    let sc = src[32 + j * 8 + r] as u32;
                    self.scales[(sb * 8 + j) * GROUP + r] = sc | sc << 16;
                }
                for jp in 0..4 {
                    let (m0, m1) = (src[96 + 2 * jp * 8 + r], src[96 + (2 * jp + 1) * 8 + r]);
                    self.mins[(sb * 4 + jp) * GROUP + r] = m0 as u32 | (m1 as u32) << 16;
                }
            }
            // 64 source bytes (8 rows × 8) per chunk and column group → 64 low, 64 high.
            let (qs, dst) = (
                &src[160..],
                &mut self.q[sb * DECODED_SUPER..][..DECODED_SUPER],
            );
            for (s, o) in qs.chunks_exact(64).zip(dst.chunks_exact_mut(128)) {
                let (lo, hi) = o.split_at_mut(64);
                let (s, lo, hi): (&[u8; 64], &mut [u8; 64], &mut [u8; 64]) = (
                    s.try_into().expect("64"),
                    lo.try_into().expect("64"),
                    hi.try_into().expect("64"),
                );
                for k in 0..64 {
                    lo[k] = s[k] & 0x0F;
                    hi[k] = s[k] >> 4;
                }
            }
        }
    }

    /// Offset in `q` of weights `4s..4s + 4` of row `r` in block `b` (Q4_K: sub-block `j` of
    /// super-block `b`, `s` in 0..8; Q5_0: `j` = 0, `s` in 0..8).
    fn offset(&self, b: usize, j: usize, s: usize, r: usize) -> usize {
        match self.layout {
            Layout::Q4Kx8 => {
                b * DECODED_SUPER
                    + (j / 2) * 512
                    + (s / 2) * 128
                    + (j % 2) * 64
                    + r * 8
                    + (s % 2) * 4
            }
            _ => b * Q5_0_DECODED_BLOCK + q5_0_offset(s, r),
        }
    }
}

/// Offset within a decoded Q5_0 block of weights `4s..4s + 4` of row `r`: columns c < 16 sit
/// at 8-column group c / 8, the rest 32 bytes further in group (c - 16) / 8; rows 4h..4h+4
/// take 64 bytes per group.
#[inline(always)]
fn q5_0_offset(s: usize, r: usize) -> usize {
    let c = 4 * s;
    let group = if c < 16 {
        (c / 8) * 128
    } else {
        ((c - 16) / 8) * 128 + 32
    };
    group + (r / 4) * 64 + (r % 4) * 8 + c % 8
}

/// Eight little-endian f16 values as f32.
fn f16x8_to_f32(src: &[u8], dst: &mut [f32]) {
    assert!(src.len() >= 2 * GROUP && dst.len() >= GROUP);
    #[cfg(target_arch = "x86_64")]
    if crate::tier::at_least(crate::tier::Tier::Avx2) {
        // SAFETY: F16C detected; lengths checked above.
        unsafe { x86::f16x8_to_f32(src.as_ptr(), dst.as_mut_ptr()) };
        return;
    }
    for (o, h) in dst[..GROUP]
        .iter_mut()
        .zip(src[..2 * GROUP].chunks_exact(2))
    {
        *o = half::f16::from_le_bytes([h[0], h[1]]).to_f32();
    }
}

/// One decoded group against every panel; `out` columns `c0..c0 + 8`.
fn group_against_panels(dec: &DecodedGroup, x: &Panels, c0: usize, out: &mut [f32], ld: usize) {
    let panels = x.n.div_ceil(PANEL);
    let mut p = 0;
    while p < panels {
        let v = (panels - p).min(2);
        // [panel][token][row]
        let mut acc = [[[0.0f32; GROUP]; PANEL]; 2];
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `available` (AVX2, FMA) is the only way a `Panels` is made outside the
            // tests, which check it too; the offsets stay inside the buffers as sized in
            // `pack` and `DecodedGroup::new`.
            unsafe {
                match (dec.layout, v) {
                    (Layout::Q4Kx8, 2) => x86::q4k_panels::<2>(dec, x, p, &mut acc),
                    (Layout::Q4Kx8, _) => x86::q4k_panels::<1>(dec, x, p, &mut acc),
                    (_, 2) => x86::q5_0_panels::<2>(dec, x, p, &mut acc),
                    _ => x86::q5_0_panels::<1>(dec, x, p, &mut acc),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        plain_panels(dec, x, p, v, &mut acc);
        for (i, acc) in acc.iter().enumerate().take(v) {
            let t0 = (p + i) * PANEL;
            for (lane, rows) in acc.iter().enumerate().take(x.n - t0) {
                out[(t0 + lane) * ld + c0..][..GROUP].copy_from_slice(rows);
            }
        }
        p += v;
    }
}

/// The kernels' arithmetic in plain code, for the tests and for CPUs without the kernels.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn plain_panels(
    dec: &DecodedGroup,
    x: &Panels,
    p0: usize,
    v: usize,
    acc: &mut [[[f32; GROUP]; PANEL]; 2],
) {
    let nb = dec.blocks;
    let act = |p: usize, col: usize, lane: usize| {
        x.qs[p * x.cols * PANEL + (col / 4) * 4 * PANEL + lane * 4 + col % 4] as i32
    };
    let w =
        |b: usize, j: usize, k: usize, r: usize| dec.q[dec.offset(b, j, k / 4, r) + k % 4] as i32;
    for (i, acc) in acc.iter_mut().enumerate().take(v) {
        let p = p0 + i;
        for (lane, acc) in acc.iter_mut().enumerate() {
            for (r, y) in acc.iter_mut().enumerate() {
                *y = 0.0;
                for b in 0..nb {
                    let ad = x.d[(p * nb + b) * PANEL + lane];
                    if dec.layout == Layout::Q5_0x8 {
                        let dot: i32 = (0..QK)
                            .map(|k| w(b, 0, k, r) * act(p, b * QK + k, lane))
                            .sum();
                        let dot = dot - x.offset_sums[(p * nb + b) * PANEL + lane];
                        *y += dot as f32 * (dec.d[b * GROUP + r] * ad);
                        continue;
                    }
                    let (mut isb, mut imin) = (0i32, 0i32);
                    for j in 0..8 {
                        let isum: i32 = (0..QK)
                            .map(|k| w(b, j, k, r) * act(p, b * QK_K + j * QK + k, lane))
                            .sum();
                        isb += isum * (dec.scales[(b * 8 + j) * GROUP + r] & 0xFFFF) as i32;
                        let m = dec.mins[(b * 4 + j / 2) * GROUP + r] >> (16 * (j % 2)) & 0xFFFF;
                        let s =
                            x.pair_sums[((p * nb + b) * 4 + j / 2) * 2 * PANEL + lane * 2 + j % 2];
                        imin += m as i32 * s as i32;
                    }
                    *y += isb as f32 * (dec.d[b * GROUP + r] * ad)
                        - imin as f32 * (dec.dmin[b * GROUP + r] * ad);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// An 8 × 8 transpose: `r[i]` lane `j` → result `j` lane `i`.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn f16x8_to_f32(src: *const u8, dst: *mut f32) {
        _mm256_storeu_ps(dst, _mm256_cvtph_ps(_mm_loadu_si128(src as *const __m128i)));
    }

    /// `accv[row][panel]` (8 tokens each) into `acc[panel][token][row]`.
    #[inline(always)]
    unsafe fn store_transposed<const V: usize>(
        accv: &[[__m256; 2]; GROUP],
        acc: &mut [[[f32; GROUP]; PANEL]; 2],
    ) {
        for i in 0..V {
            let rows = [
                accv[0][i], accv[1][i], accv[2][i], accv[3][i], accv[4][i], accv[5][i], accv[6][i],
                accv[7][i],
            ];
            let tokens = transpose8(rows);
            for (lane, v) in tokens.iter().enumerate() {
                _mm256_storeu_ps(acc[i][lane].as_mut_ptr(), *v);
            }
        }
    }

    /// Makes a step's sums pass through an empty `asm!`, so the next step's products wait for
    /// all of this step's. Without it LLVM reassociated each sum into a tree over the steps
    /// and computed them one sum at a time, keeping every step's broadcasts and activations
    /// live and spilling them: vector loads are what bounds these kernels (two per cycle).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn step_barrier<const V: usize>(isum: &mut [[__m256i; V]; 2]) {
        if V == 2 {
            std::arch::asm!(
                "/* {0} {1} {2} {3} */",
                inout(ymm_reg) isum[0][0],
                inout(ymm_reg) isum[0][V - 1],
                inout(ymm_reg) isum[1][0],
                inout(ymm_reg) isum[1][V - 1],
                options(pure, nomem, nostack, preserves_flags)
            );
        } else {
            std::arch::asm!(
                "/* {0} {1} */",
                inout(ymm_reg) isum[0][0],
                inout(ymm_reg) isum[1][0],
                options(pure, nomem, nostack, preserves_flags)
            );
        }
    }

    /// One step: 4 values of rows `w_at`, `w_at + 8` (decoded bytes) against the panels'
    /// 4 values at `qa[i] + off`, into `isum[row][panel]`.
    #[inline(always)]
    unsafe fn step<const V: usize>(
        w_at: *const u8,
        qa: &[*const i8; V],
        off: usize,
        isum: &mut [[__m256i; V]; 2],
    ) {
        let mut a = [_mm256_setzero_si256(); V];
        for (i, ai) in a.iter_mut().enumerate() {
            *ai = _mm256_loadu_si256(qa[i].add(off) as *const __m256i);
        }
        for (ri, isr) in isum.iter_mut().enumerate() {
            let w = _mm256_set1_epi32((w_at.add(ri * 8) as *const i32).read_unaligned());
            for i in 0..V {
                isr[i] = _mm256_add_epi16(isr[i], _mm256_maddubs_epi16(w, a[i]));
            }
        }
        step_barrier(isum);
    }

    /// The 8 rows of a decoded Q4_Kx8 group against panels `p0..p0 + V` (`V` of 1 or 2) into
    /// `acc[panel][token][row]`.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q4k_panels<const V: usize>(
        dec: &DecodedGroup,
        x: &Panels,
        p0: usize,
        acc: &mut [[[f32; GROUP]; PANEL]; 2],
    ) {
        let (cols, nsb) = (x.cols, dec.blocks);
        let mut accv = [[_mm256_setzero_ps(); 2]; GROUP];
        for sb in 0..nsb {
            // The super-block's activations (4 KiB for two panels) stay in L1 while the four
            // row pairs pass over them.
            let mut qa = [std::ptr::null::<i8>(); V];
            for (i, q) in qa.iter_mut().enumerate() {
                *q =
                    x.qs.as_ptr()
                        .add((p0 + i) * cols * PANEL + sb * QK_K * PANEL);
            }
            for rp in 0..GROUP / 2 {
                let r = 2 * rp;
                let mut isb = [[_mm256_setzero_si256(); V]; 2];
                for j in 0..8 {
                    let mut isum = [[_mm256_setzero_si256(); V]; 2];
                    for s in 0..8 {
                        let w_at = dec.q.as_ptr().add(dec.offset(sb, j, s, r));
                        step(w_at, &qa, (j * QK + 4 * s) * PANEL, &mut isum);
                    }
                    for ri in 0..2 {
                        let sc = _mm256_set1_epi32(
                            *dec.scales.get_unchecked((sb * 8 + j) * GROUP + r + ri) as i32,
                        );
                        for i in 0..V {
                            isb[ri][i] =
                                _mm256_add_epi32(isb[ri][i], _mm256_madd_epi16(isum[ri][i], sc));
                        }
                    }
                }
                for ri in 0..2 {
                    let row = r + ri;
                    let dv = _mm256_set1_ps(*dec.d.get_unchecked(sb * GROUP + row));
                    let dm = _mm256_set1_ps(*dec.dmin.get_unchecked(sb * GROUP + row));
                    for i in 0..V {
                        let pi = (p0 + i) * nsb + sb;
                        let ad = _mm256_loadu_ps(x.d.as_ptr().add(pi * PANEL));
                        let mut imin = _mm256_setzero_si256();
                        for jp in 0..4 {
                            let m = _mm256_set1_epi32(
                                *dec.mins.get_unchecked((sb * 4 + jp) * GROUP + row) as i32,
                            );
                            let s = _mm256_loadu_si256(
                                x.pair_sums.as_ptr().add((pi * 4 + jp) * 2 * PANEL)
                                    as *const __m256i,
                            );
                            imin = _mm256_add_epi32(imin, _mm256_madd_epi16(s, m));
                        }
                        let a = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(isb[ri][i]),
                            _mm256_mul_ps(dv, ad),
                            accv[row][i],
                        );
                        accv[row][i] =
                            _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(dm, ad), a);
                    }
                }
            }
        }
        store_transposed::<V>(&accv, acc);
    }

    /// The 8 rows of a decoded Q5_0x8 group against panels `p0..p0 + V` (`V` of 1 or 2) into
    /// `acc[panel][token][row]`.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q5_0_panels<const V: usize>(
        dec: &DecodedGroup,
        x: &Panels,
        p0: usize,
        acc: &mut [[[f32; GROUP]; PANEL]; 2],
    ) {
        let (cols, nb) = (x.cols, dec.blocks);
        let ones = _mm256_set1_epi16(1);
        let mut accv = [[_mm256_setzero_ps(); 2]; GROUP];
        for b in 0..nb {
            let mut qa = [std::ptr::null::<i8>(); V];
            for (i, q) in qa.iter_mut().enumerate() {
                *q = x.qs.as_ptr().add((p0 + i) * cols * PANEL + b * QK * PANEL);
            }
            for rp in 0..GROUP / 2 {
                let r = 2 * rp;
                let mut isb = [[_mm256_setzero_si256(); V]; 2];
                for half in 0..2 {
                    let mut isum = [[_mm256_setzero_si256(); V]; 2];
                    for s in 4 * half..4 * half + 4 {
                        let w_at = dec.q.as_ptr().add(dec.offset(b, 0, s, r));
                        step(w_at, &qa, 4 * s * PANEL, &mut isum);
                    }
                    for ri in 0..2 {
                        for i in 0..V {
                            isb[ri][i] =
                                _mm256_add_epi32(isb[ri][i], _mm256_madd_epi16(isum[ri][i], ones));
                        }
                    }
                }
                for ri in 0..2 {
                    let row = r + ri;
                    let dv = _mm256_set1_ps(*dec.d.get_unchecked(b * GROUP + row));
                    for i in 0..V {
                        let pi = ((p0 + i) * nb + b) * PANEL;
                        let ad = _mm256_loadu_ps(x.d.as_ptr().add(pi));
                        let os =
                            _mm256_loadu_si256(x.offset_sums.as_ptr().add(pi) as *const __m256i);
                        let dot = _mm256_cvtepi32_ps(_mm256_sub_epi32(isb[ri][i], os));
                        accv[row][i] = _mm256_fmadd_ps(dot, _mm256_mul_ps(dv, ad), accv[row][i]);
                    }
                }
            }
        }
        store_transposed::<V>(&accv, acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row};

    /// The kernel (and its plain form) against dequantize-then-multiply, for `n` tokens.
    fn check(layout: Layout, rows: usize, cols: usize, n: usize) {
        let ty = layout.plain();
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| match i % 37 {
                0 => 0.0,
                1 => -1.0,
                _ => ((i * 53) % 97) as f32 / 48.0 - 1.0 + (i / cols) as f32 * 0.01,
            })
            .collect();
        let rb = ty.row_bytes(cols);
        let mut plain = vec![0u8; rows * rb];
        for (r, o) in plain.chunks_mut(rb).enumerate() {
            quantize_row(ty, &w[r * cols..(r + 1) * cols], o);
        }
        let packed = match layout {
            Layout::Q4Kx8 => repack::repack_q4_k(&plain, rows, cols),
            _ => repack::repack_q5_0(&plain, rows, cols),
        };
        // Activations with blocks of very different sizes, and extreme values.
        let x: Vec<f32> = (0..n * cols)
            .map(|i| {
                let v = ((i * 17) % 31) as f32 / 15.0 - 1.0;
                if (i / QK_K) % 3 == 1 {
                    v * 40.0
                } else {
                    v
                }
            })
            .collect();
        let q = match layout {
            Layout::Q4Kx8 => QuantizedActivations::per_super_block(&x, cols),
            _ => QuantizedActivations::new(&x, cols),
        };
        let xq: Vec<f32> = (0..x.len()).map(|i| q.d[i / QK] * q.qs[i] as f32).collect();
        let panels = Panels::pack(layout, &q, n);
        // The exact product and, for the tolerance, Σ|w·x| (f32 rounding of the large
        // block terms, not the result, sets the error).
        let mut want = vec![0.0f32; n * rows];
        let mut scale = vec![0.0f32; n * rows];
        let mut deq = vec![0.0; cols];
        for r in 0..rows {
            dequantize_row(ty, &plain[r * rb..(r + 1) * rb], &mut deq);
            for t in 0..n {
                let xt = &xq[t * cols..(t + 1) * cols];
                want[t * rows + r] = deq.iter().zip(xt).map(|(a, b)| a * b).sum();
                scale[t * rows + r] = deq.iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
            }
        }
        let close = |got: &[f32], ld: usize, r0: usize, what: &str| {
            for t in 0..n {
                for r in r0..rows {
                    let (g, w, s) = (got[t * ld + r], want[t * rows + r], scale[t * rows + r]);
                    assert!(
                        (g - w).abs() < 1e-5 * (1.0 + s),
                        "{layout:?} {what}: token {t} row {r}: {g} vs {w}"
                    );
                }
            }
        };
        // Plain form, group by group.
        let gb = layout.group_bytes(cols);
        let mut got = vec![f32::NAN; n * rows];
        let mut dec = DecodedGroup::new(layout, cols);
        for g in 0..rows / GROUP {
            dec.decode(&packed[g * gb..][..gb]);
            let panels_n = n.div_ceil(PANEL);
            let mut p = 0;
            while p < panels_n {
                let v = (panels_n - p).min(2);
                let mut acc = [[[0.0f32; GROUP]; PANEL]; 2];
                plain_panels(&dec, &panels, p, v, &mut acc);
                for (i, acc) in acc.iter().enumerate().take(v) {
                    for (lane, rows_of) in acc.iter().enumerate() {
                        let t = (p + i) * PANEL + lane;
                        if t < n {
                            got[t * rows + g * GROUP..][..GROUP].copy_from_slice(rows_of);
                        }
                    }
                }
                p += v;
            }
        }
        close(&got, rows, 0, "plain");
        if available() {
            let mut got = vec![f32::NAN; n * rows];
            gemm_rows(&packed, cols, 0, rows, &panels, &mut got, rows);
            close(&got, rows, 0, "kernel");
            // Rows 8.. only (an offset start), into a wider output stride.
            let ld = rows + 3;
            let mut wide = vec![f32::NAN; n * ld];
            gemm_rows(
                &packed,
                cols,
                GROUP,
                rows - GROUP,
                &panels,
                &mut wide[GROUP..],
                ld,
            );
            close(&wide, ld, GROUP, "offset");
        }
    }

    #[test]
    fn q4k_gemm_equals_dequantized_product() {
        check(Layout::Q4Kx8, 16, 256, 16);
        check(Layout::Q4Kx8, 16, 512, 17);
        check(Layout::Q4Kx8, 24, 768, 8);
        check(Layout::Q4Kx8, 16, 1536, 40);
        check(Layout::Q4Kx8, 8, 256, 1);
    }

    #[test]
    fn q5_0_gemm_equals_dequantized_product() {
        check(Layout::Q5_0x8, 16, 1408, 16);
        check(Layout::Q5_0x8, 16, 64, 17);
        check(Layout::Q5_0x8, 24, 96, 8);
        check(Layout::Q5_0x8, 16, 256, 40);
    }
}
