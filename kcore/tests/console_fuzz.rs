//! No input panics the console: random bytes (and random mixes of command words, numbers,
//! sizes, editing keys) through the line editor and the command parser. Every finished line is
//! printable ASCII of at most `MAX_LINE` bytes, every parse gives a command or a typed error whose
//! message formats. Cases: `KCORE_FUZZ_CASES` (default 4000), so `cargo xtask fuzz` can run more.

use kcore::lineedit::{LineEditor, LineEvent, MAX_LINE};
use kcore::shell;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("KCORE_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(4000)
}

/// Feeds `bytes`, checks every event, returns the number of lines parsed.
fn drive(bytes: &[u8]) -> usize {
    let mut ed = LineEditor::new();
    let mut lines = 0;
    for &b in bytes {
        let mut echoed = 0usize;
        let ev = ed.feed(b, &mut |e| echoed += e.len());
        // Ctrl-U erases the whole line: BS SP BS per byte.
        assert!(echoed <= 3 * MAX_LINE, "echo of {b:#x} was {echoed} bytes");
        if let LineEvent::Line(r) = ev {
            lines += 1;
            match r {
                Ok(line) => {
                    assert!(line.len() <= MAX_LINE);
                    assert!(line.bytes().all(|c| (0x20..=0x7e).contains(&c)), "{line:?}");
                    match shell::parse(line) {
                        Ok(Some(shell::Command::Ptdump(r))) => {
                            let (s, e) = r.bounds();
                            assert!(e.0 == 0 || s.0 < e.0, "{line:?}: {r:?}");
                        }
                        Ok(_) => {}
                        Err(e) => assert!(!e.to_string().is_empty()),
                    }
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
        assert!(ed.current().len() <= MAX_LINE);
    }
    lines
}

const WORDS: &[&str] = &[
    "nr_hugepages",
    "demote",
    "hugetlb_optimize_vmemmap",
    "meminfo",
    "ptdump",
    "hvo",
    "report",
    "stress",
    "help",
    "exit",
    "quit",
    "2M",
    "1G",
    "64K",
    "2048kB",
    "0x",
    "0xffff000000000000",
    "..",
    "+",
    "-",
    "on",
    "off",
    "18446744073709551615",
    "18446744073709551616",
    "vmemmap",
    "linear",
    "0",
    "1",
    "99999999999999999999",
    "\x7f",
    "\x08",
    "\x15",
    "\x03",
    "\x1b[A",
    "\x1b",
    "\r",
    "\n",
    "\r\n",
    " ",
    "\t",
    "\u{e9}",
];

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn console_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        drive(&bytes);
    }

    #[test]
    fn console_random_word_soup_never_panics(
        words in proptest::collection::vec(proptest::sample::select(WORDS), 0..40)
    ) {
        let text: String = words.concat();
        drive(text.as_bytes());
        // The same words as lines, spaced: these reach the parser's deeper branches.
        let spaced = words.join(" ") + "\r";
        prop_assert_eq!(drive(spaced.as_bytes()) >= 1, true);
    }
}
