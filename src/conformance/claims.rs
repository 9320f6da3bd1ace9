//! Claiming: `begin` on free, held and contended keys, and `get` of each state.

use futures_util::future::join_all;

use super::{Check, LEASE, fingerprint, fresh_key, sample_record};
use crate::store::{Begin, Entry, OwnerToken, Store};

/// `begin` on a key nobody has used answers [`Begin::New`].
pub(super) async fn begin_claims_a_new_key<S: Store>(store: &S) {
    let c = Check::new("begin_claims_a_new_key", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    let fp = fingerprint("a");
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    c.release(&key, a).await;
}

/// `begin` by the token that holds the key answers [`Begin::New`] again (a re-sent command).
pub(super) async fn begin_again_by_the_owner_is_new<S: Store>(store: &S) {
    let c = Check::new("begin_again_by_the_owner_is_new", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    let fp = fingerprint("a");
    c.expect_eq(
        "first begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    c.expect_eq(
        "second begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    c.release(&key, a).await;
}

/// `begin` by another token on a held key answers [`Begin::InProgress`] with the holder's
/// fingerprint (also when the holder has none), and leaves the claim as it is.
pub(super) async fn begin_by_another_token_is_in_progress<S: Store>(store: &S) {
    let c = Check::new("begin_by_another_token_is_in_progress", store);
    for held in [Some(fingerprint("holder")), None] {
        let (key, a) = (fresh_key(), OwnerToken::generate());
        c.expect_eq(
            "holder's begin",
            c.begin(&key, held.as_ref(), a, LEASE).await,
            Begin::New,
        );
        let other = fingerprint("other");
        let b = OwnerToken::generate();
        let in_progress = Begin::InProgress { fingerprint: held };
        c.expect_eq(
            "begin by another token",
            c.begin(&key, Some(&other), b, LEASE).await,
            in_progress.clone(),
        );
        c.expect_eq(
            "begin without fingerprint by a third token",
            c.begin(&key, None, OwnerToken::generate(), LEASE).await,
            in_progress,
        );
        c.expect_eq(
            "get after the other begins",
            c.get(&key).await,
            Some(Entry::InProgress {
                fingerprint: held,
                token: a,
            }),
        );
        c.release(&key, a).await;
    }
}

/// `get` of a key nobody has used is `None`.
pub(super) async fn get_of_an_unknown_key_is_none<S: Store>(store: &S) {
    let c = Check::new("get_of_an_unknown_key_is_none", store);
    c.expect_eq("get", c.get(&fresh_key()).await, None);
}

/// `get` reads nothing, then the claim with its fingerprint and owner, then the record.
pub(super) async fn get_reflects_each_state<S: Store>(store: &S) {
    let c = Check::new("get_reflects_each_state", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    let fp = fingerprint("a");
    c.expect_eq("get before begin", c.get(&key).await, None);
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    c.expect_eq(
        "get after begin",
        c.get(&key).await,
        Some(Entry::InProgress {
            fingerprint: Some(fp),
            token: a,
        }),
    );
    let record = sample_record(Some(fp), b"{\"id\":1}");
    c.complete(&key, a, &record).await;
    match c.get(&key).await {
        Some(Entry::Completed(got)) => c.same_record("get after complete", &got, &record),
        other => c.fail(format_args!(
            "get after complete: expected the record, got {other:?}"
        )),
    }
}

/// 32 `begin`s of one fresh key, all in flight at once: exactly one is [`Begin::New`], the rest
/// see the winner's fingerprint.
pub(super) async fn concurrent_begins_have_one_winner<S: Store>(store: &S) {
    let c = Check::new("concurrent_begins_have_one_winner", store);
    let key = fresh_key();
    let claimants: Vec<_> = (0..32)
        .map(|i| {
            (
                OwnerToken::generate(),
                fingerprint(&format!("claimant {i}")),
            )
        })
        .collect();
    let outcomes = join_all(
        claimants
            .iter()
            .map(|(token, fp)| store.begin(&key, Some(fp), *token, LEASE)),
    )
    .await;
    let mut winners = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Ok(Begin::New) => winners.push(i),
            Ok(Begin::InProgress { .. }) => {}
            other => c.fail(format_args!(
                "begin {i}: expected New or InProgress, got {other:?}"
            )),
        }
    }
    let [winner] = winners[..] else {
        c.fail(format_args!(
            "{} of 32 begins got New: {winners:?}",
            winners.len()
        ));
    };
    let expected = Begin::InProgress {
        fingerprint: Some(claimants[winner].1),
    };
    for (i, outcome) in outcomes.into_iter().enumerate() {
        if i != winner {
            c.expect_eq(
                &format!("begin {i}"),
                c.ok("begin", outcome),
                expected.clone(),
            );
        }
    }
    c.release(&key, claimants[winner].0).await;
}
