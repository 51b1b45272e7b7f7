//! Resources a VM needs and a node offers.

use serde::{Deserialize, Serialize};

/// vCPUs, memory and disk. Stopped VMs that keep their node keep their reservation, so starting
/// them again never fails for lack of room.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Resources {
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_mib: u64,
}

/// The resource a node lacks for a VM, first in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Lacking {
    Cpus,
    Memory,
    Disk,
}

impl Lacking {
    pub fn noun(self) -> &'static str {
        match self {
            Lacking::Cpus => "cpus",
            Lacking::Memory => "memory",
            Lacking::Disk => "disk",
        }
    }
}

impl Resources {
    /// `4 cpus, 8192 MiB memory, 102400 MiB disk`.
    pub fn describe(&self) -> String {
        format!(
            "{} cpus, {} MiB memory, {} MiB disk",
            self.cpus, self.memory_mib, self.disk_mib
        )
    }

    /// `None` if `self` fits in `free`, else the first resource that is short.
    pub fn lacking_in(&self, free: &Resources) -> Option<Lacking> {
        if self.cpus > free.cpus {
            Some(Lacking::Cpus)
        } else if self.memory_mib > free.memory_mib {
            Some(Lacking::Memory)
        } else if self.disk_mib > free.disk_mib {
            Some(Lacking::Disk)
        } else {
            None
        }
    }

    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            cpus: self.cpus.saturating_add(other.cpus),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            disk_mib: self.disk_mib.saturating_add(other.disk_mib),
        }
    }

    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            cpus: self.cpus.saturating_sub(other.cpus),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            disk_mib: self.disk_mib.saturating_sub(other.disk_mib),
        }
    }
}

/// Parses a size such as `512MiB`, `2GiB`, `1.5GiB`, `1TiB` or a bare number of MiB into MiB.
/// Decimal units (`MB`, `GB`, `TB`) are read as their binary counterparts, as operators mean.
pub fn parse_mib(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; use e.g. 512MiB, 2GiB or 1TiB"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1.0,
        "g" | "gb" | "gib" => 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0,
        "k" | "kb" | "kib" => 1.0 / 1024.0,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use MiB, GiB or TiB"
            ))
        }
    };
    let mib = (number * factor).ceil();
    if !(0.0..=1e15).contains(&mib) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(mib as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_mib;

    #[test]
    fn sizes() {
        assert_eq!(parse_mib("512MiB"), Ok(512));
        assert_eq!(parse_mib("2GiB"), Ok(2048));
        assert_eq!(parse_mib("1.5G"), Ok(1536));
        assert_eq!(parse_mib("300"), Ok(300));
        assert_eq!(parse_mib("1TiB"), Ok(1 << 20));
        assert!(parse_mib("lots").is_err());
        assert!(parse_mib("2 parsecs").is_err());
    }
}
