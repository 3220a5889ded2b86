//! Ranks as threads of one process: the [`ExpertLink`] the tests use, so expert parallelism is
//! checked by `cargo test` without MPI.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Barrier, Mutex};

use super::ExpertLink;

struct Shared {
    barrier: Barrier,
    /// Rank 0's channel to each follower (index 0 unused).
    to_follower: Vec<Mutex<Sender<Vec<u8>>>>,
    parts: Mutex<Vec<Vec<f32>>>,
}

pub struct LocalLink {
    rank: usize,
    shared: Arc<Shared>,
    inbox: Mutex<Receiver<Vec<u8>>>,
}

/// `ranks` linked ranks, one per thread that will use it.
pub fn local_links(ranks: usize) -> Vec<LocalLink> {
    let (senders, inboxes): (Vec<_>, Vec<_>) = (0..ranks).map(|_| channel()).unzip();
    let shared = Arc::new(Shared {
        barrier: Barrier::new(ranks),
        to_follower: senders.into_iter().map(Mutex::new).collect(),
        parts: Mutex::new(vec![vec![]; ranks]),
    });
    inboxes
        .into_iter()
        .enumerate()
        .map(|(rank, inbox)| LocalLink {
            rank,
            shared: shared.clone(),
            inbox: Mutex::new(inbox),
        })
        .collect()
}

impl ExpertLink for LocalLink {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.shared.to_follower.len()
    }

    fn send_to_followers(&self, msg: &[u8]) {
        for to in &self.shared.to_follower[1..] {
            to.lock()
                .unwrap()
                .send(msg.to_vec())
                .expect("a follower is listening");
        }
    }

    fn receive_from_leader(&self) -> Vec<u8> {
        self.inbox
            .lock()
            .unwrap()
            .recv()
            .expect("rank 0 is running")
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
