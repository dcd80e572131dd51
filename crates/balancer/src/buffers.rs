//! I/O buffers, pooled per thread.
//!
//! A connection holds a buffer only while it is reading or writing a message: an idle
//! keep-alive connection has none, so a thousand idle clients cost a thousand small tasks, not
//! a thousand buffers (hyper's HTTP/1 server kept two 8 KiB buffers per connection for its
//! whole life). Each proxy thread runs its own single-threaded runtime, so a thread-local free
//! list needs no lock.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use crate::http1::Field;

/// Bytes a buffer can hold: a whole head up to the usual limits, and body bytes in
/// large-enough slices that a 100 KB body takes a handful of reads.
pub const SIZE: usize = 16 * 1024;
/// Free buffers a thread keeps; beyond this they go back to the allocator.
const KEEP: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static FREE_FIELDS: RefCell<Vec<Vec<Field>>> = const { RefCell::new(Vec::new()) };
}

/// Parsed header fields, on loan from this thread's pool like [`Buffer`]s.
pub struct Fields {
    list: Vec<Field>,
}

impl Fields {
    pub fn take() -> Fields {
        let list = FREE_FIELDS
            .with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(64));
        Fields { list }
    }
}

impl Drop for Fields {
    fn drop(&mut self) {
        let mut list = std::mem::take(&mut self.list);
        if list.capacity() > 1024 {
            return;
        }
        list.clear();
        FREE_FIELDS.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(list);
            }
        });
    }
}

impl Deref for Fields {
    type Target = Vec<Field>;
    fn deref(&self) -> &Vec<Field> {
        &self.list
    }
}

impl DerefMut for Fields {
    fn deref_mut(&mut self) -> &mut Vec<Field> {
        &mut self.list
    }
}

/// A buffer on loan from this thread's pool; it goes back when dropped.
pub struct Buffer {
    bytes: Vec<u8>,
}

impl Buffer {
    /// An empty buffer with room for at least [`SIZE`] bytes.
    pub fn take() -> Buffer {
        let bytes = FREE
            .with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(SIZE));
        Buffer { bytes }
    }

    /// Room left before the buffer must grow.
    pub fn spare(&self) -> usize {
        self.bytes.capacity() - self.bytes.len()
    }

    /// Drops the first `n` bytes, keeping the rest at the front.
    pub fn consume(&mut self, n: usize) {
        if n >= self.bytes.len() {
            self.bytes.clear();
        } else {
            self.bytes.drain(..n);
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.bytes);
        // A buffer that grew for an unusual message is not kept at that size.
        if bytes.capacity() > 4 * SIZE {
            return;
        }
        bytes.clear();
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(bytes);
            }
        });
    }
}

impl Deref for Buffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.bytes
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_are_reused() {
        let ptr = {
            let mut b = Buffer::take();
            b.extend_from_slice(b"hello");
            b.as_ptr()
        };
        let b = Buffer::take();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr, "the same allocation is handed out again");
        assert!(b.spare() >= SIZE);
    }

    #[test]
    fn consume_keeps_the_rest_in_front() {
        let mut b = Buffer::take();
        b.extend_from_slice(b"GET / HTTP/1.1\r\n\r\nnext");
        b.consume(18);
        assert_eq!(&b[..], b"next");
        b.consume(10);
        assert!(b.is_empty());
    }
}
