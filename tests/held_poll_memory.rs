//! What a held long-poll keeps resident: every page of its coroutine stack it ever touched stays
//! in memory while it waits, so the path it parks under must fit the stack's top 4 KiB page (may
//! also writes a sentinel into each stack's bottom page: two pages, 8 KiB, per coroutine).
//!
//! Frame sizes are the optimizer's, so this holds for the release build only: run it with
//! `cargo test --release --test held_poll_memory` (CI does). A debug build's frames are several
//! times larger, and there the test only says it was skipped.

mod common;

use common::{jwt, Conn, TestServer};

/// Held polls in each test. may keeps a pool of 1,000 idle coroutine stacks (each with 8 KiB
/// resident), so the check below counts stacks over the limit rather than comparing totals.
const HELD: usize = 200;
/// The stack size the server is started with, in KiB: the size of each stack's mapping.
const STACK_KIB: usize = 64;

/// The resident KiB of every private anonymous read-write mapping of exactly `size_kib` KiB in
/// process `pid`: its coroutine stacks (the guard page below each is a mapping of its own).
fn stack_rss_kib(pid: u32, size_kib: usize) -> Vec<usize> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let mut found = Vec::new();
    let mut current: Option<(bool, Option<usize>)> = None; // (rw anonymous, Size)
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let fields: Vec<&str> = line.split_whitespace().collect();
            current = Some((fields.get(1) == Some(&"rw-p") && fields.len() == 5, None));
        } else if let Some(kib) = line.strip_prefix("Size:") {
            if let Some((_, size)) = current.as_mut() {
                *size = kib.trim().trim_end_matches("kB").trim().parse().ok();
            }
        } else if let Some(kib) = line.strip_prefix("Rss:") {
            if let Some((true, Some(size))) = current {
                if size == size_kib {
                    found.push(kib.trim().trim_end_matches("kB").trim().parse().unwrap());
                }
            }
        }
    }
    found
}

/// Hold a poll from each of `queries` on `s` (one worker, `STACK_KIB` stacks) and assert that
/// their coroutine stacks keep at most two 4 KiB pages resident; then wake them all.
fn assert_held_polls_keep_two_stack_pages(s: &TestServer, queries: &[String]) {
    // Each poll parses its head, checks its query (and token) and parks: the deepest it goes
    // before the change that wakes it.
    let held: Vec<Conn> = queries.iter().map(|q| s.send_poll(q)).collect();
    s.wait_for_metric("comet_polls_waiting", queries.len() as u64);

    let stacks = stack_rss_kib(s.pid(), STACK_KIB);
    assert!(
        stacks.len() >= queries.len(),
        "found {} stack mappings of {STACK_KIB} KiB for {} held polls",
        stacks.len(),
        queries.len()
    );
    // A few unrelated mappings of the same size may exist; a deeper path shows on every held
    // poll's stack at once.
    let deeper = stacks.iter().filter(|&&kib| kib > 8).count();
    let mut sizes = stacks.clone();
    sizes.sort_unstable();
    sizes.dedup();
    assert!(
        deeper < queries.len() / 2,
        "{deeper} of {} coroutine stacks have more than 8 KiB resident with {} polls held \
         (resident KiB: {sizes:?}): the path a poll parks under no longer fits one 4 KiB page",
        stacks.len(),
        queries.len()
    );

    // The polls still answer: one change wakes them all.
    s.publish("IBM", 123.25);
    for mut c in held {
        assert_eq!(c.read_response().expect("answer").status, 200);
    }
}

/// Whether this is a debug build, where frames are too large for the limit; says so if it is.
fn skipped_in_debug() -> bool {
    if cfg!(debug_assertions) {
        eprintln!("SKIPPED: stack depth is measured on the release build (cargo test --release)");
    }
    cfg!(debug_assertions)
}

#[test]
fn a_held_poll_keeps_two_pages_of_its_coroutine_stack_resident() {
    if skipped_in_debug() {
        return;
    }
    let stack_kib = STACK_KIB.to_string();
    let s = TestServer::start(&["--workers", "1", "--stack-kib", &stack_kib]);
    let cursor = s.cursor("IBM");
    let queries = vec![format!("symbols=IBM&timeout=60&cursor={cursor}"); HELD];
    assert_held_polls_keep_two_stack_pages(&s, &queries);
}

/// Signs a token with these claims.
type Sign = fn(&serde_json::Value) -> String;

/// Each poll brings a token the server has not seen, so each is verified (HS256, then RS256,
/// the deeper check) before it parks.
#[test]
fn a_held_poll_whose_token_was_just_verified_keeps_two_pages_of_its_stack_resident() {
    if skipped_in_debug() {
        return;
    }
    let stack_kib = STACK_KIB.to_string();
    let rsa_key = jwt::rsa_public_key();
    let keys = [
        ("--jwt-secret", jwt::SECRET, jwt::hs256 as Sign),
        ("--jwt-public-key", &rsa_key, jwt::rs256),
    ];
    for (flag, key, sign) in keys {
        let s = TestServer::start(&["--workers", "1", "--stack-kib", &stack_kib, flag, key]);
        let token = |reader: &str| {
            sign(&serde_json::json!({
                "exp": jwt::now_secs() + 600,
                "symbols": ["IBM"],
                "sub": reader,
            }))
        };
        let snapshot = s.get(&format!(
            "/api/quotes?symbols=IBM&access_token={}",
            token("snapshot")
        ));
        let cursor = snapshot.json()["cursor"].as_u64().expect("cursor");
        let queries: Vec<String> = (0..HELD)
            .map(|i| {
                let token = token(&format!("reader-{i}"));
                format!("symbols=IBM&timeout=60&cursor={cursor}&access_token={token}")
            })
            .collect();
        assert_held_polls_keep_two_stack_pages(&s, &queries);
    }
}
