//! The shared tail design (`hvo_tails=shared`): see `hvo_tails_common`.

mod hvo_common;
mod hvo_tails_common;

use hvo_tails_common::*;
use kcore::hvo_tails::TailDesign::Shared;

#[test]
fn shared_2m_cycles() {
    let (opts, ress) = cycles_2m(Shared);
    for m in &opts {
        // Steady state (the shared page exists): nothing allocated, page 0 not touched.
        assert_eq!(m.stats.frames_allocated, 0);
        assert_eq!(m.stats.head_pages_replaced, 0);
        assert_eq!(m.stats.shared_tail_pages, 0);
    }
    let o = opts.last().unwrap();
    let r = ress.last().unwrap();
    println!(
        "tails design=shared 2M per folio: buddy_gain={} frames_freed={} frames_allocated={} remapped={} tlbi={} entry_writes={} | restore buddy={} tlbi={} entry_writes={}",
        o.buddy_delta, o.stats.frames_freed, o.stats.frames_allocated, o.stats.ptes_remapped,
        o.stats.tlbi, o.stats.entry_writes, r.buddy_delta, r.stats.tlbi, r.stats.entry_writes
    );
}

#[test]
fn shared_1g_cycles() {
    let (o, r) = cycles_1g(Shared);
    assert_eq!(o.stats.frames_allocated, 0, "the 1 GiB tail page came with the first cycle");
    println!(
        "tails design=shared 1G per folio: buddy_gain={} frames_freed={} remapped={} tlbi={} flush_all={} entry_writes={} | restore buddy={} tlbi={}",
        o.buddy_delta, o.stats.frames_freed, o.stats.ptes_remapped, o.stats.tlbi,
        o.stats.tlbi_flush_all, o.stats.entry_writes, r.buddy_delta, r.stats.tlbi
    );
}

#[test]
fn shared_wrong_order_is_noticed() {
    wrong_order_is_noticed(Shared);
}
