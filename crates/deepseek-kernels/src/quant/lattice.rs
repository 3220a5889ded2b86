//! The lattices of llama.cpp's i-quants as its quantizers search them (`iq2xs_init_impl`,
//! `iq3xs_init_impl` in ggml-quants.c): every grid point as odd levels `2l + 1`, a map from
//! each rounded group of level indices to its grid index, and for groups off the grid the grid
//! points nearest to them.

// The loops follow ggml-quants.c index by index.
#![allow(clippy::needless_range_loop)]

/// A lattice's points as odd levels (`2l + 1`), the map from every rounded group (its levels
/// `l` packed `bits` apart) to its grid index, and for groups off the grid the grid points
/// nearest to them (llama.cpp's `kmap` and `kneighbors`).
pub(crate) struct Lattice {
    pub(crate) dim: usize,
    bits: u32,
    /// `dim` odd levels per point.
    pub(crate) points: Vec<i8>,
    /// Grid index ≥ 0, or `-(offset + 1)` into `neighbours`, whose entry at offset is the
    /// count of the indices that follow it.
    map: Vec<i32>,
    pub(crate) neighbours: Vec<u16>,
}

impl Lattice {
    /// `levels[i]`: the level indices `l` of grid point `i`; `nwant` distance shells of
    /// neighbours are kept for each group off the grid.
    pub(crate) fn new(levels: Vec<Vec<u8>>, bits: u32, map_size: usize, nwant: usize) -> Self {
        let dim = levels[0].len();
        let points: Vec<i8> = levels.iter().flatten().map(|&l| 2 * l as i8 + 1).collect();
        let mut map = vec![-1i32; map_size];
        for (i, l) in levels.iter().enumerate() {
            let u = l
                .iter()
                .enumerate()
                .fold(0usize, |u, (k, &l)| u | (l as usize) << (bits as usize * k));
            map[u] = i as i32;
        }
        let mask = (1usize << bits) - 1;
        let mut neighbours = vec![];
        let mut dist: Vec<(i32, usize)> = Vec::with_capacity(levels.len());
        for u in 0..map_size {
            if map[u] >= 0 {
                continue;
            }
            let pos: Vec<i32> = (0..dim)
                .map(|k| 2 * ((u >> (bits as usize * k)) & mask) as i32 + 1)
                .collect();
            dist.clear();
            dist.extend(points.chunks_exact(dim).enumerate().map(|(j, p)| {
                let d2 = p
                    .iter()
                    .zip(&pos)
                    .map(|(&a, &b)| (a as i32 - b).pow(2))
                    .sum();
                (d2, j)
            }));
            dist.sort_unstable();
            let start = neighbours.len();
            map[u] = -(start as i32 + 1);
            neighbours.push(0);
            let (mut d2, mut shells) = (dist[0].0, 1);
            for &(d, j) in &dist {
                if d > d2 {
                    if shells == nwant {
                        break;
                    }
                    d2 = d;
                    shells += 1;
                }
                neighbours.push(j as u16);
            }
            neighbours[start] = (neighbours.len() - start - 1) as u16;
        }
        Lattice {
            dim,
            bits,
            points,
            map,
            neighbours,
        }
    }

    pub(crate) fn point(&self, i: usize) -> &[i8] {
        &self.points[i * self.dim..(i + 1) * self.dim]
    }

    /// The map entry of a group of level indices.
    pub(crate) fn lookup(&self, l: &[i8]) -> i32 {
        let u = l.iter().enumerate().fold(0usize, |u, (k, &l)| {
            u | (l as usize) << (self.bits as usize * k)
        });
        self.map[u]
    }

    /// Of the neighbours of an off-grid entry, the point nearest to `x / scale` in weighted
    /// squares (the first on ties); writes its level indices to `l`, returns its index.
    pub(crate) fn best_neighbour(
        &self,
        entry: i32,
        x: &[f32],
        w: &[f32],
        scale: f32,
        l: &mut [i8],
    ) -> usize {
        let at = (-entry - 1) as usize;
        let n = self.neighbours[at] as usize;
        let mut best = (f32::MAX, usize::MAX);
        for &j in &self.neighbours[at + 1..at + 1 + n] {
            let p = self.point(j as usize);
            let mut d2 = 0.0f32;
            for i in 0..self.dim {
                let diff = scale * p[i] as f32 - x[i];
                d2 += w[i] * diff * diff;
            }
            if d2 < best.0 {
                best = (d2, j as usize);
            }
        }
        for (o, &p) in l.iter_mut().zip(self.point(best.1)) {
            *o = (p - 1) / 2;
        }
        best.1
    }
}

/// The level index of each grid value, from the grids the reader decodes with.
pub(crate) fn level_indices<const W: usize>(grid: &[[i8; W]], levels: &[i8]) -> Vec<Vec<u8>> {
    grid.iter()
        .map(|p| {
            p.iter()
                .map(|v| levels.iter().position(|l| l == v).expect("a grid level") as u8)
                .collect()
        })
        .collect()
}

/// ggml's `nearest_int`: round half to even through the float's mantissa.
#[inline]
pub(crate) fn nearest_int(v: f32) -> i32 {
    ((v + 12582912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}
