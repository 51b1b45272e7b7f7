//! libvirt's domain lifecycle events wake the agent: a domain that starts, stops, crashes,
//! pauses or finishes a migration is seen by the next pass at once (the agent passes at most
//! every 100 ms), not at the next periodic pass.
//!
//! libvirt delivers events from its default event loop, which must be registered before the
//! first connection and run by a thread of its own. `virt` 0.5 does not wrap domain event
//! registration; the two FFI calls below are this module's only unsafe code.

use std::ffi::c_void;
use std::os::raw::c_int;
use std::sync::{Arc, Once};

use tokio::sync::Notify;
use virt::connect::Connect;
use virt::sys;

use crate::drivers::DriverError;

static LOOP: Once = Once::new();

/// Registers libvirt's default event loop and runs it on a thread of its own (once per
/// process; later calls do nothing).
pub fn start_loop() -> Result<(), DriverError> {
    let mut failed = None;
    LOOP.call_once(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            failed = Some(format!("cannot register libvirt's event loop: {e}"));
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    tracing::warn!(error = %e, "libvirt's event loop failed; polling still sees every change");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            });
        if let Err(e) = spawned {
            failed = Some(format!("cannot start libvirt's event thread: {e}"));
        }
    });
    failed.map_or(Ok(()), |e| Err(DriverError(e)))
}

/// Lifecycle events of every domain on `conn` wake `changes`.
#[allow(unsafe_code)]
pub fn watch(conn: &Connect, changes: Arc<Notify>) -> Result<(), DriverError> {
    let opaque = Arc::into_raw(changes) as *mut c_void;
    // SAFETY: libvirt calls `lifecycle` with the arguments of a lifecycle callback (the
    // generic type is how its API takes every callback), `opaque` is an `Arc<Notify>` we own
    // one count of, released by `release` when libvirt drops the registration.
    let rc = unsafe {
        let callback: unsafe extern "C" fn(
            sys::virConnectPtr,
            sys::virDomainPtr,
            c_int,
            c_int,
            *mut c_void,
        ) -> c_int = lifecycle;
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(std::mem::transmute::<
                unsafe extern "C" fn(
                    sys::virConnectPtr,
                    sys::virDomainPtr,
                    c_int,
                    c_int,
                    *mut c_void,
                ) -> c_int,
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
            >(callback)),
            opaque,
            Some(release),
        )
    };
    if rc < 0 {
        // SAFETY: not registered, so the count is still ours.
        unsafe { drop(Arc::from_raw(opaque as *const Notify)) };
        return Err(DriverError(format!(
            "cannot subscribe to libvirt's domain events: {}",
            virt::error::Error::last_error()
        )));
    }
    Ok(())
}

#[allow(unsafe_code)]
unsafe extern "C" fn lifecycle(
    _conn: sys::virConnectPtr,
    _domain: sys::virDomainPtr,
    _event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the `Arc<Notify>` registered in `watch`, alive until `release`.
    let changes = unsafe { &*(opaque as *const Notify) };
    changes.notify_one();
    0
}

#[allow(unsafe_code)]
unsafe extern "C" fn release(opaque: *mut c_void) {
    // SAFETY: the count `watch` gave libvirt, returned once.
    unsafe { drop(Arc::from_raw(opaque as *const Notify)) };
}
