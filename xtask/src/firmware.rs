//! Building the firmware ELF and turning it into a flat `kernel8.img`.
//!
//! The board crate `board-<B>` links the firmware into the bin `pi4-hvo-<B>`; the image is the
//! ELF's `PT_LOAD` segments laid out by physical address, which is what both QEMU's `-kernel`
//! and the Pi 4 firmware's `kernel8.img` loader expect.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::Endianness;

use crate::Board;

/// The rustc target the firmware is built for.
pub const TARGET: &str = "aarch64-unknown-none";
/// The physical address the image is loaded at (QEMU and `kernel_address` in config.txt).
pub const LOAD_ADDR: u64 = 0x80000;
/// Offset and value of the arm64 Image header magic (`ARM\x64`).
pub const IMAGE_MAGIC_OFFSET: usize = 56;
/// The arm64 Image header magic.
pub const IMAGE_MAGIC: [u8; 4] = *b"ARM\x64";
/// Refuse to write images larger than this: a wrong `p_paddr` would zero-fill gigabytes.
const MAX_IMAGE_SIZE: u64 = 256 << 20;

/// The project root: the workspace directory above `xtask/`.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the project root")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative paths taken from the project root,
/// where the inner cargo runs) or `<root>/target`.
pub fn target_dir() -> PathBuf {
    let root = project_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// The cargo binary that invoked us (so the pinned toolchain is used), else `cargo`.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Is the rustc target installed? `None` when rustup is not available to ask.
pub fn target_installed() -> Option<bool> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(project_root())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == TARGET))
}

/// Install the rustc target with rustup if it is missing.
pub fn ensure_target() -> Result<()> {
    match target_installed() {
        Some(true) => Ok(()),
        None => {
            eprintln!("xtask: rustup not found; assuming the {TARGET} target is installed");
            Ok(())
        }
        Some(false) => {
            eprintln!("xtask: rustup target add {TARGET}");
            let status = Command::new("rustup")
                .args(["target", "add", TARGET])
                .current_dir(project_root())
                .status()
                .context("could not run rustup")?;
            ensure!(
                status.success(),
                "`rustup target add {TARGET}` failed ({status}); run it by hand"
            );
            Ok(())
        }
    }
}

/// What to build.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildOptions {
    /// Which board crate.
    pub board: Board,
    /// `--release` (LTO, opt-level 3) instead of the dev profile.
    pub release: bool,
    /// Build the on-target tests in (feature `ktest`).
    pub ktest: bool,
    /// Plain-text log instead of defmt frames (feature `plain-log`).
    pub plain: bool,
}

impl BuildOptions {
    /// The cargo arguments for this build.
    pub fn cargo_args(&self) -> Vec<String> {
        let mut args = vec![
            "build".to_string(),
            "-p".to_string(),
            format!("board-{}", self.board.name()),
            "--target".to_string(),
            TARGET.to_string(),
        ];
        if self.release {
            args.push("--release".into());
        }
        let mut features = Vec::new();
        if self.plain {
            args.push("--no-default-features".into());
            features.push("plain-log");
        }
        if self.ktest {
            features.push("ktest");
        }
        if !features.is_empty() {
            args.push("--features".into());
            args.push(features.join(","));
        }
        args
    }

    /// Where cargo puts the ELF.
    pub fn elf_path(&self) -> PathBuf {
        target_dir()
            .join(TARGET)
            .join(if self.release { "release" } else { "debug" })
            .join(format!("pi4-hvo-{}", self.board.name()))
    }
}

/// A built firmware: the ELF and the flat image next to it.
#[derive(Debug)]
pub struct Firmware {
    /// The linked ELF (symbols, DWARF, `.defmt`).
    pub elf: PathBuf,
    /// `kernel8.img` next to the ELF.
    pub image: PathBuf,
    /// Size of the image in bytes.
    pub size: u64,
    /// Physical address of the image's first byte.
    pub load_addr: u64,
}

/// Build the firmware and write `kernel8.img` next to the ELF.
pub fn build(opts: &BuildOptions) -> Result<Firmware> {
    let root = project_root();
    let args = opts.cargo_args();
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(cargo())
        .args(&args)
        .current_dir(&root)
        .status()
        .context("could not start cargo")?;
    if !status.success() {
        bail!(
            "building the {} firmware failed ({status}); the cargo output above says why \
             (if the target is missing: rustup target add {TARGET})",
            opts.board.name()
        );
    }
    let elf = opts.elf_path();
    let image = elf.with_file_name("kernel8.img");
    let fw = write_image(&elf, &image)?;
    println!("image: {} ({} bytes, load address {:#x})", fw.image.display(), fw.size, fw.load_addr);
    Ok(fw)
}

/// Turn `elf` into a checked flat image at `image`.
pub fn write_image(elf: &Path, image: &Path) -> Result<Firmware> {
    let data =
        fs::read(elf).with_context(|| format!("reading the firmware ELF {}", elf.display()))?;
    let flat =
        flat_image(&data).with_context(|| format!("making an image from {}", elf.display()))?;
    check_image(&flat)
        .with_context(|| format!("checking the image made from {}", elf.display()))?;
    fs::write(image, &flat.bytes).with_context(|| format!("writing {}", image.display()))?;
    Ok(Firmware {
        elf: elf.to_path_buf(),
        image: image.to_path_buf(),
        size: flat.bytes.len() as u64,
        load_addr: flat.load_addr,
    })
}

/// A flat binary and the physical address of its first byte.
#[derive(Debug, PartialEq, Eq)]
pub struct FlatImage {
    /// Physical address of `bytes[0]`.
    pub load_addr: u64,
    /// The loadable file contents, gaps zero-filled, bss left out.
    pub bytes: Vec<u8>,
}

/// Lay out the `PT_LOAD` segments of a 64-bit little-endian AArch64 ELF by physical address.
///
/// The image runs from the lowest `p_paddr` of a loadable segment with file data to the end of
/// the last segment's file data; gaps are zero-filled and bss (`p_memsz` beyond `p_filesz`) is
/// left out.
pub fn flat_image(data: &[u8]) -> Result<FlatImage> {
    let file = ElfFile64::<Endianness>::parse(data)
        .context("not a 64-bit ELF file (the firmware is built for aarch64-unknown-none)")?;
    let endian = file.endian();
    let header = file.elf_header();
    ensure!(
        header.e_machine(endian) == elf::EM_AARCH64,
        "the ELF is for machine {} (EM_AARCH64 is {})",
        header.e_machine(endian),
        elf::EM_AARCH64
    );
    ensure!(
        endian == Endianness::Little,
        "the ELF is big-endian; the firmware must be little-endian"
    );

    let mut segments = Vec::new();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) != elf::PT_LOAD || ph.p_filesz(endian) == 0 {
            continue;
        }
        let paddr = ph.p_paddr(endian);
        let bytes = ph.data(endian, data).map_err(|_| {
            anyhow::anyhow!("segment at p_paddr {paddr:#x} has file data outside the ELF")
        })?;
        segments.push((paddr, bytes));
    }
    ensure!(!segments.is_empty(), "the ELF has no PT_LOAD segment with file data");
    segments.sort_by_key(|&(paddr, _)| paddr);

    let start = segments[0].0;
    let end = segments
        .iter()
        .map(|&(paddr, bytes)| paddr + bytes.len() as u64)
        .max()
        .expect("at least one segment");
    ensure!(
        end - start <= MAX_IMAGE_SIZE,
        "the loadable segments span {start:#x}..{end:#x} ({} MiB); check the p_paddr values \
         (AT() in linker.ld)",
        (end - start) >> 20
    );
    let mut out = vec![0u8; (end - start) as usize];
    let mut covered_to = start;
    for (paddr, bytes) in segments {
        ensure!(paddr >= covered_to, "PT_LOAD segments overlap at physical address {paddr:#x}");
        let off = (paddr - start) as usize;
        out[off..off + bytes.len()].copy_from_slice(bytes);
        covered_to = paddr + bytes.len() as u64;
    }
    Ok(FlatImage { load_addr: start, bytes: out })
}

/// The image must start at [`LOAD_ADDR`] with an arm64 Image header.
pub fn check_image(image: &FlatImage) -> Result<()> {
    ensure!(
        image.load_addr == LOAD_ADDR,
        "the image starts at physical address {:#x}, expected {LOAD_ADDR:#x}: the lowest loadable \
         segment must be linked AT({LOAD_ADDR:#x}) (see linker.ld)",
        image.load_addr
    );
    let magic = image.bytes.get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4);
    ensure!(
        magic == Some(&IMAGE_MAGIC[..]),
        "no arm64 Image header: bytes 56..60 are {magic:02x?}, expected \"ARM\\x64\" \
         (the firmware's first section, .text.head, must carry the header)"
    );
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use object::write::elf::{FileHeader as WFileHeader, ProgramHeader as WProgramHeader, Writer};

    /// A synthetic AArch64 ELF: (p_paddr, file bytes, memsz) per PT_LOAD segment, plus one
    /// non-load segment, written with `object::write`.
    pub fn synthetic_elf(segments: &[(u64, Vec<u8>, u64)]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = Writer::new(Endianness::Little, true, &mut buf);
        w.reserve_file_header();
        w.reserve_program_headers(segments.len() as u32 + 1);
        let offsets: Vec<usize> =
            segments.iter().map(|(_, bytes, _)| w.reserve(bytes.len(), 4096)).collect();
        w.write_file_header(&WFileHeader {
            os_abi: 0,
            abi_version: 0,
            e_type: elf::ET_EXEC,
            e_machine: elf::EM_AARCH64,
            e_entry: 0xFFFF_8000_0008_0000,
            e_flags: 0,
        })
        .unwrap();
        w.write_align_program_headers();
        for ((paddr, bytes, memsz), off) in segments.iter().zip(&offsets) {
            w.write_program_header(&WProgramHeader {
                p_type: elf::PT_LOAD,
                p_flags: elf::PF_R,
                p_offset: *off as u64,
                p_vaddr: 0xFFFF_8000_0000_0000 + paddr,
                p_paddr: *paddr,
                p_filesz: bytes.len() as u64,
                p_memsz: *memsz,
                p_align: 4096,
            });
        }
        w.write_program_header(&WProgramHeader {
            p_type: elf::PT_NOTE,
            p_flags: elf::PF_R,
            p_offset: 0,
            p_vaddr: 0,
            p_paddr: 0,
            p_filesz: 0,
            p_memsz: 0,
            p_align: 1,
        });
        for ((_, bytes, _), off) in segments.iter().zip(&offsets) {
            w.pad_until(*off);
            w.write(bytes);
        }
        buf
    }

    /// A text segment starting with an arm64 Image header.
    pub fn text_with_header(len: usize) -> Vec<u8> {
        let mut text = vec![0xAA; len];
        text[IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4].copy_from_slice(&IMAGE_MAGIC);
        text
    }

    #[test]
    fn segments_laid_out_by_paddr_with_gaps_zeroed_and_bss_dropped() {
        let text = text_with_header(0x100);
        let rodata = vec![0xBB; 0x10];
        let data = vec![0xCC; 0x8];
        // Out of order in the file, a gap between text and rodata, bss after data.
        let elf = synthetic_elf(&[
            (0x82000, rodata.clone(), 0x10),
            (0x80000, text.clone(), 0x100),
            (0x83000, data.clone(), 0x5000),
            (0x90000, Vec::new(), 0x1000), // memsz only: no file data, ignored
        ]);
        let img = flat_image(&elf).unwrap();
        assert_eq!(img.load_addr, 0x80000);
        assert_eq!(img.bytes.len(), 0x3008);
        assert_eq!(&img.bytes[..0x100], &text[..]);
        assert!(img.bytes[0x100..0x2000].iter().all(|&b| b == 0));
        assert_eq!(&img.bytes[0x2000..0x2010], &rodata[..]);
        assert!(img.bytes[0x2010..0x3000].iter().all(|&b| b == 0));
        assert_eq!(&img.bytes[0x3000..], &data[..]);
        check_image(&img).unwrap();
    }

    #[test]
    fn wrong_load_address_is_rejected() {
        let elf = synthetic_elf(&[(0x100000, text_with_header(0x80), 0x80)]);
        let img = flat_image(&elf).unwrap();
        let err = check_image(&img).unwrap_err().to_string();
        assert!(err.contains("0x100000") && err.contains("0x80000"), "{err}");
    }

    #[test]
    fn missing_image_magic_is_rejected() {
        let elf = synthetic_elf(&[(0x80000, vec![0x11; 0x80], 0x80)]);
        let img = flat_image(&elf).unwrap();
        let err = check_image(&img).unwrap_err().to_string();
        assert!(err.contains("arm64 Image header"), "{err}");
    }

    #[test]
    fn overlapping_segments_are_rejected() {
        let elf = synthetic_elf(&[
            (0x80000, text_with_header(0x100), 0x100),
            (0x80080, vec![1; 0x10], 0x10),
        ]);
        assert!(flat_image(&elf).unwrap_err().to_string().contains("overlap"));
    }

    #[test]
    fn not_an_elf_is_rejected() {
        assert!(flat_image(b"definitely not an ELF file, no sir").is_err());
    }

    #[test]
    fn feature_flags() {
        let o = BuildOptions { board: Board::QemuRaspi4b, release: true, ktest: true, plain: true };
        let args = o.cargo_args().join(" ");
        assert_eq!(
            args,
            "build -p board-qemu-raspi4b --target aarch64-unknown-none --release \
             --no-default-features --features plain-log,ktest"
        );
        assert!(o.elf_path().ends_with("aarch64-unknown-none/release/pi4-hvo-qemu-raspi4b"));
        let d = BuildOptions { board: Board::Rpi4, ..Default::default() };
        assert_eq!(d.cargo_args().join(" "), "build -p board-rpi4 --target aarch64-unknown-none");
    }
}
