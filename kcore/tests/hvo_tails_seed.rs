//! The seed tail design (`hvo_tails=seed`): see `hvo_tails_common`.

mod hvo_common;
mod hvo_tails_common;

use hvo_tails_common::*;
use kcore::hvo_tails::TailDesign::Seed;

#[test]
fn seed_2m_cycles() {
    let (opts, ress) = cycles_2m(Seed);
    for m in &opts {
        // Every folio: page 0 copied to a fresh frame and remapped.
        assert_eq!(m.stats.frames_allocated, 1);
        assert_eq!(m.stats.head_pages_replaced, 1);
        assert_eq!(m.stats.shared_tail_pages, 0);
    }
    let o = opts.last().unwrap();
    let r = ress.last().unwrap();
    println!(
        "tails design=seed 2M per folio: buddy_gain={} frames_freed={} frames_allocated={} remapped={} tlbi={} entry_writes={} | restore buddy={} tlbi={} entry_writes={}",
        o.buddy_delta, o.stats.frames_freed, o.stats.frames_allocated, o.stats.ptes_remapped,
        o.stats.tlbi, o.stats.entry_writes, r.buddy_delta, r.stats.tlbi, r.stats.entry_writes
    );
}

#[test]
fn seed_1g_cycles() {
    let (o, r) = cycles_1g(Seed);
    assert_eq!(o.stats.frames_allocated, 1, "the copy of page 0");
    println!(
        "tails design=seed 1G per folio: buddy_gain={} frames_freed={} remapped={} tlbi={} flush_all={} entry_writes={} | restore buddy={} tlbi={}",
        o.buddy_delta, o.stats.frames_freed, o.stats.ptes_remapped, o.stats.tlbi,
        o.stats.tlbi_flush_all, o.stats.entry_writes, r.buddy_delta, r.stats.tlbi
    );
}

#[test]
fn seed_wrong_order_is_noticed() {
    wrong_order_is_noticed(Seed);
}
