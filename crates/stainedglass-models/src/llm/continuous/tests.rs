use super::*;
use crate::llm::generate::Prompt;
use crate::test_util::{max_diff, rand, tiny_model};
use rand::SeedableRng;

/// Rows that join a running cache at different times, leave it (the last row moving into
/// the hole) and go through a compaction each get the logits they get alone.
#[test]
fn joined_removed_and_compacted_rows_keep_their_own_logits() {
    let m = tiny_model();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let lens = [5usize, 2, 9];
    let prompts: Vec<Tensor> = lens
        .iter()
        .map(|&t| rand(&[1, t, 32], &mut r, 1.0))
        .collect();
    let steps: Vec<Vec<Tensor>> = (0..3)
        .map(|_| (0..4).map(|_| rand(&[1, 1, 32], &mut r, 1.0)).collect())
        .collect();
    // Alone: the logits after the prompt and after each decoding input.
    let alone: Vec<Vec<Tensor>> = (0..3)
        .map(|i| {
            let mut c = KvCache::new(3, 1);
            let mut out = vec![m
                .forward_cached(&prompts[i], None, &mut c)
                .expect("prefill")];
            for s in &steps[i] {
                out.push(m.forward_cached(s, None, &mut c).expect("step"));
            }
            out
        })
        .collect();
    let prefill = |i: usize| {
        let mut c = KvCache::new(3, 1);
        let l = m
            .forward_cached(&prompts[i], None, &mut c)
            .expect("prefill");
        (c, l)
    };
    // rows: which request each cache row holds, and how many steps it has taken.
    let mut rows: Vec<(usize, usize)> = vec![(0, 0)];
    let (mut cache, l) = prefill(0);
    assert!(max_diff(&l, &alone[0][0]) < 1e-5);
    let step = |cache: &mut KvCache, rows: &mut Vec<(usize, usize)>| {
        let xs: Vec<Tensor> = rows.iter().map(|&(i, n)| steps[i][n].clone()).collect();
        let logits = m
            .forward_cached(&Tensor::cat(&xs, 0).expect("cat"), None, cache)
            .expect("batched step");
        for (bi, (i, n)) in rows.iter_mut().enumerate() {
            *n += 1;
            let got = logits.narrow(0, bi, 1).expect("row");
            let d = max_diff(&got, &alone[*i][*n]);
            assert!(d < 1e-4, "request {i} step {n}: differs by {d}");
        }
    };
    step(&mut cache, &mut rows);
    let (c1, l1) = prefill(1);
    assert!(max_diff(&l1, &alone[1][0]) < 1e-5);
    cache.join(c1).expect("join a shorter prompt");
    rows.push((1, 0));
    step(&mut cache, &mut rows);
    let (c2, _) = prefill(2);
    cache.join(c2).expect("join a longer prompt");
    rows.push((2, 0));
    step(&mut cache, &mut rows);
    cache.swap_remove_row(0).expect("remove");
    rows.swap_remove(0);
    assert_eq!(rows[0].0, 2, "the last row moved into the hole");
    assert!(
        !cache.compact(1).expect("compact"),
        "request 2 uses every column"
    );
    step(&mut cache, &mut rows);
    cache.swap_remove_row(0).expect("remove");
    rows.swap_remove(0);
    // Request 1 (2 prompt columns, then its decoding columns) is left with holes.
    assert!(
        cache.compact(1).expect("compact"),
        "requests 0 and 2 left unused columns"
    );
    assert_eq!(cache.len(), 2 + 3);
    assert!(cache.key_valid.iter().all(|kv| kv.len() == cache.len()));
    step(&mut cache, &mut rows);
    assert_eq!(cache.rows(), 1);
}

/// Through the public API: requests joining at different steps with different budgets get
/// the greedy tokens they get alone, and each leaves the batch when done.
#[test]
fn join_and_step_give_each_request_its_own_reply() {
    let m = tiny_model();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let lens = [4usize, 1, 6, 3];
    let budgets = [6usize, 2, 5, 4];
    let prompts: Vec<Tensor> = lens.iter().map(|&t| rand(&[t, 32], &mut r, 1.0)).collect();
    let params: Vec<SamplingParams> = budgets
        .iter()
        .map(|&n| SamplingParams {
            max_new_tokens: n,
            ..Default::default()
        })
        .collect();
    let alone: Vec<Vec<u32>> = (0..4)
        .map(|i| {
            m.generate(Prompt::Embeds(&prompts[i]), &params[i], |_| true)
                .expect("alone")
                .tokens
        })
        .collect();
    let req = |i: usize| {
        (
            i as u64,
            RowRequest {
                embeds: &prompts[i],
                params: &params[i],
            },
        )
    };
    let mut seen: Vec<Vec<u32>> = vec![Vec::new(); 4];
    let mut record = |id: u64, t: u32| {
        seen[id as usize].push(t);
        true
    };
    let mut batch = RunningBatch::new(3);
    let mut done = m
        .join_batch(&mut batch, &[req(0), req(1)], &mut record)
        .expect("join");
    for s in 0..12 {
        if s == 1 {
            done.extend(
                m.join_batch(&mut batch, &[req(2)], &mut record)
                    .expect("join"),
            );
        }
        if s == 2 {
            done.extend(
                m.join_batch(&mut batch, &[req(3)], &mut record)
                    .expect("join"),
            );
        }
        done.extend(m.step_batch(&mut batch, &mut record).expect("step"));
    }
    assert!(batch.is_empty(), "every request finished");
    assert_eq!(done.len(), 4);
    for f in &done {
        let i = f.id as usize;
        assert_eq!(f.generation.tokens, alone[i], "request {i}");
        assert_eq!(seen[i], alone[i], "request {i}'s streamed tokens");
        assert_eq!(f.generation.finish, FinishReason::Length);
        assert_eq!(f.generation.prompt_tokens, lens[i]);
    }
}

/// A request cancelled by its callback leaves at once; the others go on.
#[test]
fn a_cancelled_request_leaves_alone() {
    let m = tiny_model();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let prompts: Vec<Tensor> = (0..2).map(|_| rand(&[3, 32], &mut r, 1.0)).collect();
    let p = SamplingParams {
        max_new_tokens: 5,
        ..Default::default()
    };
    let reqs: Vec<(u64, RowRequest<'_>)> = (0..2)
        .map(|i| {
            (
                i as u64,
                RowRequest {
                    embeds: &prompts[i],
                    params: &p,
                },
            )
        })
        .collect();
    let mut batch = RunningBatch::new(3);
    let mut count = 0;
    let cancel_first = |id: u64, _t: u32| {
        count += 1;
        !(id == 0 && count > 2)
    };
    let mut done = m.join_batch(&mut batch, &reqs, cancel_first).expect("join");
    let mut cancel = |id: u64, _t: u32| id != 0;
    done.extend(m.step_batch(&mut batch, &mut cancel).expect("step"));
    assert_eq!(batch.len(), 1);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].generation.finish, FinishReason::Cancelled);
    while !batch.is_empty() {
        done.extend(m.step_batch(&mut batch, |_, _| true).expect("step"));
    }
    assert_eq!(done[1].generation.tokens.len(), 5);
}
