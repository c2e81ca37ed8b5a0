//! Context sources: a `--context` URL in, a tree of files out.

use std::cell::RefCell;
use std::io::{ErrorKind, Read};
use std::marker::PhantomData;

use crate::bindings::context::exports::kiln::plugin::context_source::{
    self, Guest, GuestTarStream,
};
use crate::{KeyValue, PluginError};

/// Where a context comes from once opened.
pub enum Opened {
    /// A host directory that the host reads in place.
    Directory(String),
    /// The bytes of a tar archive (plain, gzip or zstd) that the host unpacks.
    Tar(Box<dyn Read>),
}

/// Provides build contexts for some URL schemes.
pub trait ContextSource {
    /// URL schemes this source claims, without `://`.
    fn schemes() -> Vec<String>;
    /// Opens `url`; `options` carries source-specific settings.
    fn open(url: String, options: Vec<KeyValue>) -> Result<Opened, PluginError>;
}

/// Exports a [`ContextSource`] as the component's `context-source`.
#[doc(hidden)]
pub struct ContextExport<T>(PhantomData<T>);

impl<T: ContextSource> Guest for ContextExport<T> {
    type TarStream = TarReader;

    fn schemes() -> Vec<String> {
        T::schemes()
    }

    fn open(url: String, options: Vec<KeyValue>) -> Result<context_source::Opened, PluginError> {
        Ok(match T::open(url, options)? {
            Opened::Directory(path) => context_source::Opened::Directory(path),
            Opened::Tar(reader) => context_source::Opened::Tar(context_source::TarStream::new(
                TarReader(RefCell::new(reader)),
            )),
        })
    }
}

/// A reader behind the `tar-stream` resource.
#[doc(hidden)]
pub struct TarReader(RefCell<Box<dyn Read>>);

impl GuestTarStream for TarReader {
    fn read(&self, max: u32) -> Result<Vec<u8>, PluginError> {
        let mut reader = self.0.borrow_mut();
        fill(&mut *reader, max as usize)
            .map_err(|e| PluginError::new(format!("reading the context archive failed: {e}")))
    }
}

/// Reads until `max` bytes or the end, so that only the end yields an empty
/// chunk and the host crosses the sandbox boundary as rarely as possible.
fn fill(reader: &mut dyn Read, max: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; max];
    let mut filled = 0;
    while filled < max {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Makes this crate's component export `$source` (a [`ContextSource`]).
///
/// Use it once, at the top level of a `cdylib` crate.
#[macro_export]
macro_rules! register_context_source {
    ($source:ty) => {
        #[doc(hidden)]
        type __KilnContextExport = $crate::ContextExport<$source>;
        $crate::bindings::context::export_context_plugin!(
            __KilnContextExport with_types_in $crate::bindings::context
        );
    };
}

#[cfg(test)]
mod tests {
    use super::fill;

    /// Hands out at most three bytes per read, like a pipe.
    struct Trickle<'a>(&'a [u8]);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(3).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn fill_gathers_short_reads_and_ends_with_an_empty_chunk() {
        let mut reader = Trickle(b"0123456789");
        assert_eq!(fill(&mut reader, 8).unwrap(), b"01234567");
        assert_eq!(fill(&mut reader, 8).unwrap(), b"89");
        assert_eq!(fill(&mut reader, 8).unwrap(), b"");
    }
}
