//! Table files written around the page cache (`O_DIRECT`, Linux) where the filesystem allows it.
//!
//! A run writes its per-customer tables once and does not read them back; copying them into the
//! page cache cost more CPU than anything but compressing them (on the 2-core VM this project
//! runs on: 4–8 % of a 50M-line run's CPU in `copy_folio_from_iter_atomic`; `dd` of 480 MB took
//! 0.9–1.4 s of system time buffered, 0.1 s direct). Bytes are gathered into whole aligned
//! blocks and written directly; the last partial block is written through the cache. A
//! filesystem that refuses `O_DIRECT` (at open or at a write) gets ordinary writes. Durability
//! is the caller's fsync, as before.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Direct writes need buffers, sizes and offsets aligned to the device's logical block size.
const BLOCK: usize = 4096;
/// Bytes gathered before a direct write.
const CAPACITY: usize = 4 << 20;

pub struct DirectWriter {
    file: File,
    /// `CAPACITY` aligned bytes from `start` on; `len` of them hold data not yet written.
    buf: Vec<u8>,
    start: usize,
    len: usize,
    direct: bool,
}

impl DirectWriter {
    /// Create (or truncate) `path`, for direct writes where the filesystem takes them.
    pub fn create(path: &Path) -> io::Result<Self> {
        let (file, direct) = open(path)?;
        let buf = vec![0u8; CAPACITY + BLOCK];
        let start = buf.as_ptr().align_offset(BLOCK);
        Ok(DirectWriter {
            file,
            buf,
            start,
            len: 0,
            direct,
        })
    }

    /// Whether writes bypass the page cache (for tests and logs).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Write every byte given and return the file (not yet fsynced).
    pub fn finish(mut self) -> io::Result<File> {
        self.write_blocks()?;
        if self.len > 0 {
            self.stop_direct()?;
            let tail = self.start..self.start + self.len;
            self.file.write_all(&self.buf[tail])?;
            self.len = 0;
        }
        Ok(self.file)
    }

    /// Write the whole blocks gathered; the partial block left moves to the front.
    fn write_blocks(&mut self) -> io::Result<()> {
        let whole = self.len / BLOCK * BLOCK;
        let mut done = 0;
        while done < whole {
            let range = self.start + done..self.start + whole;
            match self.file.write(&self.buf[range]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // Refused direct (or a short write left the rest unaligned): the rest buffered.
                Err(error) if self.direct && error.raw_os_error() == Some(libc::EINVAL) => self.stop_direct()?,
                Err(error) => return Err(error),
            }
        }
        self.buf
            .copy_within(self.start + whole..self.start + self.len, self.start);
        self.len -= whole;
        Ok(())
    }

    /// Writes from here on go through the page cache.
    #[cfg(all(target_os = "linux", feature = "tuning"))]
    fn stop_direct(&mut self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if !self.direct {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl F_GETFL/F_SETFL on a descriptor we own, with integer arguments only.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.direct = false;
        Ok(())
    }

    #[cfg(not(all(target_os = "linux", feature = "tuning")))]
    fn stop_direct(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(all(target_os = "linux", feature = "tuning"))]
fn open(path: &Path) -> io::Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    match direct {
        Ok(file) => Ok((file, true)),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok((File::create(path)?, false)),
        Err(error) => Err(error),
    }
}

#[cfg(not(all(target_os = "linux", feature = "tuning")))]
fn open(path: &Path) -> io::Result<(File, bool)> {
    Ok((File::create(path)?, false))
}

impl Write for DirectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CAPACITY - self.len);
        let at = self.start + self.len;
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        if self.len == CAPACITY {
            self.write_blocks()?;
        }
        Ok(n)
    }

    /// Nothing: a partial block can only be written at the end (`finish`).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes of every size, across several buffers' worth and ending in a partial block, give
    /// the file exactly the bytes written, in order.
    #[test]
    fn writes_every_byte_in_order() {
        let dir = std::env::temp_dir().join(format!("pipeline-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("table.bin");
        let mut expected = Vec::new();
        let mut writer = DirectWriter::create(&path).unwrap();
        let mut size = 1usize;
        let mut byte = 0u8;
        while expected.len() < 3 * CAPACITY + 1234 {
            let piece: Vec<u8> = (0..size)
                .map(|_| {
                    byte = byte.wrapping_mul(31).wrapping_add(7);
                    byte
                })
                .collect();
            writer.write_all(&piece).unwrap();
            expected.extend_from_slice(&piece);
            size = (size * 3 + 5) % 1_000_003;
        }
        let direct = writer.is_direct();
        let file = writer.finish().unwrap();
        file.sync_all().unwrap();
        drop(file);
        let written = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(written.len(), expected.len(), "direct: {direct}");
        assert!(written == expected, "direct: {direct}");
    }
}
