//! The guest's IP addresses as libvirt sees them: the DHCP leases of a libvirt network first,
//! else the host's ARP table for the domain's MACs (a bridge the host has an address on).
//! The QEMU guest agent source is not asked: Paddock's domains define no agent channel.

use std::ffi::CStr;
use std::os::raw::c_void;

use virt::domain::Domain;
use virt::sys;

use crate::drivers::DriverError;

extern "C" {
    /// libc's `free`, for the array libvirt allocated.
    fn free(ptr: *mut c_void);
}

/// The domain's addresses from the first source that knows any (`ADDR/PREFIX`, or `ADDR`
/// where the source gives no prefix), link-local IPv6 left out.
pub fn of(domain: &Domain) -> Result<Vec<String>, DriverError> {
    for source in [
        sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
        sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
    ] {
        // A source that does not apply (no libvirt network for leases) is an error: next.
        if let Ok(found) = from(domain, source) {
            if !found.is_empty() {
                return Ok(found);
            }
        }
    }
    Ok(Vec::new())
}

/// `virDomainInterfaceAddresses`, copied out and freed the way libvirt says (each interface
/// with `virDomainInterfaceFree`, the array with `free`); `virt` 0.5's wrapper leaks them.
#[allow(unsafe_code)]
fn from(domain: &Domain, source: u32) -> Result<Vec<String>, DriverError> {
    let mut ifaces: *mut sys::virDomainInterfacePtr = std::ptr::null_mut();
    // SAFETY: the domain is alive for the call; libvirt fills `ifaces` with `n` pointers.
    let n = unsafe { sys::virDomainInterfaceAddresses(domain.as_ptr(), &mut ifaces, source, 0) };
    if n < 0 {
        return Err(DriverError(format!(
            "cannot read the guest's addresses: {}",
            virt::error::Error::last_error()
        )));
    }
    let mut found = Vec::new();
    for i in 0..n as usize {
        // SAFETY: `i < n`; each entry is a valid interface until freed below.
        unsafe {
            let iface = *ifaces.add(i);
            if iface.is_null() {
                continue;
            }
            for j in 0..(*iface).naddrs as usize {
                let entry = &*(*iface).addrs.add(j);
                if entry.addr.is_null() {
                    continue;
                }
                let addr = CStr::from_ptr(entry.addr).to_string_lossy().into_owned();
                if addr.starts_with("fe80:") {
                    continue;
                }
                found.push(match entry.prefix {
                    0 => addr,
                    prefix => format!("{addr}/{prefix}"),
                });
            }
            sys::virDomainInterfaceFree(iface);
        }
    }
    if !ifaces.is_null() {
        // SAFETY: the array came from libvirt's allocator, its entries are freed above.
        unsafe { free(ifaces.cast()) };
    }
    found.sort();
    found.dedup();
    Ok(found)
}
