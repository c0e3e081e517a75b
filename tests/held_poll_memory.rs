//! What a held long-poll keeps resident: every page of its coroutine stack it ever touched stays
//! in memory while it waits, so the path it parks under must fit the stack's top 4 KiB page (may
//! also writes a sentinel into each stack's bottom page: two pages, 8 KiB, per coroutine).
//!
//! Frame sizes are the optimizer's, so this holds for the release build only: run it with
//! `cargo test --release --test held_poll_memory` (CI does). A debug build's frames are several
//! times larger, and there the test only says it was skipped.

mod common;

use common::{Conn, TestServer};

/// Held polls in the test: far more than may's pool of idle coroutines could hide.
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

#[test]
fn a_held_poll_keeps_two_pages_of_its_coroutine_stack_resident() {
    if cfg!(debug_assertions) {
        eprintln!("SKIPPED: stack depth is measured on the release build (cargo test --release)");
        return;
    }
    let stack_kib = STACK_KIB.to_string();
    let s = TestServer::start(&["--workers", "1", "--stack-kib", &stack_kib]);
    let cursor = s.cursor("IBM");
    // Each poll parses its head, checks its query and parks: the deepest it goes before the
    // change that wakes it.
    let held: Vec<Conn> = (0..HELD)
        .map(|_| s.send_poll(&format!("symbols=IBM&timeout=60&cursor={cursor}")))
        .collect();
    s.wait_for_metric("comet_polls_waiting", HELD as u64);

    let stacks = stack_rss_kib(s.pid(), STACK_KIB);
    assert!(
        stacks.len() >= HELD,
        "found {} stack mappings of {STACK_KIB} KiB for {HELD} held polls",
        stacks.len()
    );
    // A few unrelated mappings of the same size may exist; a deeper path shows on every held
    // poll's stack at once.
    let deeper = stacks.iter().filter(|&&kib| kib > 8).count();
    assert!(
        deeper < HELD / 2,
        "{deeper} of {} coroutine stacks have more than 8 KiB resident with {HELD} polls held \
         (resident KiB: {:?}): the path a poll parks under no longer fits one 4 KiB page",
        stacks.len(),
        {
            let mut sizes = stacks.clone();
            sizes.sort_unstable();
            sizes.dedup();
            sizes
        }
    );

    // The polls still answer: one change wakes them all.
    s.publish("IBM", 123.25);
    for mut c in held {
        assert_eq!(c.read_response().expect("answer").status, 200);
    }
}
