//! `cargo xtask sdcard`: a bootable SD-card image for a Raspberry Pi 4.
//!
//! The Pi 4's EEPROM bootloader only boots from MBR-partitioned cards, so the image has an MBR
//! with one FAT32 (LBA, type 0x0C) partition starting at 1 MiB, holding the VideoCore firmware
//! (`start4.elf`, `fixup4.dat`), `config.txt`, `cmdline.txt` (the boot arguments, which the
//! VideoCore firmware puts into `/chosen/bootargs`), `kernel8.img` and optionally the DTB.
//! [`check_card`] checks `config.txt`, `cmdline.txt` and `kernel8.img` against each other before
//! the image is written, and `cargo xtask test` checks the image again as mtools reads it back.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, ensure, Context, Result};
use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};
use fscommon::{BufStream, StreamSlice};

use crate::firmware::{self, BuildOptions};
use crate::Board;

/// Where Debian's `raspi-firmware` package puts the VideoCore firmware.
pub const DEFAULT_FIRMWARE_DIR: &str = "/usr/lib/raspi-firmware";
/// The default image size.
pub const DEFAULT_SIZE_MIB: u32 = 64;
/// The VideoCore firmware files a Pi 4 needs.
pub const FIRMWARE_FILES: [&str; 2] = ["start4.elf", "fixup4.dat"];
/// The name the Pi 4 firmware looks for its device tree under.
pub const DTB_NAME: &str = "bcm2711-rpi-4-b.dtb";
/// Every file of an image made with a DTB.
pub const IMAGE_FILES: [&str; 6] =
    ["start4.elf", "fixup4.dat", "config.txt", "cmdline.txt", "kernel8.img", DTB_NAME];
/// The boot arguments `cmdline.txt` gets by default: the README's demonstration.
pub const DEFAULT_BOOTARGS: &str = "hugepagesz=2M hugepages=64 hugepagesz=1G hugepages=1";
/// The UART reference clock the rpi4 board's firmware programs the PL011 for (boards/rpi4).
pub const UART_CLOCK_HZ: u64 = 48_000_000;
/// How to get the firmware files.
pub const FIRMWARE_HINT: &str = "install them with `apt-get install raspi-firmware` (Debian: \
    enable the `non-free-firmware` component) or copy start4.elf and fixup4.dat from the boot/ \
    directory of the raspberrypi/firmware repository and pass --firmware-dir";

/// The partition starts at 1 MiB (LBA 2048), as SD cards and Raspberry Pi OS images do.
const PART_START_LBA: u64 = 2048;
const SECTOR: u64 = 512;
/// FAT32 needs at least 65525 clusters; with 512-byte clusters that is ~33 MiB plus the FATs.
const MIN_SIZE_MIB: u32 = 40;
/// Volume label (11 bytes, space padded).
const LABEL: [u8; 11] = *b"PI4HVO BOOT";

/// Arguments of `cargo xtask sdcard`.
#[derive(clap::Args)]
pub struct Args {
    /// The image file to write [default: <target dir>/sdcard.img].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Directory holding start4.elf and fixup4.dat.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_FIRMWARE_DIR)]
    firmware_dir: PathBuf,
    /// A device tree to put on the card as bcm2711-rpi-4-b.dtb (the Pi firmware passes its own
    /// otherwise, patched, in x0).
    #[arg(long, value_name = "FILE")]
    dtb: Option<PathBuf>,
    /// Size of the image in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_SIZE_MIB)]
    size_mib: u32,
    /// Build the firmware with plain-text logging (for a bare serial terminal).
    #[arg(long)]
    plain: bool,
    /// A card for `cargo xtask flash --probe`: config.txt gets `enable_jtag_gpio=1` and
    /// kernel8.img is a stub that parks core 0 (at EL2, MMU off) for the debugger to load the
    /// firmware.
    #[arg(long)]
    jtag: bool,
    /// Boot arguments for cmdline.txt [default: hugepagesz=2M hugepages=64 hugepagesz=1G
    /// hugepages=1].
    #[arg(last = true, value_name = "BOOTARGS")]
    bootargs: Vec<String>,
}

/// What to put in the image.
pub struct Options {
    /// The image file.
    pub out: PathBuf,
    /// Where start4.elf and fixup4.dat are.
    pub firmware_dir: PathBuf,
    /// Optional DTB.
    pub dtb: Option<PathBuf>,
    /// Image size.
    pub size_mib: u32,
    /// Plain-text logging.
    pub plain: bool,
    /// The line for cmdline.txt.
    pub bootargs: String,
    /// JTAG on, and a parking stub instead of the firmware.
    pub jtag: bool,
}

/// Run the command.
pub fn main(args: Args) -> Result<ExitCode> {
    let opts = Options {
        out: args.out.unwrap_or_else(|| firmware::target_dir().join("sdcard.img")),
        firmware_dir: args.firmware_dir,
        dtb: args.dtb,
        size_mib: args.size_mib,
        plain: args.plain,
        bootargs: if args.bootargs.is_empty() {
            DEFAULT_BOOTARGS.to_string()
        } else {
            args.bootargs.join(" ")
        },
        jtag: args.jtag,
    };
    if opts.firmware_dir == Path::new(DEFAULT_FIRMWARE_DIR) {
        crate::setup::ensure(&[crate::setup::Tool::PiFirmware], false)?;
    }
    make(&opts)?;
    println!(
        "write it to a card with: dd if={} of=/dev/sdX bs=4M conv=fsync status=progress",
        opts.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Firmware files missing from `dir`.
pub fn missing_firmware(dir: &Path) -> Vec<&'static str> {
    FIRMWARE_FILES.iter().copied().filter(|f| !dir.join(f).is_file()).collect()
}

/// Build the rpi4 release firmware and write the image, then list it. Returns the kernel image
/// that went onto the card.
pub fn make(opts: &Options) -> Result<PathBuf> {
    // Check the inputs before the (long) release build.
    let missing = missing_firmware(&opts.firmware_dir);
    if !missing.is_empty() {
        bail!(
            "{} missing from {}: {FIRMWARE_HINT}",
            missing.join(" and "),
            opts.firmware_dir.display()
        );
    }
    if let Some(dtb) = &opts.dtb {
        ensure!(dtb.is_file(), "the DTB {} does not exist", dtb.display());
    }
    let fw = firmware::build(&BuildOptions {
        board: Board::Rpi4,
        release: true,
        ktest: false,
        plain: opts.plain,
    })?;
    let mut files = card_files(&opts.firmware_dir, &fw.image, opts.dtb.as_deref(), &opts.bootargs)?;
    if opts.jtag {
        for (name, data) in files.iter_mut() {
            match name.as_str() {
                "kernel8.img" => *data = parking_stub(),
                "config.txt" => data.extend_from_slice(JTAG_CONFIG.as_bytes()),
                _ => {}
            }
        }
        println!("sdcard: --jtag: kernel8.img is the parking stub; load the firmware with flash");
    }
    let summary = check_card(&files)?;
    println!("sdcard: {summary}");
    write_image(&opts.out, &files, opts.size_mib)?;
    println!("sdcard: {} ({} MiB)", opts.out.display(), opts.size_mib);
    print_listing(&opts.out)?;
    Ok(fw.image)
}

/// The files of the card: (name on the card, contents).
pub fn card_files(
    firmware_dir: &Path,
    kernel: &Path,
    dtb: Option<&Path>,
    bootargs: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut sources: Vec<(String, PathBuf)> =
        FIRMWARE_FILES.iter().map(|f| (f.to_string(), firmware_dir.join(f))).collect();
    sources.push(("config.txt".into(), config_txt_path()));
    sources.push(("kernel8.img".into(), kernel.to_path_buf()));
    if let Some(dtb) = dtb {
        sources.push((DTB_NAME.into(), dtb.to_path_buf()));
    }
    let mut files = sources
        .into_iter()
        .map(|(name, src)| {
            fs::read(&src)
                .with_context(|| format!("reading {} (for {name})", src.display()))
                .map(|data| (name, data))
        })
        .collect::<Result<Vec<_>>>()?;
    files.push(("cmdline.txt".into(), cmdline_txt(bootargs)?));
    Ok(files)
}

/// What `--jtag` appends to config.txt.
pub const JTAG_CONFIG: &str = "\n# --jtag: JTAG on GPIO22-27 for `cargo xtask flash --probe`; \
    kernel8.img is a stub that\n# parks core 0 (`wfe; b .-4` at EL2, MMU off, x0 = the DTB) \
    until the debugger loads the firmware.\nenable_jtag_gpio=1\n";

/// A kernel8.img that parks core 0 for a debugger: an arm64 Image header (text_offset
/// [`firmware::LOAD_ADDR`]) whose first instruction branches to `wfe; b .-4` at offset 64.
pub fn parking_stub() -> Vec<u8> {
    let mut k = vec![0u8; 72];
    k[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b +64
    k[8..16].copy_from_slice(&firmware::LOAD_ADDR.to_le_bytes()); // text_offset
    k[16..24].copy_from_slice(&72u64.to_le_bytes()); // image_size
    k[firmware::IMAGE_MAGIC_OFFSET..firmware::IMAGE_MAGIC_OFFSET + 4]
        .copy_from_slice(&firmware::IMAGE_MAGIC);
    k[64..68].copy_from_slice(&0xd503_205fu32.to_le_bytes()); // wfe
    k[68..72].copy_from_slice(&0x17ff_ffffu32.to_le_bytes()); // b .-4
    k
}

/// `boards/rpi4/config.txt`.
pub fn config_txt_path() -> PathBuf {
    firmware::project_root().join("boards/rpi4/config.txt")
}

/// `cmdline.txt`: one line. The firmware reads only the first line.
pub fn cmdline_txt(bootargs: &str) -> Result<Vec<u8>> {
    ensure!(
        !bootargs.contains(['\n', '\r']),
        "boot arguments must be one line (cmdline.txt holds one): {bootargs:?}"
    );
    Ok(format!("{}\n", bootargs.trim()).into_bytes())
}

/// The `key=value` settings of a config.txt, comments and section filters (`[pi4]`) aside.
pub fn config_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// What [`check_card`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct CardSummary {
    /// `kernel_address`, equal to the image's text_offset.
    pub kernel_address: u64,
    /// The boot arguments in cmdline.txt.
    pub bootargs: String,
    /// Size of kernel8.img.
    pub kernel_len: usize,
}

impl std::fmt::Display for CardSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "config.txt kernel_address={:#x} = kernel8.img text_offset ({} bytes, arm64 Image \
             magic), cmdline.txt {:?}",
            self.kernel_address, self.kernel_len, self.bootargs
        )
    }
}

/// Parse a number as config.txt writes it (decimal or 0x hex).
fn config_number(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Check config.txt, cmdline.txt and kernel8.img of `files` against each other: the kernel named
/// by `kernel=` is on the card and is an arm64 Image whose text_offset is `kernel_address`, the
/// cores start in AArch64, the UART is enabled with the clock the firmware assumes, and
/// cmdline.txt is one line.
pub fn check_card(files: &[(String, Vec<u8>)]) -> Result<CardSummary> {
    let get = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, d)| d.as_slice());
    let config = get("config.txt").context("no config.txt on the card")?;
    let config = std::str::from_utf8(config).context("config.txt is not UTF-8")?;
    let settings = config_settings(config);
    let setting = |key: &str| settings.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v);
    ensure!(setting("arm_64bit").map(String::as_str) == Some("1"), "config.txt lacks arm_64bit=1");
    ensure!(
        setting("enable_uart").map(String::as_str) == Some("1"),
        "config.txt lacks enable_uart=1"
    );
    let clock = setting("init_uart_clock").and_then(|v| config_number(v));
    ensure!(
        clock == Some(UART_CLOCK_HZ),
        "config.txt's init_uart_clock is {clock:?}, the firmware assumes {UART_CLOCK_HZ} Hz"
    );
    let kernel_name = setting("kernel").map_or("kernel8.img", String::as_str);
    let kernel = get(kernel_name)
        .with_context(|| format!("config.txt names kernel={kernel_name}, not on the card"))?;
    ensure!(
        kernel.get(firmware::IMAGE_MAGIC_OFFSET..firmware::IMAGE_MAGIC_OFFSET + 4)
            == Some(&firmware::IMAGE_MAGIC[..]),
        "{kernel_name} has no arm64 Image magic (ARM\\x64) at offset {}",
        firmware::IMAGE_MAGIC_OFFSET
    );
    let text_offset = u64::from_le_bytes(kernel[8..16].try_into().expect("8 bytes"));
    let address = setting("kernel_address")
        .context("config.txt has no kernel_address (the firmware's default may differ)")?;
    let address =
        config_number(address).with_context(|| format!("kernel_address={address} unreadable"))?;
    ensure!(
        address == text_offset,
        "config.txt's kernel_address={address:#x} differs from {kernel_name}'s text_offset \
         {text_offset:#x}"
    );
    let cmdline = get("cmdline.txt").context("no cmdline.txt on the card")?;
    let cmdline = std::str::from_utf8(cmdline).context("cmdline.txt is not UTF-8")?;
    let line = cmdline.strip_suffix('\n').unwrap_or(cmdline);
    ensure!(!line.contains(['\n', '\r']), "cmdline.txt has more than one line: {cmdline:?}");
    Ok(CardSummary {
        kernel_address: address,
        bootargs: line.to_string(),
        kernel_len: kernel.len(),
    })
}

/// Print the root directory of the image's FAT partition.
pub fn print_listing(img: &Path) -> Result<()> {
    println!("root directory of the FAT32 partition:");
    for (name, size) in list_image(img)? {
        println!("  {size:>10}  {name}");
    }
    Ok(())
}

/// Write an MBR-partitioned FAT32 image holding `files`.
pub fn write_image(out: &Path, files: &[(String, Vec<u8>)], size_mib: u32) -> Result<()> {
    ensure!(
        size_mib >= MIN_SIZE_MIB,
        "--size-mib {size_mib} is too small for FAT32; use at least {MIN_SIZE_MIB}"
    );
    let contents = files;
    let total: u64 = contents.iter().map(|(_, d)| d.len() as u64).sum();
    let size = u64::from(size_mib) << 20;
    ensure!(
        total + (8 << 20) < size,
        "the files take {} KiB; raise --size-mib above {size_mib}",
        total >> 10
    );
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let ctx = || format!("writing the SD image {}", out.display());
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(ctx)?;
    file.set_len(size).with_context(ctx)?;
    let part_sectors = size / SECTOR - PART_START_LBA;
    file.write_all(&mbr(PART_START_LBA as u32, part_sectors as u32)).with_context(ctx)?;

    let part_start = PART_START_LBA * SECTOR;
    let mut part = BufStream::new(StreamSlice::new(file, part_start, size).with_context(ctx)?);
    fatfs::format_volume(
        &mut part,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .bytes_per_cluster(512)
            .volume_label(LABEL),
    )
    .context("formatting the FAT32 partition")?;
    set_hidden_sectors(&mut part, PART_START_LBA as u32).with_context(ctx)?;
    part.seek(SeekFrom::Start(0)).with_context(ctx)?;
    {
        let fs = FileSystem::new(&mut part, FsOptions::new()).context("opening the new FAT32")?;
        let root = fs.root_dir();
        for (name, data) in contents {
            let mut f =
                root.create_file(name).with_context(|| format!("creating {name} in the image"))?;
            f.truncate().with_context(ctx)?;
            f.write_all(data).with_context(|| format!("writing {name} into the image"))?;
        }
        drop(root);
        fs.unmount().context("unmounting the FAT32")?;
    }
    part.flush().with_context(ctx)?;
    Ok(())
}

/// The volume's "hidden sectors" (sectors before the partition) in the boot sector and its
/// backup: fatfs formats a bare volume and leaves it 0.
fn set_hidden_sectors<S: Read + Write + Seek>(part: &mut S, hidden: u32) -> std::io::Result<()> {
    let mut backup = [0u8; 2];
    part.seek(SeekFrom::Start(0x32))?;
    part.read_exact(&mut backup)?;
    let backup = u64::from(u16::from_le_bytes(backup));
    part.seek(SeekFrom::Start(0x1C))?;
    part.write_all(&hidden.to_le_bytes())?;
    if backup != 0 {
        part.seek(SeekFrom::Start(backup * SECTOR + 0x1C))?;
        part.write_all(&hidden.to_le_bytes())?;
    }
    Ok(())
}

/// An MBR with one bootable FAT32-LBA partition.
fn mbr(start_lba: u32, sectors: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[0x1B8..0x1BC].copy_from_slice(&0x5034_4856u32.to_le_bytes()); // disk id "VH4P"
    let e = &mut m[0x1BE..0x1CE];
    e[0] = 0x80; // bootable
    e[1..4].copy_from_slice(&chs(start_lba));
    e[4] = 0x0C; // FAT32 with LBA
    e[5..8].copy_from_slice(&chs(start_lba + sectors - 1));
    e[8..12].copy_from_slice(&start_lba.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// CHS address of an LBA with 255 heads and 63 sectors per track (saturating at 1023/254/63).
fn chs(lba: u32) -> [u8; 3] {
    let (heads, spt) = (255, 63);
    let cyl = lba / (heads * spt);
    if cyl > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / spt) % heads;
    let sector = lba % spt + 1;
    [head as u8, (sector as u8) | (((cyl >> 8) as u8) << 6), cyl as u8]
}

/// The root directory of the image's FAT partition: (name, size).
pub fn list_image(img: &Path) -> Result<Vec<(String, u64)>> {
    let ctx = || format!("reading the SD image {}", img.display());
    let mut file = fs::File::open(img).with_context(ctx)?;
    let mut sector = [0u8; 512];
    file.read_exact(&mut sector).with_context(ctx)?;
    ensure!(sector[510..] == [0x55, 0xAA], "{} has no MBR signature", img.display());
    let e = &sector[0x1BE..0x1CE];
    let start = u64::from(u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")));
    let count = u64::from(u32::from_le_bytes(e[12..16].try_into().expect("4 bytes")));
    ensure!(count > 0, "{} has no first partition", img.display());
    let slice = StreamSlice::new(
        OpenOptions::new().read(true).write(true).open(img).with_context(ctx)?,
        start * SECTOR,
        (start + count) * SECTOR,
    )
    .with_context(ctx)?;
    let fs = FileSystem::new(slice, FsOptions::new()).context("opening the FAT partition")?;
    let mut out = Vec::new();
    for entry in fs.root_dir().iter() {
        let entry = entry.with_context(ctx)?;
        out.push((entry.file_name(), entry.len()));
    }
    Ok(out)
}

/// `mdir -i IMG@@1M ::`: list the image's FAT partition with mtools.
pub fn mdir(img: &Path) -> Result<String> {
    let target = format!("{}@@{}", img.display(), PART_START_LBA * SECTOR);
    let out =
        Command::new("mdir").args(["-i", &target, "::"]).env("MTOOLS_SKIP_CHECK", "1").output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mdir is not installed: apt-get install mtools")
        }
        Err(e) => return Err(e).context("running mdir"),
    };
    ensure!(
        out.status.success(),
        "mdir -i {target} :: failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Read `name` from the image's FAT partition with mtools (`mcopy`), as a second, independent
/// reader of what fatfs wrote.
pub fn mtools_read(img: &Path, name: &str, scratch: &Path) -> Result<Vec<u8>> {
    let target = format!("{}@@{}", img.display(), PART_START_LBA * SECTOR);
    let dest = scratch.join(format!("mcopy-{name}"));
    let out = Command::new("mcopy")
        .args(["-n", "-o", "-i", &target])
        .arg(format!("::{name}"))
        .arg(&dest)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mcopy is not installed: apt-get install mtools")
        }
        Err(e) => return Err(e).context("running mcopy"),
    };
    ensure!(
        out.status.success(),
        "mcopy -i {target} ::{name} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let data = fs::read(&dest).with_context(|| format!("reading {}", dest.display()))?;
    let _ = fs::remove_file(&dest);
    Ok(data)
}

/// Does an `mdir` listing show `name`? mdir shows the long name last on an entry's line, or
/// only the 8.3 name (`NAME     EXT`) when the long name is not needed.
pub fn mdir_lists(listing: &str, name: &str) -> bool {
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    listing.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.last().is_some_and(|w| *w == name)
            || (words.len() >= 2
                && words[0].eq_ignore_ascii_case(stem)
                && words[1].eq_ignore_ascii_case(ext))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_lists_exactly_the_six_files() {
        let tmp = tempfile::tempdir().unwrap();
        let fw_dir = tmp.path().join("firmware");
        fs::create_dir(&fw_dir).unwrap();
        fs::write(fw_dir.join("start4.elf"), vec![0x5A; 70_000]).unwrap();
        fs::write(fw_dir.join("fixup4.dat"), b"fixup").unwrap();
        let kernel = tmp.path().join("kernel8.img");
        fs::write(&kernel, vec![0xA5; 5000]).unwrap();
        let dtb = tmp.path().join("some.dtb");
        fs::write(&dtb, b"\xd0\x0d\xfe\xed").unwrap();

        let files = card_files(&fw_dir, &kernel, Some(&dtb), "ktest  ").unwrap();
        let img = tmp.path().join("sd.img");
        write_image(&img, &files, 48).unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), 48 << 20);

        let mut listed = list_image(&img).unwrap();
        listed.sort();
        let config_len =
            fs::metadata(firmware::project_root().join("boards/rpi4/config.txt")).unwrap().len();
        let mut expected = vec![
            ("start4.elf".to_string(), 70_000),
            ("fixup4.dat".to_string(), 5),
            ("config.txt".to_string(), config_len),
            ("cmdline.txt".to_string(), 6),
            ("kernel8.img".to_string(), 5000),
            (DTB_NAME.to_string(), 4),
        ];
        expected.sort();
        assert_eq!(listed, expected);

        // The MBR describes one bootable FAT32-LBA partition at 1 MiB.
        let raw = fs::read(&img).unwrap();
        assert_eq!(raw[0x1BE], 0x80);
        assert_eq!(raw[0x1C2], 0x0C);
        assert_eq!(&raw[0x1C6..0x1CA], &2048u32.to_le_bytes());
        // Boot sector: FAT32 signature and hidden sectors = partition start.
        let bs = &raw[1 << 20..(1 << 20) + 512];
        assert_eq!(&bs[0x52..0x5A], b"FAT32   ");
        assert_eq!(&bs[0x1C..0x20], &2048u32.to_le_bytes());

        // Read a file back.
        let slice =
            StreamSlice::new(fs::File::open(&img).map(ReadOnly).unwrap(), 1 << 20, 48 << 20)
                .unwrap();
        let fs = FileSystem::new(slice, FsOptions::new()).unwrap();
        let mut data = Vec::new();
        fs.root_dir().open_file("kernel8.img").unwrap().read_to_end(&mut data).unwrap();
        assert_eq!(data, vec![0xA5; 5000]);

        // mtools, when installed, agrees.
        if let Ok(listing) = mdir(&img) {
            for name in IMAGE_FILES {
                assert!(mdir_lists(&listing, name), "{name} not in\n{listing}");
            }
        }
    }

    /// A read-only file that fatfs can open (it wants `Write`, but mounting does not write).
    struct ReadOnly(fs::File);
    impl Read for ReadOnly {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for ReadOnly {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("read-only"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Seek for ReadOnly {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.0.seek(pos)
        }
    }

    /// A minimal arm64 Image: header with text_offset and magic.
    fn image(text_offset: u64, magic: &[u8; 4]) -> Vec<u8> {
        let mut k = vec![0u8; 4096];
        k[8..16].copy_from_slice(&text_offset.to_le_bytes());
        k[56..60].copy_from_slice(magic);
        k
    }

    fn card(config: &str, kernel: Vec<u8>, cmdline: &str) -> Vec<(String, Vec<u8>)> {
        vec![
            ("config.txt".into(), config.as_bytes().to_vec()),
            ("kernel8.img".into(), kernel),
            ("cmdline.txt".into(), cmdline.as_bytes().to_vec()),
        ]
    }

    #[test]
    fn the_project_config_agrees_with_an_image_at_0x80000() {
        let config = fs::read_to_string(config_txt_path()).unwrap();
        let files = card(&config, image(0x80000, b"ARM\x64"), "hugepages=8\n");
        let s = check_card(&files).unwrap();
        assert_eq!(
            s,
            CardSummary {
                kernel_address: 0x80000,
                bootargs: "hugepages=8".into(),
                kernel_len: 4096
            }
        );
        // Every setting line in config.txt is explained by a comment right above it.
        let lines: Vec<&str> = config.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.starts_with('#') && !l.trim().is_empty() {
                assert!(i > 0 && lines[i - 1].starts_with('#'), "uncommented: {l}");
            }
        }
        // The UART clock the board crate programs is the one config.txt sets.
        let board =
            fs::read_to_string(firmware::project_root().join("boards/rpi4/src/main.rs")).unwrap();
        assert!(board.contains("clock_hz: 48_000_000"), "boards/rpi4 changed its UART clock");
    }

    #[test]
    fn jtag_card_is_consistent_and_parks() {
        let mut config = fs::read_to_string(config_txt_path()).unwrap();
        assert!(!config_settings(&config).iter().any(|(k, _)| k == "enable_jtag_gpio"));
        config.push_str(JTAG_CONFIG);
        assert!(config_settings(&config).contains(&("enable_jtag_gpio".into(), "1".into())));
        let stub = parking_stub();
        check_card(&card(&config, stub.clone(), "x\n")).unwrap();
        // b +64 lands on the wfe; the b .-4 after it goes back to the wfe.
        let insn = |o: usize| u32::from_le_bytes(stub[o..o + 4].try_into().unwrap());
        assert_eq!(insn(0) >> 26, 0b000101);
        assert_eq!((insn(0) & 0x03ff_ffff) * 4, 64);
        assert_eq!(insn(64), 0xd503_205f);
        assert_eq!(insn(68) >> 26, 0b000101);
        assert_eq!(insn(68) & 0x03ff_ffff, 0x03ff_ffff); // -1 instruction
    }

    #[test]
    fn inconsistent_cards_are_refused() {
        let good = "arm_64bit=1\nkernel=kernel8.img\nkernel_address=0x80000\nenable_uart=1\n\
                    init_uart_clock=48000000\n";
        assert!(check_card(&card(good, image(0x80000, b"ARM\x64"), "a b\n")).is_ok());
        let cases: [(&str, Vec<u8>, &str, &str); 7] = [
            (good, image(0x200000, b"ARM\x64"), "x\n", "differs from kernel8.img's text_offset"),
            (good, image(0x80000, b"ARM\x00"), "x\n", "no arm64 Image magic"),
            (
                &good.replace("kernel_address=0x80000\n", ""),
                image(0x80000, b"ARM\x64"),
                "x\n",
                "no kernel_address",
            ),
            (
                &good.replace("arm_64bit=1", "arm_64bit=0"),
                image(0x80000, b"ARM\x64"),
                "x\n",
                "arm_64bit=1",
            ),
            (
                &good.replace("48000000", "3000000"),
                image(0x80000, b"ARM\x64"),
                "x\n",
                "init_uart_clock",
            ),
            (
                &good.replace("kernel8.img", "other.img"),
                image(0x80000, b"ARM\x64"),
                "x\n",
                "not on the card",
            ),
            (good, image(0x80000, b"ARM\x64"), "a\nb\n", "more than one line"),
        ];
        for (config, kernel, cmdline, want) in cases {
            let err = check_card(&card(config, kernel, cmdline)).unwrap_err().to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
        // A commented-out setting does not count.
        let commented = good.replace("enable_uart=1", "#enable_uart=1");
        assert!(check_card(&card(&commented, image(0x80000, b"ARM\x64"), "x\n")).is_err());
        assert!(cmdline_txt("a\nb").is_err());
        assert_eq!(cmdline_txt(" hugepages=1 ").unwrap(), b"hugepages=1\n");
    }

    #[test]
    fn missing_firmware_says_what_to_install() {
        let tmp = tempfile::tempdir().unwrap();
        let err = make(&Options {
            out: tmp.path().join("x.img"),
            firmware_dir: tmp.path().to_path_buf(),
            dtb: None,
            size_mib: 64,
            plain: false,
            bootargs: String::new(),
            jtag: false,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("start4.elf and fixup4.dat missing"), "{err}");
        assert!(err.contains("apt-get install raspi-firmware"), "{err}");
        assert!(err.contains("raspberrypi/firmware"), "{err}");
    }

    #[test]
    fn too_small_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let err = write_image(&tmp.path().join("x.img"), &[], 16).unwrap_err();
        assert!(err.to_string().contains("too small"), "{err}");
    }

    #[test]
    fn mdir_listing_matches_long_and_short_names() {
        let listing = " Volume in drive : is PI4HVO BOOT\n\
            START4   ELF   2253376 2024-01-01  12:00  start4.elf\n\
            CONFIG   TXT       800 2024-01-01  12:00  config.txt\n\
            KERNEL8  IMG     80000 2024-01-01  12:00\n";
        assert!(mdir_lists(listing, "start4.elf"));
        assert!(mdir_lists(listing, "config.txt"));
        assert!(mdir_lists(listing, "kernel8.img"));
        assert!(!mdir_lists(listing, "fixup4.dat"));
    }
}
