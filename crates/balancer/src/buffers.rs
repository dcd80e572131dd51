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
/// What a buffer may grow to for a long body and still come back to the pool.
pub const LARGE: usize = 4 * SIZE;
/// Free buffers a thread keeps; beyond this they go back to the allocator.
const KEEP: usize = 256;

thread_local! {
    static FREE_BYTES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static FREE_FIELDS: RefCell<Vec<Vec<Field>>> = const { RefCell::new(Vec::new()) };
}

/// What can be pooled: a vector of some element, kept below a size.
pub trait Pooled: Sized + 'static {
    /// Elements a new one has room for.
    const CAPACITY: usize;
    /// Larger ones go back to the allocator rather than the pool.
    const KEEP_BELOW: usize;
    fn free_list() -> &'static std::thread::LocalKey<RefCell<Vec<Vec<Self>>>>;
}

impl Pooled for u8 {
    const CAPACITY: usize = SIZE;
    const KEEP_BELOW: usize = LARGE + 1;
    fn free_list() -> &'static std::thread::LocalKey<RefCell<Vec<Vec<u8>>>> {
        &FREE_BYTES
    }
}

impl Pooled for Field {
    const CAPACITY: usize = 64;
    const KEEP_BELOW: usize = 1025;
    fn free_list() -> &'static std::thread::LocalKey<RefCell<Vec<Vec<Field>>>> {
        &FREE_FIELDS
    }
}

/// A vector on loan from this thread's pool; it goes back, emptied, when dropped.
pub struct Loan<T: Pooled> {
    list: Vec<T>,
}

/// An I/O buffer.
pub type Buffer = Loan<u8>;
/// Parsed header fields.
pub type Fields = Loan<Field>;

impl<T: Pooled> Loan<T> {
    /// An empty one with room for at least `T::CAPACITY` elements.
    pub fn take() -> Loan<T> {
        let list = T::free_list()
            .with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(T::CAPACITY));
        Loan { list }
    }
}

impl Buffer {
    /// Room left before the buffer must grow.
    pub fn spare(&self) -> usize {
        self.list.capacity() - self.list.len()
    }

    /// Drops the first `n` bytes, keeping the rest at the front.
    pub fn consume(&mut self, n: usize) {
        if n >= self.list.len() {
            self.list.clear();
        } else {
            self.list.drain(..n);
        }
    }
}

impl<T: Pooled> Drop for Loan<T> {
    fn drop(&mut self) {
        let mut list = std::mem::take(&mut self.list);
        // One that grew for an unusual message is not kept at that size.
        if list.capacity() >= T::KEEP_BELOW {
            return;
        }
        list.clear();
        T::free_list().with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(list);
            }
        });
    }
}

impl<T: Pooled> Deref for Loan<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.list
    }
}

impl<T: Pooled> DerefMut for Loan<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.list
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
