//! A device tree as QEMU hands it over (`-dtb` with devices it does not model replaced by NOP
//! tokens) is refused as-is and parses after `compact_fdt_nops`, with the same content.

use kcore::bootinfo::{compact_fdt_nops, BootInfo, BootInfoError, DtbDefect};

const FIXTURE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/bcm2711-rpi-4-b.dtb");

fn be32(d: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(d[off..off + 4].try_into().unwrap())
}

/// Overwrites the first node named `name` (and its subtree) with NOP tokens, as libfdt's
/// `fdt_nop_node` does.
fn nop_node(d: &mut [u8], name: &str) {
    let off_struct = be32(d, 8) as usize;
    let mut pos = off_struct;
    let mut depth_at_start = None;
    let mut depth = 0;
    let mut start = 0;
    loop {
        let tok = be32(d, pos);
        let len = match tok {
            1 => {
                let nul = d[pos + 4..].iter().position(|&b| b == 0).unwrap();
                let n = std::str::from_utf8(&d[pos + 4..pos + 4 + nul]).unwrap();
                if depth_at_start.is_none() && n == name {
                    depth_at_start = Some(depth);
                    start = pos;
                }
                depth += 1;
                4 + (nul + 1).div_ceil(4) * 4
            }
            2 => {
                depth -= 1;
                if depth_at_start == Some(depth) {
                    for w in (start..pos + 4).step_by(4) {
                        d[w..w + 4].copy_from_slice(&4u32.to_be_bytes());
                    }
                    return;
                }
                4
            }
            3 => 12 + (be32(d, pos + 4) as usize).div_ceil(4) * 4,
            4 => 4,
            _ => panic!("node {name} not found"),
        };
        pos += len;
    }
}

#[test]
fn nops_between_siblings_are_compacted_away() {
    let orig = std::fs::read(FIXTURE).expect("shared fixture");
    let before = BootInfo::parse(&orig).expect("fixture parses");
    let mut d = orig.clone();
    // A node in the middle of /soc's children, like QEMU's disabled devices.
    nop_node(&mut d, "rng@7e104000");
    assert!(matches!(
        BootInfo::parse(&d),
        Err(BootInfoError::MalformedDtb { defect: DtbDefect::Misplaced, .. })
    ));
    let removed = compact_fdt_nops(&mut d).expect("compacts");
    assert!(removed > 3, "removed {removed}");
    let after = BootInfo::parse(&d).expect("parses after compaction");
    assert_eq!(after.cmdline, before.cmdline);
    assert_eq!(after.model, before.model);
    assert_eq!(after.reserved, before.reserved);
    assert_eq!(after.memory, before.memory);
    assert!(be32(&d, 36) < be32(&orig, 36), "size_dt_struct shrank");
    // Idempotent.
    assert_eq!(compact_fdt_nops(&mut d), Ok(0));
}

#[test]
fn malformed_blob_is_left_untouched() {
    let mut d = std::fs::read(FIXTURE).expect("shared fixture");
    nop_node(&mut d, "rng@7e104000");
    // Cut the structure block short: size_dt_struct points past the data we keep.
    let size_struct = be32(&d, 36);
    d[36..40].copy_from_slice(&(size_struct - 64).to_be_bytes());
    let copy = d.clone();
    assert!(compact_fdt_nops(&mut d).is_err());
    assert_eq!(d, copy, "nothing moved");
    let mut junk = vec![0u8; 64];
    assert!(compact_fdt_nops(&mut junk).is_err());
}
