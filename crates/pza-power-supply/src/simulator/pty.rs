//! A pseudo-terminal in raw mode, its master side readable and writable
//! from async code.
//!
//! The simulator keeps the slave side open for as long as it lives. Without
//! that, the pty would hang up each time a driver closes the port: the master
//! then reads `EIO` until the next driver opens it, and a restarted runner
//! could find the path gone. With it, drivers come and go on the same path.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sys::stat::Mode;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use tokio::io::unix::AsyncFd;

/// The two sides of one pseudo-terminal.
pub struct Pty {
    master: AsyncFd<PtyMaster>,
    /// Held only to keep the pty up between drivers (see the module doc).
    _slave: OwnedFd,
    path: PathBuf,
}

impl Pty {
    /// Creates a pty in raw mode: no echo, no line editing and no newline
    /// translation, so bytes pass as they are, like on a serial line. Needs
    /// a tokio runtime with I/O enabled.
    pub fn open() -> io::Result<Pty> {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY)?;
        fcntl(&master, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let path = PathBuf::from(ptsname_r(&master)?);
        let slave = nix::fcntl::open(
            &path,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut termios = tcgetattr(&slave)?;
        cfmakeraw(&mut termios);
        tcsetattr(&slave, SetArg::TCSANOW, &termios)?;
        let flags = OFlag::from_bits_truncate(fcntl(&master, FcntlArg::F_GETFL)?);
        fcntl(&master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // SAFETY: `PtyMaster` owns its descriptor, closes it only when
        // dropped, and always returns the same one from `as_raw_fd`.
        let master = unsafe { AsyncFd::register(master) }?;
        Ok(Pty {
            master,
            _slave: slave,
            path,
        })
    }

    /// The slave side: the path a driver opens as its serial port.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what drivers wrote, waiting until something comes.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.master.readable().await?;
            match ready.try_io(|master| {
                let mut master: &PtyMaster = master.get_ref();
                master.read(buf)
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `bytes` towards the driver.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut ready = self.master.writable().await?;
            match ready.try_io(|master| {
                let mut master: &PtyMaster = master.get_ref();
                master.write(bytes)
            }) {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}
