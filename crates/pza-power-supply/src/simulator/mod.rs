//! Simulated devices on pseudo-terminals, so that the whole server can run
//! and be tested without the hardware.
//!
//! A simulator plays the device's side of the serial line: a driver opens
//! the pty's path as its serial port and cannot tell the difference, down to
//! the device's timing and quirks.

pub mod kd3005p;
mod pty;

pub use kd3005p::{SimulatedState, Simulator, SimulatorOptions};
