//! A packfile read as a stream, spilled to scratch files, and indexed by object id.
//!
//! The pack is written to `<n>.pack` as it arrives, while each entry is
//! inflated once to hash it. Objects stored whole stay in the pack file and are
//! inflated again when read. A delta is rebuilt as soon as its base is known
//! (an offset delta's base always comes first), hashed, and the rebuilt object
//! appended to `<n>.objects`, so reading it later never repeats the chain.
//! Memory holds the index, one delta chain step (base, delta, result) and a
//! bounded cache of recent bases, never the pack.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::bufread::ZlibDecoder;
use flate2::{Decompress, FlushDecompress, Status};

use crate::delta;
use crate::object::{Kind, ObjectId, hasher_for};

/// Rebuilt objects kept for reuse as delta bases, in bytes.
const CACHE_BYTES: usize = 32 << 20;
/// The largest object rebuilt in memory from a delta.
const MAX_IN_MEMORY: u64 = 1 << 30;
/// Distinguishes the scratch files of the packs fetched by one instance.
static PACK_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Where an object's bytes are.
#[derive(Clone, Copy, Debug)]
enum Location {
    /// A zlib stream at this offset of the pack file.
    Packed(u64),
    /// Raw bytes at this offset of the rebuilt-objects file.
    Rebuilt(u64),
}

#[derive(Clone, Copy, Debug)]
struct Object {
    kind: Kind,
    size: u64,
    location: Location,
}

/// The objects of one fetched pack, read from scratch files.
pub struct Store {
    pack_path: PathBuf,
    objects_path: PathBuf,
    index: HashMap<ObjectId, Object>,
    /// How many entries were deltas.
    deltas: usize,
}

impl Store {
    /// How many objects the pack held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// How many of them were stored as deltas.
    pub fn deltas(&self) -> usize {
        self.deltas
    }

    /// The kind of `id`, if the pack has it.
    pub fn kind(&self, id: &ObjectId) -> Option<Kind> {
        self.index.get(id).map(|o| o.kind)
    }

    /// Reads a whole object; meant for commits, tags and trees.
    pub fn read(&self, id: &ObjectId) -> Result<(Kind, Vec<u8>), String> {
        let object = self.object(id)?;
        let mut data = Vec::with_capacity(in_memory_size(object.size)?);
        self.open(object)?
            .read_to_end(&mut data)
            .map_err(|e| format!("reading object {id} from the scratch dir failed: {e}"))?;
        check_size(id, object.size, data.len() as u64)?;
        Ok((object.kind, data))
    }

    /// Streams a blob: its size and a reader of exactly that many bytes.
    pub fn blob(&self, id: &ObjectId) -> Result<(u64, Box<dyn Read>), String> {
        let object = self.object(id)?;
        if object.kind != Kind::Blob {
            return Err(format!(
                "object {id} is a {}, not a blob",
                object.kind.name()
            ));
        }
        Ok((object.size, self.open(object)?))
    }

    /// Every object id, sorted.
    pub fn ids(&self) -> Vec<ObjectId> {
        let mut ids: Vec<ObjectId> = self.index.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The size of `id`'s content, if the pack has it.
    pub fn size(&self, id: &ObjectId) -> Option<u64> {
        self.index.get(id).map(|o| o.size)
    }

    /// Streams any object: its kind, size and a reader of its content.
    pub fn stream(&self, id: &ObjectId) -> Result<(Kind, u64, Box<dyn Read>), String> {
        let object = self.object(id)?;
        Ok((object.kind, object.size, self.open(object)?))
    }

    fn object(&self, id: &ObjectId) -> Result<Object, String> {
        self.index
            .get(id)
            .copied()
            .ok_or_else(|| format!("object {id} is missing from the fetched pack"))
    }

    fn open(&self, object: Object) -> Result<Box<dyn Read>, String> {
        let (path, offset) = match object.location {
            Location::Packed(offset) => (&self.pack_path, offset),
            Location::Rebuilt(offset) => (&self.objects_path, offset),
        };
        let mut file = File::open(path)
            .map_err(|e| format!("cannot open {} in the scratch dir: {e}", path.display()))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| format!("cannot seek in {}: {e}", path.display()))?;
        Ok(match object.location {
            Location::Packed(_) => Box::new(ZlibDecoder::new(BufReader::new(file))),
            Location::Rebuilt(_) => Box::new(file.take(object.size)),
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Scratch space is the host's; give it back as soon as the checkout is done.
        let _ = std::fs::remove_file(&self.pack_path);
        let _ = std::fs::remove_file(&self.objects_path);
    }
}

fn in_memory_size(size: u64) -> Result<usize, String> {
    if size > MAX_IN_MEMORY {
        return Err(format!(
            "an object of {size} bytes is too large to rebuild in memory"
        ));
    }
    Ok(size as usize)
}

fn check_size(id: &ObjectId, expected: u64, actual: u64) -> Result<(), String> {
    if expected != actual {
        return Err(format!(
            "object {id} has {actual} bytes instead of the {expected} its pack entry declares"
        ));
    }
    Ok(())
}

/// Reads a pack from `input`, spilling it into `dir`, and indexes every object.
pub fn index(input: impl Read, dir: &Path) -> Result<Store, String> {
    let n = PACK_COUNTER.fetch_add(1, Ordering::Relaxed);
    let pack_path = dir.join(format!("{n}.pack"));
    let objects_path = dir.join(format!("{n}.objects"));
    let pack_file = File::create(&pack_path).map_err(|e| {
        format!(
            "cannot create {} in the scratch dir: {e}",
            pack_path.display()
        )
    })?;
    let objects = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&objects_path)
        .map_err(|e| {
            format!(
                "cannot create {} in the scratch dir: {e}",
                objects_path.display()
            )
        })?;
    let pack_reader = File::open(&pack_path)
        .map_err(|e| format!("cannot reopen {}: {e}", pack_path.display()))?;
    let mut indexer = Indexer {
        store: Store {
            pack_path,
            objects_path,
            index: HashMap::new(),
            deltas: 0,
        },
        pack: pack_reader,
        objects,
        objects_len: 0,
        offsets: Vec::new(),
        pending: Vec::new(),
        cache: HashMap::new(),
        cache_bytes: 0,
        inflater: Decompress::new(true),
        buf: vec![0; 64 << 10],
    };
    let mut input = PackInput::new(input, pack_file);
    indexer.run(&mut input)?;
    Ok(indexer.store)
}

/// A delta base.
#[derive(Clone, Copy, Debug)]
enum Base {
    /// The entry at this pack offset.
    Offset(u64),
    /// The object with this id.
    Id(ObjectId),
}

/// A delta whose base was not known when it arrived.
struct Pending {
    offset: u64,
    data_offset: u64,
    base: Base,
    size: u64,
}

struct Indexer {
    store: Store,
    /// A read handle on the pack file being written.
    pack: File,
    objects: File,
    objects_len: u64,
    /// Entry offsets in pack order, with their ids once known.
    offsets: Vec<(u64, Option<ObjectId>)>,
    pending: Vec<Pending>,
    cache: HashMap<ObjectId, Rc<Vec<u8>>>,
    cache_bytes: usize,
    inflater: Decompress,
    buf: Vec<u8>,
}

impl Indexer {
    fn run<R: Read>(&mut self, input: &mut PackInput<R>) -> Result<(), String> {
        let mut header = [0; 12];
        input
            .read_exact(&mut header)
            .map_err(|e| format!("reading the pack header failed: {e}"))?;
        if &header[..4] != b"PACK" {
            return Err("the server's pack does not start with `PACK`".to_owned());
        }
        let version = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
        if version != 2 && version != 3 {
            return Err(format!("the pack has unsupported version {version}"));
        }
        let count = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
        for _ in 0..count {
            self.entry(input)?;
        }
        let digest = input.hasher.digest().bytes();
        let mut trailer = [0; 20];
        input
            .read_exact(&mut trailer)
            .map_err(|e| format!("reading the pack checksum failed: {e}"))?;
        if trailer != digest {
            return Err("the pack's SHA-1 checksum does not match its content".to_owned());
        }
        let rest = input
            .fill_buf()
            .map_err(|e| format!("reading after the pack failed: {e}"))?;
        if !rest.is_empty() {
            return Err("the server sent data after the pack".to_owned());
        }
        self.resolve_pending()
    }

    fn entry<R: Read>(&mut self, input: &mut PackInput<R>) -> Result<(), String> {
        let offset = input.pos;
        let (type_id, size) =
            entry_header(input).map_err(|e| format!("pack entry at offset {offset}: {e}"))?;
        let base = match type_id {
            6 => {
                let back = ofs_delta_distance(input)
                    .map_err(|e| format!("pack entry at offset {offset}: {e}"))?;
                Some(Base::Offset(offset.checked_sub(back).ok_or_else(|| {
                    format!("the delta at pack offset {offset} points before the pack")
                })?))
            }
            7 => {
                let mut id = [0; 20];
                input
                    .read_exact(&mut id)
                    .map_err(|e| format!("pack entry at offset {offset}: {e}"))?;
                Some(Base::Id(ObjectId(id)))
            }
            _ => None,
        };
        let data_offset = input.pos;
        let context = |e: String| format!("pack entry at offset {offset}: {e}");
        match base {
            None => {
                let kind = kind_of(type_id).map_err(context)?;
                let mut hasher = hasher_for(kind, size);
                inflate(input, &mut self.inflater, &mut self.buf, size, |chunk| {
                    hasher.update(chunk)
                })
                .map_err(context)?;
                let id = ObjectId(hasher.digest().bytes());
                self.store.index.insert(
                    id,
                    Object {
                        kind,
                        size,
                        location: Location::Packed(data_offset),
                    },
                );
                self.offsets.push((offset, Some(id)));
            }
            Some(base) => {
                self.store.deltas += 1;
                let mut delta = Vec::with_capacity(in_memory_size(size).map_err(context)?);
                inflate(input, &mut self.inflater, &mut self.buf, size, |chunk| {
                    delta.extend_from_slice(chunk)
                })
                .map_err(context)?;
                let id = match self.base_id(base) {
                    Some(base_id) => Some(self.rebuild(base_id, &delta).map_err(context)?),
                    None => {
                        self.pending.push(Pending {
                            offset,
                            data_offset,
                            base,
                            size,
                        });
                        None
                    }
                };
                self.offsets.push((offset, id));
            }
        }
        Ok(())
    }

    /// The id of a base that is already indexed.
    fn base_id(&self, base: Base) -> Option<ObjectId> {
        match base {
            Base::Offset(offset) => {
                let i = self.offsets.binary_search_by_key(&offset, |e| e.0).ok()?;
                self.offsets[i].1
            }
            Base::Id(id) => self.store.index.contains_key(&id).then_some(id),
        }
    }

    /// Applies `delta` to `base`, stores the result and returns its id.
    fn rebuild(&mut self, base: ObjectId, delta: &[u8]) -> Result<ObjectId, String> {
        let kind = self.store.index[&base].kind;
        let base_data = self.load(base)?;
        let data = delta::apply(&base_data, delta)?;
        let id = ObjectId::hash(kind, &data);
        if self.store.index.contains_key(&id) {
            return Ok(id);
        }
        self.objects
            .seek(SeekFrom::Start(self.objects_len))
            .and_then(|_| self.objects.write_all(&data))
            .map_err(|e| format!("writing to the scratch dir failed: {e}"))?;
        self.store.index.insert(
            id,
            Object {
                kind,
                size: data.len() as u64,
                location: Location::Rebuilt(self.objects_len),
            },
        );
        self.objects_len += data.len() as u64;
        self.remember(id, Rc::new(data));
        Ok(id)
    }

    /// An object's bytes, for use as a delta base.
    fn load(&mut self, id: ObjectId) -> Result<Rc<Vec<u8>>, String> {
        if let Some(data) = self.cache.get(&id) {
            return Ok(Rc::clone(data));
        }
        let object = self.store.index[&id];
        let mut data = Vec::with_capacity(in_memory_size(object.size)?);
        let io = |e: io::Error| format!("reading delta base {id} from the scratch dir failed: {e}");
        match object.location {
            Location::Packed(offset) => {
                (&self.pack).seek(SeekFrom::Start(offset)).map_err(io)?;
                ZlibDecoder::new(BufReader::new(&self.pack))
                    .take(object.size)
                    .read_to_end(&mut data)
                    .map_err(io)?;
            }
            Location::Rebuilt(offset) => {
                self.objects.seek(SeekFrom::Start(offset)).map_err(io)?;
                (&self.objects)
                    .take(object.size)
                    .read_to_end(&mut data)
                    .map_err(io)?;
            }
        }
        check_size(&id, object.size, data.len() as u64)?;
        let data = Rc::new(data);
        self.remember(id, Rc::clone(&data));
        Ok(data)
    }

    fn remember(&mut self, id: ObjectId, data: Rc<Vec<u8>>) {
        if data.len() > CACHE_BYTES / 4 {
            return;
        }
        if self.cache_bytes + data.len() > CACHE_BYTES {
            self.cache.clear();
            self.cache_bytes = 0;
        }
        self.cache_bytes += data.len();
        self.cache.insert(id, data);
    }

    /// Rebuilds deltas whose base came later in the pack, until none is left.
    fn resolve_pending(&mut self) -> Result<(), String> {
        while !self.pending.is_empty() {
            let before = self.pending.len();
            for pending in std::mem::take(&mut self.pending) {
                let Some(base) = self.base_id(pending.base) else {
                    self.pending.push(pending);
                    continue;
                };
                let context = |e: String| format!("pack entry at offset {}: {e}", pending.offset);
                let mut delta = Vec::with_capacity(in_memory_size(pending.size).map_err(context)?);
                (&self.pack)
                    .seek(SeekFrom::Start(pending.data_offset))
                    .and_then(|_| {
                        ZlibDecoder::new(BufReader::new(&self.pack))
                            .take(pending.size)
                            .read_to_end(&mut delta)
                    })
                    .map_err(|e| context(format!("re-reading the delta failed: {e}")))?;
                let id = self.rebuild(base, &delta).map_err(context)?;
                let i = self
                    .offsets
                    .binary_search_by_key(&pending.offset, |e| e.0)
                    .expect("every entry's offset is recorded");
                self.offsets[i].1 = Some(id);
            }
            if self.pending.len() == before {
                let missing = match self.pending[0].base {
                    Base::Offset(offset) => format!("the entry at offset {offset}"),
                    Base::Id(id) => format!("object {id}"),
                };
                return Err(format!(
                    "the pack lacks the delta base {missing} (a thin or broken pack)"
                ));
            }
        }
        Ok(())
    }
}

fn kind_of(type_id: u8) -> Result<Kind, String> {
    match type_id {
        1 => Ok(Kind::Commit),
        2 => Ok(Kind::Tree),
        3 => Ok(Kind::Blob),
        4 => Ok(Kind::Tag),
        other => Err(format!("unknown object type {other}")),
    }
}

/// Inflates one zlib stream of exactly `size` bytes, consuming nothing after it.
///
/// One inflater and one buffer serve every entry: packs hold many small objects.
fn inflate<R: Read>(
    input: &mut PackInput<R>,
    inflater: &mut Decompress,
    buf: &mut [u8],
    size: u64,
    mut sink: impl FnMut(&[u8]),
) -> Result<(), String> {
    inflater.reset(true);
    let mut total = 0u64;
    loop {
        let data = input
            .fill_buf()
            .map_err(|e| format!("reading the pack failed: {e}"))?;
        let at_end = data.is_empty();
        let (before_in, before_out) = (inflater.total_in(), inflater.total_out());
        let status = inflater
            .decompress(data, buf, FlushDecompress::None)
            .map_err(|e| format!("inflating failed: {e}"))?;
        let consumed = (inflater.total_in() - before_in) as usize;
        let produced = (inflater.total_out() - before_out) as usize;
        input.consume(consumed);
        total += produced as u64;
        if total > size {
            return Err(format!("inflates to more than the declared {size} bytes"));
        }
        sink(&buf[..produced]);
        if status == Status::StreamEnd {
            break;
        }
        if consumed == 0 && produced == 0 {
            return Err(if at_end {
                "the pack ends inside an object (a truncated transfer?)".to_owned()
            } else {
                "the compressed data is corrupt".to_owned()
            });
        }
    }
    if total != size {
        return Err(format!(
            "inflates to {total} bytes instead of the declared {size}"
        ));
    }
    Ok(())
}

fn read_byte(input: &mut impl BufRead) -> io::Result<u8> {
    let mut byte = [0];
    input.read_exact(&mut byte)?;
    Ok(byte[0])
}

/// An entry's type and inflated size.
fn entry_header(input: &mut impl BufRead) -> io::Result<(u8, u64)> {
    let mut byte = read_byte(input)?;
    let type_id = (byte >> 4) & 7;
    let mut size = u64::from(byte & 0x0f);
    let mut shift = 4;
    while byte & 0x80 != 0 {
        byte = read_byte(input)?;
        if shift > 57 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the entry size overflows",
            ));
        }
        size |= u64::from(byte & 0x7f) << shift;
        shift += 7;
    }
    Ok((type_id, size))
}

/// The distance back to an offset delta's base (git's offset encoding).
fn ofs_delta_distance(input: &mut impl BufRead) -> io::Result<u64> {
    let mut byte = read_byte(input)?;
    let mut distance = u64::from(byte & 0x7f);
    while byte & 0x80 != 0 {
        byte = read_byte(input)?;
        distance = distance
            .checked_add(1)
            .and_then(|d| d.checked_mul(128))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the offset overflows"))?
            | u64::from(byte & 0x7f);
    }
    Ok(distance)
}

/// The incoming pack as a `BufRead`: bytes go to the pack file as they are
/// buffered, and into the checksum as they are consumed, so `pos` is always
/// the offset of the next unparsed byte in the file.
struct PackInput<R> {
    inner: R,
    file: File,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    pos: u64,
    hasher: sha1_smol::Sha1,
}

impl<R: Read> PackInput<R> {
    fn new(inner: R, file: File) -> Self {
        PackInput {
            inner,
            file,
            buf: vec![0; 64 << 10],
            start: 0,
            end: 0,
            pos: 0,
            hasher: sha1_smol::Sha1::new(),
        }
    }
}

impl<R: Read> Read for PackInput<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for PackInput<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            let n = self.inner.read(&mut self.buf)?;
            self.file.write_all(&self.buf[..n]).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("spilling the pack to the scratch dir: {e}"),
                )
            })?;
            self.start = 0;
            self.end = n;
        }
        Ok(&self.buf[self.start..self.end])
    }

    fn consume(&mut self, n: usize) {
        self.hasher.update(&self.buf[self.start..self.start + n]);
        self.start += n;
        self.pos += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_headers_decode_type_and_size() {
        // A blob of 0x1234 bytes: 0b1_011_0100, then 0x1234 >> 4 = 0x123 → 0xa3, 0x02.
        let mut input = &[0xb4, 0xa3, 0x02][..];
        assert_eq!(entry_header(&mut input).unwrap(), (3, 0x1234));
        let mut input = &[0x15][..];
        assert_eq!(entry_header(&mut input).unwrap(), (1, 5));
        assert!(entry_header(&mut &[0x95][..]).is_err());
    }

    #[test]
    fn offset_distances_use_gits_biased_encoding() {
        assert_eq!(ofs_delta_distance(&mut &[0x05][..]).unwrap(), 5);
        // (0x01 + 1) * 128 + 0x00 = 256.
        assert_eq!(ofs_delta_distance(&mut &[0x81, 0x00][..]).unwrap(), 256);
        assert_eq!(ofs_delta_distance(&mut &[0x80, 0x00][..]).unwrap(), 128);
    }
}
