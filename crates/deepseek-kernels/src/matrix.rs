//! Weight matrices in their stored format (f32, bf16, f16), owned or memory-mapped, and the
//! matmul over them with f32 accumulation.

use std::sync::Arc;

use rayon::prelude::*;

use crate::simd;

/// Storage format of a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }
}

/// A typed read-only buffer: either owned, or a window of a memory-mapped file (zero copy).
#[derive(Clone)]
pub enum Buffer<T: Copy + 'static> {
    Owned(Arc<Vec<T>>),
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
}

impl<T: Copy + 'static> Buffer<T> {
    /// A window of `len` elements at byte `offset` of `map`. Copies when the window is not aligned
    /// for `T` (safetensors aligns its data section, but we do not rely on it).
    pub fn from_map(map: Arc<memmap2::Mmap>, offset: usize, len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        assert!(
            offset + bytes <= map.len(),
            "buffer past the end of the mapping"
        );
        let ptr = map[offset..].as_ptr();
        if (ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
            Buffer::Mapped { map, offset, len }
        } else {
            let mut v = Vec::<T>::with_capacity(len);
            // SAFETY: v has capacity for `bytes` bytes; source range checked above.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, v.as_mut_ptr() as *mut u8, bytes);
                v.set_len(len);
            }
            Buffer::Owned(Arc::new(v))
        }
    }

    pub fn as_slice(&self) -> &[T] {
        match self {
            Buffer::Owned(v) => v,
            Buffer::Mapped { map, offset, len } => {
                // SAFETY: alignment and bounds were checked in `from_map`; T is plain data.
                unsafe { std::slice::from_raw_parts(map[*offset..].as_ptr() as *const T, *len) }
            }
        }
    }
}

impl<T: Copy + 'static> From<Vec<T>> for Buffer<T> {
    fn from(v: Vec<T>) -> Self {
        Buffer::Owned(Arc::new(v))
    }
}

/// Matrix elements in one of the supported formats. bf16 and f16 are kept as raw `u16` bits.
#[derive(Clone)]
pub enum MatrixData {
    F32(Buffer<f32>),
    BF16(Buffer<u16>),
    F16(Buffer<u16>),
}

/// A row-major `[rows, cols]` weight, rows being output features (PyTorch `Linear` layout).
#[derive(Clone)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: MatrixData,
}

impl Matrix {
    pub fn from_f32(rows: usize, cols: usize, v: Vec<f32>) -> Self {
        assert_eq!(v.len(), rows * cols);
        Matrix {
            rows,
            cols,
            data: MatrixData::F32(v.into()),
        }
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            MatrixData::F32(_) => DType::F32,
            MatrixData::BF16(_) => DType::BF16,
            MatrixData::F16(_) => DType::F16,
        }
    }

    pub fn size_bytes(&self) -> usize {
        self.rows * self.cols * self.dtype().size_bytes()
    }

    /// Rows `start..start+count` as a matrix sharing this one's storage.
    pub fn row_range(&self, start: usize, count: usize) -> Matrix {
        assert!(start + count <= self.rows);
        let (o, n) = (start * self.cols, count * self.cols);
        let data = match &self.data {
            MatrixData::F32(b) => MatrixData::F32(sub(b, o, n)),
            MatrixData::BF16(b) => MatrixData::BF16(sub(b, o, n)),
            MatrixData::F16(b) => MatrixData::F16(sub(b, o, n)),
        };
        Matrix {
            rows: count,
            cols: self.cols,
            data,
        }
    }

    /// One row converted to f32.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.data {
            MatrixData::F32(b) => out.copy_from_slice(&b.as_slice()[r * c..(r + 1) * c]),
            MatrixData::BF16(b) => simd::bf16_to_f32(&b.as_slice()[r * c..(r + 1) * c], out),
            MatrixData::F16(b) => {
                for (o, &h) in out.iter_mut().zip(&b.as_slice()[r * c..(r + 1) * c]) {
                    *o = half::f16::from_bits(h).to_f32();
                }
            }
        }
    }

    /// The whole matrix as f32 (for small weights used in f32, e.g. the router, and for tests).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.rows * self.cols];
        for (r, row) in v.chunks_mut(self.cols.max(1)).enumerate() {
            self.row_f32(r, row);
        }
        v
    }

    /// `[cols, rows]` copy in f32.
    pub fn transposed_f32(&self) -> Matrix {
        let src = self.to_f32();
        let mut t = vec![0.0; src.len()];
        for r in 0..self.rows {
            for c in 0..self.cols {
                t[c * self.rows + r] = src[r * self.cols + c];
            }
        }
        Matrix::from_f32(self.cols, self.rows, t)
    }
}

fn sub<T: Copy + 'static>(b: &Buffer<T>, offset: usize, len: usize) -> Buffer<T> {
    match b {
        Buffer::Owned(v) => Buffer::Owned(Arc::new(v[offset..offset + len].to_vec())),
        Buffer::Mapped {
            map,
            offset: o,
            len: l,
        } => {
            assert!(offset + len <= *l);
            Buffer::Mapped {
                map: map.clone(),
                offset: o + offset * std::mem::size_of::<T>(),
                len,
            }
        }
    }
}

/// Tokens processed together against one weight row: the row is converted once and used for all.
const TOKEN_TILE: usize = 4;
/// Tokens per outer block, so the activations of a block stay in cache while all rows stream by.
const TOKEN_BLOCK: usize = 64;

pub(crate) fn matmul(w: &Matrix, x: &[f32], n: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(
        x.len(),
        n * cols,
        "matmul: activation length does not match [n, cols]"
    );
    assert_eq!(
        out.len(),
        n * rows,
        "matmul: output length does not match [n, rows]"
    );
    if n == 0 || rows == 0 {
        return;
    }
    // Split the output rows into chunks, one task each; enough chunks to balance, big enough to
    // amortise scheduling (a chunk streams at least ~64 KiB of weights).
    let row_bytes = cols * w.dtype().size_bytes();
    let min_rows = (65536 / row_bytes.max(1)).clamp(1, rows);
    let threads = rayon::current_num_threads();
    let chunk = rows.div_ceil(threads * 4).max(min_rows);
    if n == 1 {
        // GEMV: each chunk writes its own rows of the single output row.
        out.par_chunks_mut(chunk).enumerate().for_each(|(ci, o)| {
            let r0 = ci * chunk;
            rows_kernel(w, r0, o.len(), x, 1, o, o.len());
        });
        return;
    }
    // GEMM: outputs for a row chunk are strided across tokens, so compute into a per-chunk
    // [tokens, chunk] scratch and scatter.
    let n_chunks = rows.div_ceil(chunk);
    let parts: Vec<(usize, Vec<f32>)> = (0..n_chunks)
        .into_par_iter()
        .map(|ci| {
            let r0 = ci * chunk;
            let nr = chunk.min(rows - r0);
            let mut o = vec![0.0f32; n * nr];
            rows_kernel(w, r0, nr, x, n, &mut o, nr);
            (r0, o)
        })
        .collect();
    for (r0, o) in parts {
        let nr = o.len() / n;
        for t in 0..n {
            out[t * rows + r0..t * rows + r0 + nr].copy_from_slice(&o[t * nr..(t + 1) * nr]);
        }
    }
}

/// Rows `r0..r0+nr` of `w` against `n` tokens; `out[t * ld + r]`.
fn rows_kernel(w: &Matrix, r0: usize, nr: usize, x: &[f32], n: usize, out: &mut [f32], ld: usize) {
    let cols = w.cols;
    let mut tb = 0;
    while tb < n {
        let tb_end = (tb + TOKEN_BLOCK).min(n);
        for r in 0..nr {
            let row = r0 + r;
            let mut t = tb;
            while t < tb_end {
                let k = (tb_end - t).min(TOKEN_TILE);
                let mut acc = [0.0f32; TOKEN_TILE];
                let xs: [&[f32]; TOKEN_TILE] = std::array::from_fn(|i| {
                    if i < k {
                        &x[(t + i) * cols..(t + i + 1) * cols]
                    } else {
                        &x[t * cols..(t + 1) * cols]
                    }
                });
                match &w.data {
                    MatrixData::F32(b) => simd::dot_f32_multi(
                        &b.as_slice()[row * cols..(row + 1) * cols],
                        &xs[..k],
                        &mut acc[..k],
                    ),
                    MatrixData::BF16(b) => simd::dot_bf16_multi(
                        &b.as_slice()[row * cols..(row + 1) * cols],
                        &xs[..k],
                        &mut acc[..k],
                    ),
                    MatrixData::F16(b) => simd::dot_f16_multi(
                        &b.as_slice()[row * cols..(row + 1) * cols],
                        &xs[..k],
                        &mut acc[..k],
                    ),
                }
                for i in 0..k {
                    out[(t + i) * ld + r] = acc[i];
                }
                t += k;
            }
        }
        tb = tb_end;
    }
}

/// Plain reference: convert everything to f32 and multiply in f64.
pub fn matmul_reference(w: &Matrix, x: &[f32], n: usize) -> Vec<f32> {
    let wf = w.to_f32();
    let mut out = vec![0.0; n * w.rows];
    for t in 0..n {
        for r in 0..w.rows {
            let mut s = 0.0f64;
            for c in 0..w.cols {
                s += wf[r * w.cols + c] as f64 * x[t * w.cols + c] as f64;
            }
            out[t * w.rows + r] = s as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
    }

    fn check(w: &Matrix, n: usize) {
        let x = rand_vec(n * w.cols, 7);
        let mut out = vec![0.0; n * w.rows];
        matmul(w, &x, n, &mut out);
        let want = matmul_reference(w, &x, n);
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "elem {i}: {a} vs {b} ({:?}, n={n})",
                w.dtype()
            );
        }
    }

    #[test]
    fn matmul_matches_reference_all_formats_and_shapes() {
        for &(rows, cols) in &[(1, 1), (7, 13), (33, 64), (130, 257), (5, 1000)] {
            let f = rand_vec(rows * cols, 3);
            let bf: Vec<u16> = f
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
            let hf: Vec<u16> = f
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect();
            let mats = [
                Matrix::from_f32(rows, cols, f.clone()),
                Matrix {
                    rows,
                    cols,
                    data: MatrixData::BF16(bf.into()),
                },
                Matrix {
                    rows,
                    cols,
                    data: MatrixData::F16(hf.into()),
                },
            ];
            for m in &mats {
                for n in [1, 2, 3, 4, 5, 9, 70] {
                    check(m, n);
                }
            }
        }
    }

    #[test]
    fn row_range_shares_rows() {
        let f = rand_vec(6 * 4, 1);
        let m = Matrix::from_f32(6, 4, f.clone());
        let s = m.row_range(2, 3);
        assert_eq!(s.to_f32(), f[8..20].to_vec());
        let t = m.transposed_f32();
        assert_eq!(t.to_f32()[3 * 6 + 2], f[2 * 4 + 3]);
    }
}
