//! Simulated devices, so that the whole server can run and be tested
//! without the hardware: a KD3005P on a pseudo-terminal, and SCPI
//! instruments on TCP.
//!
//! A simulator plays the device's side of the link: a driver opens the pty's
//! path as its serial port, or connects to the simulator's TCP address, and
//! cannot tell the difference, down to the device's timing and quirks.

pub mod kd3005p;
mod pty;
pub mod scpi;

pub use kd3005p::{SimulatedState, Simulator, SimulatorOptions};
pub use scpi::{ScpiPtySimulator, ScpiSimulator, ScpiSimulatorOptions};
