//! The UARTs a device tree names for the console: `/aliases/serialN` and `/chosen/stdout-path`,
//! with the node's bus address translated to a CPU physical address through its parent bus's
//! `ranges`. Linux counterparts: `of_alias_scan()`/`of_alias_get_id()` and
//! `early_init_dt_scan_chosen_stdout()` (drivers/of/base.c, drivers/of/fdt.c) for the names,
//! `of_translate_address()` (drivers/of/address.c) for the address.
//!
//! Used to report which UART a board's device tree describes next to the one the firmware was
//! built for (the Pi 4's trees point `stdout-path` at the mini UART, `serial1`, while this
//! firmware logs on the PL011, `serial0`). Lookups never resolve aliases recursively: an alias
//! value is looked up as a plain path, and `stdout-path` may name one alias.
//!
//! One level of `ranges` is translated (a device on a bus directly below the root, as every
//! BCM2711 UART is); a deeper node reports its bus address and [`DtUart::phys`] `None`.

use fdt::Fdt;

/// A UART node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DtUart<'a> {
    /// The node's full path.
    pub path: &'a str,
    /// The first `compatible` string.
    pub compatible: &'a str,
    /// The first `reg` address, in the parent bus's address space.
    pub bus_addr: u64,
    /// The CPU physical address, if the parent bus translates it.
    pub phys: Option<u64>,
}

/// Why a UART could not be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DtConsoleError {
    /// Not a device tree the parser accepts.
    BadBlob,
    /// No such alias (or no `/aliases`), or no `stdout-path`.
    NoAlias,
    /// The alias or `stdout-path` names a path that is not in the tree.
    NoNode,
    /// The node has no usable `reg`.
    NoReg,
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

/// `#address-cells` / `#size-cells` of the node at `path` (the root's defaults: 2 and 1).
fn cells(fdt: &Fdt<'_>, path: &str) -> (usize, usize) {
    let read = |name: &str, default: usize| {
        fdt.find_all_nodes_path(path)
            .and_then(|n| n.property(name))
            .and_then(|p| p.value.get(..4))
            .map_or(default, |v| be(v) as usize)
    };
    (read("#address-cells", 2), read("#size-cells", 1))
}

/// Lookups by full path only (no alias resolution).
trait PathLookup<'a> {
    fn find_all_nodes_path(&self, path: &str) -> Option<fdt::node::FdtNode<'_, 'a>>;
}

impl<'a> PathLookup<'a> for Fdt<'a> {
    fn find_all_nodes_path(&self, path: &str) -> Option<fdt::node::FdtNode<'_, 'a>> {
        if !path.starts_with('/') {
            return None;
        }
        if path == "/" {
            return self.all_nodes().next();
        }
        // Walk down from the root one component at a time, matching full names (or names
        // without the unit address, as Linux's path lookup does).
        let mut node = self.all_nodes().next()?;
        for comp in path.trim_start_matches('/').split('/') {
            node = node.children().find(|c| {
                c.name == comp || c.name.split('@').next() == Some(comp) && !comp.contains('@')
            })?;
        }
        Some(node)
    }
}

/// The UART at `path`.
fn uart_at<'a>(fdt: &Fdt<'a>, path: &'a str) -> Result<DtUart<'a>, DtConsoleError> {
    let node = fdt.find_all_nodes_path(path).ok_or(DtConsoleError::NoNode)?;
    let compatible = node.compatible().map_or("", |c| c.first());
    let parent = match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => return Err(DtConsoleError::NoNode),
    };
    let (ac, _) = cells(fdt, parent);
    let reg = node.property("reg").ok_or(DtConsoleError::NoReg)?;
    let bus_addr = be(reg.value.get(..4 * ac).ok_or(DtConsoleError::NoReg)?);
    let phys = if parent == "/" { Some(bus_addr) } else { translate(fdt, parent, bus_addr) };
    Ok(DtUart { path, compatible, bus_addr, phys })
}

/// Translate `addr` on the bus at `bus` (a child of the root) through its `ranges`.
fn translate(fdt: &Fdt<'_>, bus: &str, addr: u64) -> Option<u64> {
    if bus[1..].contains('/') {
        return None;
    }
    let (child_ac, child_sc) = cells(fdt, bus);
    let (parent_ac, _) = cells(fdt, "/");
    let ranges = fdt.find_all_nodes_path(bus)?.property("ranges")?.value;
    if ranges.is_empty() {
        return Some(addr); // `ranges;`: identity
    }
    let entry = 4 * (child_ac + parent_ac + child_sc);
    if entry == 0 || child_ac > 2 || parent_ac > 2 || child_sc > 2 {
        return None;
    }
    ranges.chunks_exact(entry).find_map(|e| {
        let child = be(&e[..4 * child_ac]);
        let parent = be(&e[4 * child_ac..4 * (child_ac + parent_ac)]);
        let size = be(&e[4 * (child_ac + parent_ac)..]);
        (addr >= child && addr - child < size).then(|| parent + (addr - child))
    })
}

/// The UART `/aliases/<alias>` names (e.g. `serial0`).
pub fn alias_uart<'a>(blob: &'a [u8], alias: &str) -> Result<DtUart<'a>, DtConsoleError> {
    let fdt = Fdt::new(blob).map_err(|_| DtConsoleError::BadBlob)?;
    let path = alias_path(&fdt, alias).ok_or(DtConsoleError::NoAlias)?;
    uart_at(&fdt, path)
}

fn alias_path<'a>(fdt: &Fdt<'a>, alias: &str) -> Option<&'a str> {
    let aliases = fdt.find_all_nodes_path("/aliases")?;
    let p = aliases.properties().find(|p| p.name == alias)?;
    let s = core::str::from_utf8(p.value).ok()?.trim_end_matches('\0');
    s.starts_with('/').then_some(s)
}

/// `/chosen/stdout-path` without its `:options`, and the UART it names (a path or one alias).
pub fn stdout_uart(blob: &[u8]) -> Result<(&str, DtUart<'_>), DtConsoleError> {
    let fdt = Fdt::new(blob).map_err(|_| DtConsoleError::BadBlob)?;
    let chosen = fdt.find_all_nodes_path("/chosen").ok_or(DtConsoleError::NoAlias)?;
    let p = chosen.property("stdout-path").ok_or(DtConsoleError::NoAlias)?;
    let s = core::str::from_utf8(p.value).map_err(|_| DtConsoleError::NoAlias)?;
    let name = s.trim_end_matches('\0').split(':').next().unwrap_or("");
    let path = if name.starts_with('/') { Some(name) } else { alias_path(&fdt, name) };
    let path = path.ok_or(DtConsoleError::NoNode)?;
    Ok((name, uart_at(&fdt, path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<u8> {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/bcm2711-rpi-4-b.dtb");
        std::fs::read(path).expect("the shared DTB fixture")
    }

    #[test]
    fn pi4_serial0_is_the_pl011_at_0xfe201000() {
        let blob = fixture();
        let u = alias_uart(&blob, "serial0").unwrap();
        assert_eq!(u.path, "/soc/serial@7e201000");
        assert_eq!(u.compatible, "arm,pl011");
        assert_eq!(u.bus_addr, 0x7e20_1000);
        assert_eq!(u.phys, Some(0xfe20_1000));
    }

    #[test]
    fn pi4_stdout_is_the_mini_uart() {
        let blob = fixture();
        let (name, u) = stdout_uart(&blob).unwrap();
        assert_eq!(name, "serial1");
        assert_eq!(u.compatible, "brcm,bcm2835-aux-uart");
        assert_eq!(u.phys, Some(0xfe21_5040));
    }

    #[test]
    fn the_pi_400_and_cm4_trees_agree() {
        for name in ["bcm2711-rpi-400.dtb", "bcm2711-rpi-cm4-io.dtb"] {
            let path = format!("{}/../boards/rpi4/dtbs/{name}", env!("CARGO_MANIFEST_DIR"));
            let blob = std::fs::read(&path).unwrap();
            let u = alias_uart(&blob, "serial0").unwrap();
            assert_eq!((u.compatible, u.phys), ("arm,pl011", Some(0xfe20_1000)), "{name}");
            let (alias, u) = stdout_uart(&blob).unwrap();
            assert_eq!((alias, u.phys), ("serial1", Some(0xfe21_5040)), "{name}");
        }
    }

    #[test]
    fn missing_things_are_errors() {
        let blob = fixture();
        assert_eq!(alias_uart(&blob, "serial9"), Err(DtConsoleError::NoAlias));
        assert_eq!(alias_uart(&blob[..40], "serial0"), Err(DtConsoleError::BadBlob));
    }
}
