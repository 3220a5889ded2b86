//! Ranks as threads of one process: the [`ExpertLink`] the tests use, so expert parallelism is
//! checked by `cargo test` without MPI.

use std::sync::{Arc, Barrier, Mutex};

use super::ExpertLink;

struct Shared {
    barrier: Barrier,
    broadcast: Mutex<Vec<u8>>,
    parts: Mutex<Vec<Vec<f32>>>,
}

pub struct LocalLink {
    rank: usize,
    shared: Arc<Shared>,
}

/// `ranks` linked ranks, one per thread that will use it.
pub fn local_links(ranks: usize) -> Vec<LocalLink> {
    let shared = Arc::new(Shared {
        barrier: Barrier::new(ranks),
        broadcast: Mutex::new(vec![]),
        parts: Mutex::new(vec![vec![]; ranks]),
    });
    (0..ranks)
        .map(|rank| LocalLink {
            rank,
            shared: shared.clone(),
        })
        .collect()
}

impl ExpertLink for LocalLink {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.shared.parts.lock().unwrap().len()
    }

    fn broadcast(&self, buf: &mut [u8]) {
        let s = &self.shared;
        if self.rank == 0 {
            *s.broadcast.lock().unwrap() = buf.to_vec();
        }
        s.barrier.wait();
        if self.rank != 0 {
            buf.copy_from_slice(&s.broadcast.lock().unwrap());
        }
        s.barrier.wait();
    }

    fn reduce_sum(&self, buf: &mut [f32]) {
        let s = &self.shared;
        s.parts.lock().unwrap()[self.rank] = buf.to_vec();
        s.barrier.wait();
        if self.rank == 0 {
            let parts = s.parts.lock().unwrap();
            for part in &parts[1..] {
                for (o, v) in buf.iter_mut().zip(part) {
                    *o += v;
                }
            }
        }
        s.barrier.wait();
    }
}
