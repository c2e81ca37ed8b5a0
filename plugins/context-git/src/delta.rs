//! Git's delta format: copy ranges of a base object and insert literal bytes.

/// Rebuilds an object from its `base` and a `delta`.
pub fn apply(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, String> {
    let mut pos = 0;
    let base_size = varint(delta, &mut pos)?;
    if base_size != base.len() as u64 {
        return Err(format!(
            "a delta expects a {base_size}-byte base, the base has {} bytes",
            base.len()
        ));
    }
    let size = usize::try_from(varint(delta, &mut pos)?).map_err(|_| "a delta is too large")?;
    // The declared size comes from the server: a hint, not a promise, so
    // it cannot make one huge allocation; the output is checked against it.
    let mut out = Vec::with_capacity(size.min(64 << 20));
    while pos < delta.len() {
        let op = delta[pos];
        pos += 1;
        if op & 0x80 != 0 {
            let mut offset = 0usize;
            let mut len = 0usize;
            for (bit, shift) in [(0x01, 0), (0x02, 8), (0x04, 16), (0x08, 24)] {
                if op & bit != 0 {
                    offset |= usize::from(*delta.get(pos).ok_or(TRUNCATED)?) << shift;
                    pos += 1;
                }
            }
            for (bit, shift) in [(0x10, 0), (0x20, 8), (0x40, 16)] {
                if op & bit != 0 {
                    len |= usize::from(*delta.get(pos).ok_or(TRUNCATED)?) << shift;
                    pos += 1;
                }
            }
            if len == 0 {
                len = 0x10000;
            }
            let range = base
                .get(offset..offset.checked_add(len).ok_or(TRUNCATED)?)
                .ok_or("a delta copies past the end of its base")?;
            out.extend_from_slice(range);
        } else if op != 0 {
            let literal = delta.get(pos..pos + usize::from(op)).ok_or(TRUNCATED)?;
            out.extend_from_slice(literal);
            pos += usize::from(op);
        } else {
            return Err("a delta has the reserved instruction 0".to_owned());
        }
        if out.len() > size {
            return Err("a delta produces more bytes than it declares".to_owned());
        }
    }
    if out.len() != size {
        return Err(format!(
            "a delta declares {size} bytes but produces {}",
            out.len()
        ));
    }
    Ok(out)
}

const TRUNCATED: &str = "a delta is truncated";

/// A little-endian base-128 size.
fn varint(data: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = *data.get(*pos).ok_or(TRUNCATED)?;
        *pos += 1;
        if shift > 63 {
            return Err("a delta size is too large".to_owned());
        }
        value |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::apply;

    #[test]
    fn copies_and_inserts() {
        let base = b"hello, world";
        // base 12, result 12: copy 0..7, insert "there", copy nothing more.
        let delta = [12, 12, 0x90, 7, 5, b't', b'h', b'e', b'r', b'e'];
        assert_eq!(apply(base, &delta).unwrap(), b"hello, there");
        // Copy with an offset byte: base[7..12].
        let delta = [12, 5, 0x91, 7, 5];
        assert_eq!(apply(base, &delta).unwrap(), b"world");
    }

    #[test]
    fn a_zero_copy_length_means_64_kib() {
        let base = vec![9u8; 0x10000];
        let delta = [0x80, 0x80, 0x04, 0x80, 0x80, 0x04, 0x80];
        assert_eq!(apply(&base, &delta).unwrap(), base);
    }

    #[test]
    fn inconsistent_deltas_are_refused() {
        let base = b"abc";
        for (delta, message) in [
            (&[4, 1, 1, b'x'][..], "expects a 4-byte base"),
            (&[3, 2, 1, b'x'][..], "declares 2 bytes but produces 1"),
            (&[3, 1, 0x91, 2, 5][..], "past the end"),
            (&[3, 1, 0][..], "reserved"),
            (&[3, 3, 5, b'x'][..], "truncated"),
            (&[3, 1, 2, b'x', b'y'][..], "more bytes than it declares"),
        ] {
            let e = apply(base, delta).unwrap_err();
            assert!(e.contains(message), "{delta:?}: {e}");
        }
    }
}
