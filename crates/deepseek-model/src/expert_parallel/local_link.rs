//! Ranks as threads of one process: the [`ExpertLink`] the tests use, so expert parallelism is
//! checked by `cargo test` without MPI.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use super::ExpertLink;

type Outbox = Mutex<Sender<Vec<u8>>>;
type Inbox = Mutex<Receiver<Vec<u8>>>;

/// A channel for every ordered pair of ranks: `senders[from][to]`, `inbox[from]` of each rank.
pub struct LocalLink {
    rank: usize,
    senders: Arc<Vec<Vec<Outbox>>>,
    inbox: Vec<Inbox>,
}

/// `ranks` linked ranks, one per thread that will use it.
pub fn local_links(ranks: usize) -> Vec<LocalLink> {
    let mut senders: Vec<Vec<Outbox>> = (0..ranks).map(|_| vec![]).collect();
    let mut inboxes: Vec<Vec<Inbox>> = (0..ranks).map(|_| vec![]).collect();
    for from in senders.iter_mut() {
        for inbox in inboxes.iter_mut() {
            let (tx, rx) = channel();
            from.push(Mutex::new(tx));
            inbox.push(Mutex::new(rx));
        }
    }
    let senders = Arc::new(senders);
    inboxes
        .into_iter()
        .enumerate()
        .map(|(rank, inbox)| LocalLink {
            rank,
            senders: senders.clone(),
            inbox,
        })
        .collect()
}

impl ExpertLink for LocalLink {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.senders.len()
    }

    fn send(&self, to: usize, msg: &[u8]) {
        let tx = self.senders[self.rank][to].lock().unwrap();
        tx.send(msg.to_vec())
            .expect("the receiving rank is running");
    }

    fn receive(&self, from: usize) -> Vec<u8> {
        self.inbox[from]
            .lock()
            .unwrap()
            .recv()
            .expect("the sending rank is running")
    }
}
