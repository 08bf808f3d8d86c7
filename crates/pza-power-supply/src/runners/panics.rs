//! The panic hook for driver calls.
//!
//! A panic inside a driver call is expected to happen (a buggy driver, the
//! emulator's injected faults) and is fully handled: the runner catches it,
//! answers the command on `P/error` and ends as a panic whose text says
//! where it happened, which the status's `panic_message` and the
//! supervisor's log of the restart carry (see [`super::runner`]). Rust's default hook would print it to
//! stderr as well, a second report of the same panic that costs a few
//! writes per crash, and with `RUST_BACKTRACE=1` the symbolizing of a whole
//! backtrace (about 0.4 ms, more than the rest of the crash and restart).
//! So while a driver call is polled, the hook only notes where the panic
//! happened; every other panic goes to the hook that was installed before
//! (the default one: printed as usual).

use std::cell::{Cell, RefCell};
use std::panic::PanicHookInfo;
use std::sync::Once;

thread_local! {
    /// A driver call is being polled on this thread.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// Where the last guarded panic on this thread happened.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

/// Installs the hook, once per process, over the one in place.
pub fn install() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            if GUARDED.with(Cell::get) {
                let location = info.location().map(|l| l.to_string());
                LOCATION.with(|slot| *slot.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `poll` (one poll of a driver call) with panics noted, not printed.
pub fn guarded<T>(poll: impl FnOnce() -> T) -> T {
    /// Puts the flag back as it was, also when `poll` unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GUARDED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GUARDED.with(|g| g.replace(true)));
    poll()
}

/// Where the last panic noted on this thread happened, once.
pub fn take_location() -> Option<String> {
    LOCATION.with(|slot| slot.borrow_mut().take())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guarded_panic_is_noted_with_its_location_and_the_flag_is_reset() {
        install();
        let caught = std::panic::catch_unwind(|| guarded(|| panic!("driver bug")));
        assert!(caught.is_err());
        let location = take_location().expect("the location was noted");
        assert!(location.contains("panics.rs"), "{location}");
        assert_eq!(take_location(), None, "taken once");
        assert!(!GUARDED.with(Cell::get), "the flag is down after the panic");
        // Outside a driver call, the hook in place before is called: here
        // the default one, which notes nothing.
        let caught = std::panic::catch_unwind(|| panic!("not a driver's"));
        assert!(caught.is_err());
        assert_eq!(take_location(), None);
    }
}
