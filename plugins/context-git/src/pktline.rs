//! Git's pkt-line framing and the side-band multiplexing of pack data.

use std::io::{self, ErrorKind, Read};

/// The largest pkt-line, length prefix included.
const MAX_PKT: usize = 65520;

/// One pkt-line.
#[derive(Debug, PartialEq, Eq)]
pub enum Pkt {
    /// `0000`: end of a message.
    Flush,
    /// `0001`: end of a section (protocol v2).
    Delim,
    /// `0002`: end of a response (protocol v2).
    ResponseEnd,
    /// A payload.
    Data(Vec<u8>),
}

/// Appends a data pkt-line holding `payload`.
pub fn write_data(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
    out.extend_from_slice(payload);
}

/// Appends a flush pkt.
pub fn write_flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

/// Appends a delimiter pkt.
pub fn write_delim(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0001");
}

/// Reads one pkt-line; the end of the input is an error.
pub fn read_pkt(input: &mut impl Read) -> io::Result<Pkt> {
    let mut prefix = [0; 4];
    input.read_exact(&mut prefix).map_err(|e| {
        if e.kind() == ErrorKind::UnexpectedEof {
            invalid("the response ended in the middle of the git protocol")
        } else {
            e
        }
    })?;
    let len = std::str::from_utf8(&prefix)
        .ok()
        .and_then(|hex| usize::from_str_radix(hex, 16).ok())
        .ok_or_else(|| {
            invalid(&format!(
                "the response is not git's pkt-line protocol (it starts with {:?})",
                String::from_utf8_lossy(&prefix)
            ))
        })?;
    match len {
        0 => Ok(Pkt::Flush),
        1 => Ok(Pkt::Delim),
        2 => Ok(Pkt::ResponseEnd),
        3 => Err(invalid("a pkt-line has the invalid length 3")),
        len if len > MAX_PKT => Err(invalid(&format!("a pkt-line is {len} bytes long"))),
        len => {
            let mut payload = vec![0; len - 4];
            input.read_exact(&mut payload)?;
            Ok(Pkt::Data(payload))
        }
    }
}

/// Reads one pkt-line as text without its newline; `None` at a flush or delimiter.
///
/// An `ERR` line becomes an error carrying the server's message.
pub fn read_line(input: &mut impl Read) -> io::Result<Option<String>> {
    match read_pkt(input)? {
        Pkt::Data(payload) => {
            let line = String::from_utf8_lossy(&payload);
            let line = line.strip_suffix('\n').unwrap_or(&line).to_owned();
            match line.strip_prefix("ERR ") {
                Some(message) => Err(io::Error::other(format!("the server said: {message}"))),
                None => Ok(Some(line)),
            }
        }
        _ => Ok(None),
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, message.to_owned())
}

/// Demultiplexes side-band data: band 1 is the pack, band 2 progress, band 3 an error.
pub struct SideBand<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> SideBand<R> {
    /// Reads band 1 of `inner` until a flush.
    pub fn new(inner: R) -> Self {
        SideBand {
            inner,
            buf: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl<R: Read> Read for SideBand<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            match read_pkt(&mut self.inner)? {
                Pkt::Data(mut payload) => match payload.first() {
                    Some(1) => {
                        payload.remove(0);
                        self.buf = payload;
                        self.pos = 0;
                    }
                    Some(2) => {}
                    Some(3) => {
                        let message = String::from_utf8_lossy(&payload[1..]);
                        return Err(io::Error::other(format!(
                            "the server said: {}",
                            message.trim_end()
                        )));
                    }
                    _ => return Err(invalid("a side-band packet names an unknown band")),
                },
                _ => self.done = true,
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips() {
        let mut out = Vec::new();
        write_data(&mut out, b"command=ls-refs\n");
        write_delim(&mut out);
        write_data(&mut out, b"peel\n");
        write_flush(&mut out);
        assert_eq!(&out, b"0014command=ls-refs\n00010009peel\n0000");
        let mut input = &out[..];
        assert_eq!(
            read_line(&mut input).unwrap().as_deref(),
            Some("command=ls-refs")
        );
        assert_eq!(read_pkt(&mut input).unwrap(), Pkt::Delim);
        assert_eq!(read_pkt(&mut input).unwrap(), Pkt::Data(b"peel\n".to_vec()));
        assert_eq!(read_pkt(&mut input).unwrap(), Pkt::Flush);
        let e = read_pkt(&mut input).unwrap_err();
        assert!(e.to_string().contains("ended"), "{e}");
    }

    #[test]
    fn malformed_and_error_lines_are_reported() {
        let e = read_pkt(&mut &b"<htm"[..]).unwrap_err();
        assert!(e.to_string().contains("not git's pkt-line"), "{e}");
        assert!(read_pkt(&mut &b"0003"[..]).is_err());
        assert!(read_pkt(&mut &b"fff0"[..]).is_err());
        assert_eq!(read_pkt(&mut &b"0002"[..]).unwrap(), Pkt::ResponseEnd);
        let e = read_line(&mut &b"0017ERR not our ref 12\n"[..]).unwrap_err();
        assert_eq!(e.to_string(), "the server said: not our ref 12");
    }

    #[test]
    fn side_band_keeps_band_one_and_fails_on_band_three() {
        let mut stream = Vec::new();
        write_data(&mut stream, b"\x01PA");
        write_data(&mut stream, b"\x02Counting objects\r");
        write_data(&mut stream, b"\x01CK");
        write_flush(&mut stream);
        write_data(&mut stream, b"\x01never read");
        let mut data = Vec::new();
        SideBand::new(&stream[..]).read_to_end(&mut data).unwrap();
        assert_eq!(data, b"PACK");

        let mut stream = Vec::new();
        write_data(&mut stream, b"\x01P");
        write_data(&mut stream, b"\x03upload-pack: out of memory\n");
        let e = SideBand::new(&stream[..])
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(e.to_string(), "the server said: upload-pack: out of memory");
    }
}
