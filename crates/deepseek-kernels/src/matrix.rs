//! Weight matrices in their stored format (f32, bf16, f16, or a GGML block format), owned or
//! memory-mapped, and their repacking at load into the layouts the kernels read fastest.

use std::sync::Arc;

use crate::quant::{self, QuantType};
use crate::repack;
use crate::repack::{Iq4, K16};
use crate::simd;

/// Storage format of a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
    Quant(QuantType),
}

impl DType {
    /// Bytes of a row of `cols` values.
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            DType::F32 => 4 * cols,
            DType::BF16 | DType::F16 => 2 * cols,
            DType::Quant(q) => q.row_bytes(cols),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::Quant(q) => q.name(),
        }
    }
}

/// A typed read-only buffer: either owned, or a window of a memory-mapped file (zero copy).
#[derive(Clone)]
pub enum Buffer<T: Copy + 'static> {
    /// `len` elements from `offset` of a shared vector (views made by `row_range` share it).
    Owned {
        data: Arc<Vec<T>>,
        offset: usize,
        len: usize,
    },
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
            v.into()
        }
    }

    pub fn as_slice(&self) -> &[T] {
        match self {
            Buffer::Owned { data, offset, len } => &data[*offset..*offset + *len],
            Buffer::Mapped { map, offset, len } => {
                // SAFETY: alignment and bounds were checked in `from_map`; T is plain data.
                unsafe { std::slice::from_raw_parts(map[*offset..].as_ptr() as *const T, *len) }
            }
        }
    }
}

impl<T: Copy + 'static> From<Vec<T>> for Buffer<T> {
    fn from(v: Vec<T>) -> Self {
        let len = v.len();
        Buffer::Owned {
            data: Arc::new(v),
            offset: 0,
            len,
        }
    }
}

/// Matrix elements in one of the supported formats. bf16 and f16 are kept as raw `u16` bits.
#[derive(Clone)]
pub enum MatrixData {
    F32(Buffer<f32>),
    BF16(Buffer<u16>),
    F16(Buffer<u16>),
    /// GGML blocks, each row `ty.row_bytes(cols)` bytes.
    Quant {
        ty: QuantType,
        data: Buffer<u8>,
    },
    /// Q8_0 or Q4_K repacked in groups of 8 rows (see [`crate::repack`]); rows a multiple of 8.
    Grouped {
        layout: repack::Layout,
        data: Buffer<u8>,
    },
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
            MatrixData::Quant { ty, .. } => DType::Quant(ty),
            MatrixData::Grouped { layout, .. } => DType::Quant(layout.plain()),
        }
    }

    /// The layout our kernels run fastest on, made once at load (owned; the mapping's pages
    /// are then no longer touched): Q8_0 and Q4_K with rows in groups of 8 are repacked
    /// (see [`crate::repack`]; Q4_K where the CPU has AVX2 or 512-bit VNNI), and so are Q5_0
    /// and Q4_0 (as Q5_0, exactly) on the same CPUs; elsewhere Q5_0 and Q4_0 become Q8_0 first
    /// (exactly: same scale, the offset values fit in a byte), trading bytes for the fast
    /// kernel. Q5_K, Q6_K, Q3_K, Q2_K, IQ4_NL, IQ4_XS and Q5_1 are repacked too
    /// ([`repack::Layout::avx2_decode_only`]) on x86 with AVX2, but Q6_K not with 512-bit VNNI
    /// ([`repack::k16_repack_supported`]). Everything else is returned as it is.
    pub fn repacked(self) -> Matrix {
        self.repacked_in_chunks(REPACK_CHUNK_BYTES)
    }

    pub(crate) fn repacked_in_chunks(self, chunk_bytes: usize) -> Matrix {
        let MatrixData::Quant { ty, data } = &self.data else {
            return self;
        };
        if self.rows == 0 || !self.rows.is_multiple_of(repack::GROUP) {
            return self;
        }
        let (rows, cols) = (self.rows, self.cols);
        let decode_repack = repack::k16_repack_supported(*ty);
        let layout = match ty {
            QuantType::Q5_0 | QuantType::Q4_0 if repack::k_and_q5_repack_supported() => {
                repack::Layout::Q5_0x8
            }
            QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q5_0 => repack::Layout::Q8_0x8,
            QuantType::Q4K if repack::k_and_q5_repack_supported() => repack::Layout::Q4Kx8,
            QuantType::Q6K if decode_repack => repack::Layout::K16x8(K16::Q6K),
            QuantType::Q3K if decode_repack => repack::Layout::K16x8(K16::Q3K),
            QuantType::Q2K if decode_repack => repack::Layout::K16x8(K16::Q2K),
            QuantType::Q5K if decode_repack => repack::Layout::Q5Kx8,
            QuantType::IQ4NL if decode_repack => repack::Layout::IQ4x8(Iq4::NL),
            QuantType::IQ4XS if decode_repack => repack::Layout::IQ4x8(Iq4::XS),
            QuantType::Q5_1 if decode_repack => repack::Layout::Q5_1x8,
            _ => return self,
        };
        // A few MB of rows at a time, each slice's mapped pages dropped right after it is
        // repacked: a large matrix (lm_head: 200+ MB) is then never resident twice, not even
        // for the moment of its own conversion, which is what set the peak RSS.
        let row_bytes = ty.row_bytes(cols);
        let chunk_rows = (chunk_bytes / (repack::GROUP * row_bytes)).max(1) * repack::GROUP;
        let bytes = data.as_slice();
        let mut packed = Vec::with_capacity(rows / repack::GROUP * layout.group_bytes(cols));
        for start in (0..rows).step_by(chunk_rows) {
            let n = chunk_rows.min(rows - start);
            let src = &bytes[start * row_bytes..(start + n) * row_bytes];
            let part = match (layout, ty) {
                (repack::Layout::Q8_0x8, QuantType::Q8_0) => repack::repack_q8_0(src, n, cols),
                (repack::Layout::Q8_0x8, _) => {
                    repack::repack_q8_0(&quant::to_q8_0(*ty, src), n, cols)
                }
                (repack::Layout::Q5_0x8, QuantType::Q4_0) => {
                    repack::repack_q5_0(&quant::q4_0_to_q5_0(src), n, cols)
                }
                (repack::Layout::Q5_0x8, _) => repack::repack_q5_0(src, n, cols),
                (repack::Layout::Q4Kx8, _) => repack::repack_q4_k(src, n, cols),
                (repack::Layout::K16x8(k), _) => crate::repack::k16::repack(k, src, n, cols),
                (repack::Layout::Q5Kx8, _) => repack::repack_q5_k(src, n, cols),
                (repack::Layout::IQ4x8(k), _) => crate::repack::iq4::repack(k, src, n, cols),
                (repack::Layout::Q5_1x8, _) => crate::repack::q5_1::repack(src, n, cols),
            };
            packed.extend_from_slice(&part);
            // The mapped original is not read again: let the kernel drop its pages from this
            // process (they stay in the page cache).
            if let Buffer::Mapped { map, offset, .. } = data {
                release_mapped(map, offset + start * row_bytes, n * row_bytes);
            }
        }
        // A page fault also maps the cached pages around it (Linux's fault-around, 64 KiB), so
        // each chunk re-mapped a little of the chunk before it and of the neighbouring tensors.
        // Left, those pages added up to ~10 MB per layer of a Q2_K file by the end of the load;
        // drop the whole range once more, with a margin (a neighbour still in use only faults
        // its pages back in from the page cache).
        if let Buffer::Mapped { map, offset, .. } = data {
            let lo = offset.saturating_sub(FAULT_AROUND_MARGIN);
            let hi = (offset + rows * row_bytes + FAULT_AROUND_MARGIN).min(map.len());
            release_mapped(map, lo, hi - lo);
        }
        let data = MatrixData::Grouped {
            layout,
            data: packed.into(),
        };
        Matrix { rows, cols, data }
    }

    /// Bytes the kernels read for the whole matrix (repacked layouts included).
    pub fn size_bytes(&self) -> usize {
        match &self.data {
            MatrixData::Grouped { data, .. } => data.as_slice().len(),
            _ => self.rows * self.dtype().row_bytes(self.cols),
        }
    }

    /// Rows `start..start+count` as a matrix sharing this one's storage.
    pub fn row_range(&self, start: usize, count: usize) -> Matrix {
        assert!(start + count <= self.rows);
        let (o, n) = (start * self.cols, count * self.cols);
        let data = match &self.data {
            MatrixData::F32(b) => MatrixData::F32(sub(b, o, n)),
            MatrixData::BF16(b) => MatrixData::BF16(sub(b, o, n)),
            MatrixData::F16(b) => MatrixData::F16(sub(b, o, n)),
            MatrixData::Quant { ty, data } => {
                let rb = ty.row_bytes(self.cols);
                MatrixData::Quant {
                    ty: *ty,
                    data: sub(data, start * rb, count * rb),
                }
            }
            MatrixData::Grouped { layout, data } => {
                let g = repack::GROUP;
                if start.is_multiple_of(g) && count.is_multiple_of(g) {
                    let gb = layout.group_bytes(self.cols);
                    MatrixData::Grouped {
                        layout: *layout,
                        data: sub(data, start / g * gb, count / g * gb),
                    }
                } else {
                    // Not whole groups: those rows in the plain format (a copy).
                    let ty = layout.plain();
                    let rb = ty.row_bytes(self.cols);
                    let mut plain = vec![0u8; count * rb];
                    for (i, o) in plain.chunks_mut(rb).enumerate() {
                        layout.unpack_row(data.as_slice(), self.cols, start + i, o);
                    }
                    MatrixData::Quant {
                        ty,
                        data: plain.into(),
                    }
                }
            }
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
            MatrixData::Quant { ty, data } => {
                let rb = ty.row_bytes(c);
                quant::dequantize_row(*ty, &data.as_slice()[r * rb..(r + 1) * rb], out)
            }
            MatrixData::Grouped { layout, data } => {
                let mut plain = vec![0u8; layout.plain().row_bytes(c)];
                layout.unpack_row(data.as_slice(), c, r, &mut plain);
                quant::dequantize_row(layout.plain(), &plain, out)
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

    /// `[cols, rows]` copy in f32 (tests compare the transposed kernels with it).
    #[cfg(test)]
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

/// Rows repacked per step of [`Matrix::repacked`].
const REPACK_CHUNK_BYTES: usize = 4 << 20;

/// Bytes on either side of a repacked tensor whose mapped pages are dropped with it: Linux maps
/// up to 64 KiB of cached pages around a faulting address by default; 1 MiB covers a larger
/// `fault_around_bytes` too.
const FAULT_AROUND_MARGIN: usize = 1 << 20;

#[cfg(unix)]
fn release_mapped(map: &memmap2::Mmap, offset: usize, len: usize) {
    // SAFETY: MADV_DONTNEED on a read-only file mapping only drops resident pages; a later read
    // faults them back in from the file, so every view of the mapping stays valid.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
}

#[cfg(not(unix))]
fn release_mapped(_: &memmap2::Mmap, _: usize, _: usize) {}

fn sub<T: Copy + 'static>(b: &Buffer<T>, offset: usize, len: usize) -> Buffer<T> {
    match b {
        Buffer::Owned {
            data,
            offset: o,
            len: l,
        } => {
            assert!(offset + len <= *l);
            Buffer::Owned {
                data: data.clone(),
                offset: o + offset,
                len,
            }
        }
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
