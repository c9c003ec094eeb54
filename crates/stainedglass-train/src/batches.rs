//! Epoch-wise shuffled mini-batches whose order depends only on `(seed, epoch)`, so a resumed run
//! sees exactly the batches the uninterrupted run would have seen.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Batches per epoch (the last partial batch is dropped when `drop_last`).
pub fn batches_per_epoch(n: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last {
        n / batch_size
    } else {
        n.div_ceil(batch_size)
    }
}

/// Index lists of one epoch's batches.
pub fn epoch_batches(
    n: usize,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    drop_last: bool,
) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    idx.shuffle(&mut rng);
    let mut out: Vec<Vec<usize>> = idx.chunks(batch_size).map(|c| c.to_vec()).collect();
    if drop_last && out.last().is_some_and(|b| b.len() < batch_size) {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_complete() {
        let a = epoch_batches(10, 3, 1, 0, false);
        assert_eq!(a, epoch_batches(10, 3, 1, 0, false));
        assert_ne!(a, epoch_batches(10, 3, 1, 1, false));
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(epoch_batches(10, 3, 1, 0, true).len(), 3);
        assert_eq!(batches_per_epoch(10, 3, false), 4);
    }
}
