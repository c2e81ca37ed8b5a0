//! Parallel gzip in the manner of pigz: one gzip member whose deflate
//! stream is cut into fixed-size blocks, each compressed on a worker thread
//! with the previous block's last 32 KiB as its dictionary, so the ratio
//! stays close to single-threaded gzip.
//!
//! Block boundaries depend only on the byte offset, never on the number of
//! threads or on how the caller splits its writes, so the output is the
//! same bytes everywhere.
//!
//! A block whose samples look random (already-compressed files: archives,
//! images, wheels, model weights) is stored rather than deflated, as zstd
//! does with its blocks: deflate cannot shrink such data, and searching it
//! for matches is most of what compressing it costs (a 500 MiB random file:
//! 9 s of CPU at level 6, against a copy).

use flate2::{Compress, Crc, FlushCompress, Status};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

/// Uncompressed bytes per block. Fixed: it shapes the output, so changing
/// it changes every gzip layer digest.
const BLOCK_SIZE: usize = 128 * 1024;
/// Deflate's window: the furthest back a block can refer.
const WINDOW: usize = 32 * 1024;
/// The samples [`looks_incompressible`] takes from a block: three of
/// this many bytes, at its start, middle and end.
const SAMPLE: usize = 4 * 1024;
/// Order-0 entropy, in bits per byte, at which a sample counts as random.
/// Uniform random 4 KiB samples measure about 7.95 (the estimate is biased
/// low); compressed streams 7.9 to 7.95; text 4 to 5.5; machine code about 6.
const RANDOM_BITS_PER_BYTE: f64 = 7.9;

/// Blocks queued or compressing per worker: enough to keep every worker
/// busy while the caller writes out finished blocks, and no more, so memory
/// stays bounded.
const IN_FLIGHT_PER_THREAD: usize = 2;

/// One block to compress.
struct Job {
    data: Vec<u8>,
    /// The tail of the previous block (empty for the first).
    dict: Vec<u8>,
    last: bool,
    done: SyncSender<io::Result<Compressed>>,
}

/// A compressed block and the CRC-32 of its input.
struct Compressed {
    deflate: Vec<u8>,
    crc: Crc,
}

/// A gzip encoder that compresses on `threads` worker threads; its output
/// does not depend on `threads`.
pub struct ParGzWriter<W: Write> {
    inner: W,
    pool: Pool,
    /// The block being filled; sent to a worker once it is full and more
    /// input arrives, so the last block is always the one with `finish`.
    block: Vec<u8>,
    dict: Vec<u8>,
    /// Results of the blocks sent, oldest first.
    pending: VecDeque<Receiver<io::Result<Compressed>>>,
    max_pending: usize,
    crc: Crc,
    /// Set once anything failed: the stream has a hole, so nothing more may
    /// be written.
    broken: bool,
}

impl<W: Write> ParGzWriter<W> {
    /// Writes the gzip header to `inner` and starts `threads` (at least
    /// one) workers compressing at `level` (0 to 9).
    pub fn new(mut inner: W, level: u32, threads: usize) -> io::Result<Self> {
        let threads = threads.max(1);
        inner.write_all(&header(level))?;
        Ok(Self {
            inner,
            pool: Pool::start(flate2::Compression::new(level), threads)?,
            block: Vec::with_capacity(BLOCK_SIZE),
            dict: Vec::new(),
            pending: VecDeque::new(),
            max_pending: threads * IN_FLIGHT_PER_THREAD,
            crc: Crc::new(),
            broken: false,
        })
    }

    /// Compresses what is left, writes the gzip trailer and hands back the
    /// inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.check()?;
        let block = std::mem::take(&mut self.block);
        self.send(block, true)?;
        self.drain()?;
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        // ISIZE is the input length modulo 2^32, which `amount` already is.
        trailer[4..].copy_from_slice(&self.crc.amount().to_le_bytes());
        self.inner.write_all(&trailer)?;
        Ok(self.inner)
    }

    fn check(&self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "an earlier gzip write failed, so the stream is incomplete",
            ));
        }
        Ok(())
    }

    /// Hands a block to the workers, first writing out the oldest result if
    /// the limit of blocks in flight is reached.
    fn send(&mut self, data: Vec<u8>, last: bool) -> io::Result<()> {
        if self.pending.len() >= self.max_pending {
            self.write_oldest()?;
        }
        let dict = std::mem::replace(
            &mut self.dict,
            data[data.len().saturating_sub(WINDOW)..].to_vec(),
        );
        let (done, result) = mpsc::sync_channel(1);
        self.pool.submit(Job {
            data,
            dict,
            last,
            done,
        })?;
        self.pending.push_back(result);
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(result) = self.pending.pop_front() else {
            return Ok(());
        };
        let block = result
            .recv()
            .map_err(|_| io::Error::other("a gzip worker thread died"))??;
        self.crc.combine(&block.crc);
        self.inner.write_all(&block.deflate)
    }

    /// Appends to the current block, sending each full one on.
    fn buffer(&mut self, mut rest: &[u8]) -> io::Result<()> {
        while !rest.is_empty() {
            if self.block.len() == BLOCK_SIZE {
                let full = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_SIZE));
                self.send(full, false)?;
            }
            let take = rest.len().min(BLOCK_SIZE - self.block.len());
            self.block.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        }
        Ok(())
    }

    fn drain(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        Ok(())
    }
}

impl<W: Write> Write for ParGzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        let result = self.buffer(buf);
        self.broken |= result.is_err();
        result.map(|()| buf.len())
    }

    /// Writes out every block sent to the workers. The block being filled
    /// stays buffered: cutting it short would make the output depend on
    /// when the caller flushes.
    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        let result = self.drain().and_then(|()| self.inner.flush());
        self.broken |= result.is_err();
        result
    }
}

/// The fixed 10-byte gzip header: no name, no time, unknown OS (as Go's
/// gzip and flate2 write), and the extra flags gzip sets for its fastest
/// and best levels.
fn header(level: u32) -> [u8; 10] {
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]
}

/// Worker threads taking jobs from one queue.
struct Pool {
    /// `None` only while dropping, to close the queue.
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start(level: flate2::Compression, threads: usize) -> io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        let mut pool = Self {
            jobs: Some(jobs),
            threads: Vec::with_capacity(threads),
        };
        for i in 0..threads {
            let queue = Arc::clone(&queue);
            let handle = thread::Builder::new()
                .name(format!("gzip-{i}"))
                .spawn(move || work(&queue, level))?;
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| io::Error::other("the gzip worker threads are gone"))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for handle in self.threads.drain(..) {
            // A worker that panicked already failed its block's result,
            // which the writer reported.
            let _ = handle.join();
        }
    }
}

/// A worker: compresses jobs until the queue closes.
fn work(queue: &Mutex<Receiver<Job>>, level: flate2::Compression) {
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let result = compress_block(level, &job.data, &job.dict, job.last);
        // The writer may be gone (dropped after an error); nobody wants
        // the result then.
        let _ = job.done.send(result);
    }
}

/// Raw deflate of one block: ends with a sync flush (byte-aligned, not
/// final) so blocks concatenate, or with the final block when `last`.
fn compress_block(
    level: flate2::Compression,
    data: &[u8],
    dict: &[u8],
    last: bool,
) -> io::Result<Compressed> {
    let failed = |e: flate2::CompressError| io::Error::other(format!("gzip block: {e}"));
    let stored = level.level() > 0 && looks_incompressible(data);
    // A new state per block, never a reset one: zlib-rs zeroes a new
    // window but a reset keeps the old one, whose stale bytes past the
    // input sway match choices, so the output would depend on which worker
    // compressed what before (measured: a few bytes differ between runs).
    let mut deflate = Compress::new(
        if stored {
            flate2::Compression::none()
        } else {
            level
        },
        false,
    );
    if !dict.is_empty() && !stored {
        deflate.set_dictionary(dict).map_err(failed)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    // Incompressible data grows by 5 bytes per 16 KiB stored block at worst.
    let mut out = Vec::with_capacity(data.len() + data.len() / 1024 + 64);
    let start = deflate.total_in();
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity() / 2);
        }
        let used = usize::try_from(deflate.total_in() - start).unwrap_or(data.len());
        let status = deflate
            .compress_vec(&data[used..], &mut out, flush)
            .map_err(failed)?;
        let consumed = deflate.total_in() - start == data.len() as u64;
        // A flush is complete once it stops short of filling the output.
        let flushed = !last && consumed && out.len() < out.capacity();
        if status == Status::StreamEnd || flushed {
            break;
        }
    }
    let mut crc = Crc::new();
    crc.update(data);
    Ok(Compressed { deflate: out, crc })
}

/// Whether all three samples of `data` have the entropy of random bytes.
/// Blocks shorter than the samples are always compressed.
fn looks_incompressible(data: &[u8]) -> bool {
    if data.len() < 3 * SAMPLE {
        return false;
    }
    let middle = (data.len() - SAMPLE) / 2;
    [0, middle, data.len() - SAMPLE]
        .into_iter()
        .all(|at| entropy_bits_per_byte(&data[at..at + SAMPLE]) >= RANDOM_BITS_PER_BYTE)
}

/// The order-0 (byte frequency) entropy of `sample`, in bits per byte.
fn entropy_bits_per_byte(sample: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[usize::from(b)] += 1;
    }
    let n = sample.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};

    fn gzip(data: &[u8], level: u32, threads: usize, chunk: usize) -> Vec<u8> {
        let mut w = ParGzWriter::new(Vec::new(), level, threads).unwrap();
        for c in data.chunks(chunk.max(1)) {
            w.write_all(c).unwrap();
        }
        w.finish().unwrap()
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Deterministic bytes that do not compress (xorshift).
    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Text with long-range repeats, so blocks gain from their dictionary.
    fn text(len: usize) -> Vec<u8> {
        let words = ["layer", "kiln", "tar", "gzip", "block", "window", "\n"];
        let rnd = random(len, 7);
        let mut out = Vec::with_capacity(len + 8);
        let mut i = 0;
        while out.len() < len {
            out.extend_from_slice(words[usize::from(rnd[i]) % words.len()].as_bytes());
            out.push(b' ');
            i += 1;
        }
        out.truncate(len);
        out
    }

    const SIZES: [usize; 9] = [
        0,
        1,
        WINDOW - 1,
        BLOCK_SIZE - 1,
        BLOCK_SIZE,
        BLOCK_SIZE + 1,
        2 * BLOCK_SIZE,
        3 * BLOCK_SIZE + WINDOW + 7,
        5 << 20,
    ];

    #[test]
    fn round_trips_through_flate2_for_every_boundary_size() {
        for len in SIZES {
            for (kind, data) in [("random", random(len, 42)), ("text", text(len))] {
                for level in [0, 1, 6, 9] {
                    let gz = gzip(&data, level, 2, 10_000);
                    assert!(gunzip(&gz) == data, "{kind} {len} bytes, level {level}");
                }
            }
        }
    }

    #[test]
    fn system_gzip_accepts_the_stream() {
        for len in SIZES {
            let data = if len % 2 == 0 {
                text(len)
            } else {
                random(len, 3)
            };
            let gz = gzip(&data, 6, 3, 65_536);
            let mut zcat = Command::new("gzip")
                .args(["-d", "-c"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = zcat.stdin.take().unwrap();
            let feeder = thread::spawn(move || stdin.write_all(&gz));
            let out = zcat.wait_with_output().unwrap();
            feeder.join().unwrap().unwrap();
            assert!(out.status.success(), "gzip -d failed on {len} bytes");
            assert!(out.stdout == data, "{len} bytes");
        }
    }

    #[test]
    fn output_depends_on_neither_threads_nor_write_sizes() {
        let mut data = text(2 << 20);
        data.extend(random(BLOCK_SIZE + 1000, 9));
        // Short matches everywhere: what a reused deflate state got wrong.
        data.extend(random(1 << 20, 5).iter().map(|b| b'a' + b % 4));
        data.extend(text(BLOCK_SIZE / 2));
        let one = gzip(&data, 6, 1, data.len());
        for (threads, chunk) in [(1, 1000), (2, 1), (2, BLOCK_SIZE), (4, 4097), (4, 1 << 20)] {
            // Byte-sized writes are slow; a prefix still crosses blocks.
            let data = if chunk == 1 { &data[..300_000] } else { &data };
            let expected = if chunk == 1 {
                gzip(data, 6, 1, data.len())
            } else {
                one.clone()
            };
            assert!(
                gzip(data, 6, threads, chunk) == expected,
                "{threads} threads, writes of {chunk}"
            );
        }
        assert!(gunzip(&one) == data);
    }

    #[test]
    fn blocks_share_a_window_so_ratio_matches_single_stream_gzip() {
        let data = text(2 << 20);
        let ours = gzip(&data, 6, 2, 1 << 16).len();
        let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap().len();
        // Without dictionaries each 128 KiB block restarts cold and loses
        // several percent; with them the cost is the sync markers.
        assert!(ours * 1000 <= single * 1005, "{ours} vs {single}");
    }

    #[test]
    fn only_blocks_that_sample_as_random_are_stored() {
        let compressed = {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
            gz.write_all(&text(4 * BLOCK_SIZE)).unwrap();
            gz.finish().unwrap()
        };
        assert!(looks_incompressible(&random(BLOCK_SIZE, 3)));
        assert!(looks_incompressible(
            &compressed[..BLOCK_SIZE.min(compressed.len())]
        ));
        assert!(!looks_incompressible(&text(BLOCK_SIZE)));
        assert!(!looks_incompressible(&random(3 * SAMPLE - 1, 3)));
        // One sample of text among random bytes keeps the block deflated.
        let mut mixed = random(BLOCK_SIZE, 4);
        let middle = (BLOCK_SIZE - SAMPLE) / 2;
        mixed[middle..middle + SAMPLE].copy_from_slice(&text(SAMPLE));
        assert!(!looks_incompressible(&mixed));
        let bytes: Vec<u8> = (0..=255u8).cycle().take(SAMPLE).collect();
        assert!((entropy_bits_per_byte(&bytes) - 8.0).abs() < 1e-9);
        assert!(entropy_bits_per_byte(&[b'a'; SAMPLE]).abs() < 1e-9);
    }

    #[test]
    fn stored_random_blocks_cost_what_deflating_them_would() {
        let mut data = random(4 * BLOCK_SIZE, 11);
        data.extend(text(4 * BLOCK_SIZE));
        let ours = gzip(&data, 6, 2, 1 << 16);
        assert!(gunzip(&ours) == data);
        let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap().len();
        assert!(
            ours.len() * 1000 <= single * 1005,
            "{} vs {single}",
            ours.len()
        );
        // The random half is stored: 5 bytes of framing per 64 KiB stored
        // block, plus each block's sync marker, on top of the raw bytes.
        let text_only = gzip(&text(4 * BLOCK_SIZE), 6, 2, 1 << 16).len();
        assert!(
            ours.len() <= 4 * BLOCK_SIZE + text_only + 4 * 64,
            "{}",
            ours.len()
        );
    }

    #[test]
    fn header_and_trailer_are_fixed_fields() {
        let gz = gzip(b"hello", 9, 1, 5);
        assert_eq!(gz[..10], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);
        let mut crc = Crc::new();
        crc.update(b"hello");
        let n = gz.len();
        assert_eq!(gz[n - 8..n - 4], crc.sum().to_le_bytes());
        assert_eq!(gz[n - 4..], 5u32.to_le_bytes());
        assert_eq!(gzip(b"", 1, 1, 1)[8], 4);
    }

    /// Accepts the header, then fails.
    struct FailAfterHeader(usize);

    impl Write for FailAfterHeader {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 >= 10 {
                return Err(io::Error::other("disk full"));
            }
            self.0 += buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn errors_of_the_inner_writer_surface_and_stick() {
        let mut w = ParGzWriter::new(FailAfterHeader(0), 6, 2).unwrap();
        let data = random(BLOCK_SIZE * 20, 1);
        let err = w.write_all(&data).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        let again = w.write(b"x").unwrap_err();
        assert!(again.to_string().contains("earlier gzip write failed"));
        assert!(w.finish().is_err());
    }
}
