//! For unit tests: a FIFO standing in for a file on a slow or hung disk. Its open and read stay stuck
//! until a writer comes, and a write to it (nobody reading) never returns.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// Puts a FIFO at `path`.
pub(crate) fn make(path: &Path) {
    let fifo = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `fifo` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
}

/// Waits until someone has the FIFO at `path` open to read, and returns the writer that lets the
/// read go on: what it writes, then the end of the file when it is dropped.
pub(crate) fn opened(path: &Path) -> File {
    // Opening a FIFO to write without blocking succeeds only once a reader has it open.
    loop {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(writer) => return writer,
            Err(err) if err.raw_os_error() == Some(libc::ENXIO) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(err) => panic!("cannot open the FIFO {}: {err}", path.display()),
        }
    }
}
