//! The HTTP/1.1 framing that the test servers (token issuer, fault proxy)
//! need: request and response heads, message bodies by `Content-Length` or
//! chunked encoding, and URL decoding.

use std::io::{self, BufRead, Read, Write};

/// Heads larger than this are refused: no client of ours sends one.
const MAX_HEAD: usize = 64 * 1024;

/// A request or response head: the start line and the header fields in order.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    /// `GET /v2/ HTTP/1.1` or `HTTP/1.1 200 OK`, without the line end.
    pub start: String,
    /// Header fields as sent, names in their original case.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// Reads a head; `None` when the peer closed the connection before
    /// sending anything (a finished keep-alive connection).
    pub fn read(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
        let mut start = String::new();
        if reader.read_line(&mut start)? == 0 {
            return Ok(None);
        }
        let mut size = start.len();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line)?;
            size += n;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside an HTTP head",
                ));
            }
            if size > MAX_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "HTTP head larger than 64 KiB",
                ));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("malformed HTTP header line {line:?}"),
                ));
            };
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(Some(Head {
            start: start.trim_end_matches(['\r', '\n']).to_owned(),
            headers,
        }))
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Removes every field called `name`.
    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// `(method, target)` of a request head.
    pub fn request_line(&self) -> (&str, &str) {
        let mut parts = self.start.split(' ');
        (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        )
    }

    /// The status code of a response head (0 if the line is malformed).
    pub fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    /// How the body that follows this request head is framed.
    pub fn request_body(&self) -> Body {
        if self
            .header("Transfer-Encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            Body::Chunked
        } else {
            let length = self
                .header("Content-Length")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Body::Length(length)
        }
    }

    /// The head as it goes on the wire, blank line included.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut text = format!("{}\r\n", self.start);
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        out.write_all(text.as_bytes())
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`, ended by a zero-size chunk and trailers.
    Chunked,
}

/// Copies one body from `reader` to `out` byte for byte (chunk framing
/// included), so that the receiver sees exactly what the sender sent.
/// Returns the number of payload bytes.
pub(crate) fn copy_body(
    body: Body,
    reader: &mut impl BufRead,
    out: &mut impl Write,
) -> io::Result<u64> {
    match body {
        Body::Length(n) => {
            let copied = io::copy(&mut reader.take(n), out)?;
            if copied != n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("body ended after {copied} of {n} bytes"),
                ));
            }
            Ok(n)
        }
        Body::Chunked => {
            let mut total = 0;
            loop {
                let mut size_line = String::new();
                if reader.read_line(&mut size_line)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a chunked body",
                    ));
                }
                out.write_all(size_line.as_bytes())?;
                let hex = size_line.trim().split(';').next().unwrap_or_default();
                let size = u64::from_str_radix(hex, 16).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size line {size_line:?}"),
                    )
                })?;
                if size == 0 {
                    // Trailer fields, then the blank line that ends the body.
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line)? == 0 {
                            return Ok(total);
                        }
                        out.write_all(line.as_bytes())?;
                        if line.trim().is_empty() {
                            return Ok(total);
                        }
                    }
                }
                // The chunk data and its CRLF.
                let want = size + 2;
                let copied = io::copy(&mut reader.take(want), out)?;
                if copied != want {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a chunk",
                    ));
                }
                total += size;
            }
        }
    }
}

/// Decodes `%XX` escapes, and `+` as a space (form and query encoding).
pub(crate) fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes.get(i + 1..i + 3).and_then(hex_byte) {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()
}

/// The decoded `key=value` pairs of a query string or form body, in order.
pub(crate) fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (url_decode(key), url_decode(value))
        })
        .collect()
}

/// A complete response with a body and `Connection: close`.
pub(crate) fn respond(
    out: &mut impl Write,
    status: u16,
    reason: &str,
    extra_headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn url_decode_handles_escapes_plus_and_stray_percent() {
        assert_eq!(
            url_decode("repository%3Aa%2Fb%3Apull%2Cpush"),
            "repository:a/b:pull,push"
        );
        assert_eq!(url_decode("a+b"), "a b");
        assert_eq!(url_decode("100%"), "100%");
        assert_eq!(url_decode("%zz"), "%zz");
    }

    #[test]
    fn chunked_bodies_are_copied_verbatim() {
        let wire = b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut reader = BufReader::new(&wire[..]);
        let mut out = Vec::new();
        let n = copy_body(Body::Chunked, &mut reader, &mut out).unwrap();
        assert_eq!(n, 7);
        assert_eq!(out, &wire[..wire.len() - 4]);
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "NEXT");
    }

    #[test]
    fn heads_parse_and_serialise() {
        let wire =
            b"PATCH /v2/a/blobs/uploads/x?y=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
        let mut reader = BufReader::new(&wire[..]);
        let head = Head::read(&mut reader).unwrap().unwrap();
        assert_eq!(head.request_line(), ("PATCH", "/v2/a/blobs/uploads/x?y=1"));
        assert_eq!(head.request_body(), Body::Length(3));
        assert_eq!(head.header("content-length"), Some("3"));
        let mut out = Vec::new();
        head.write_to(&mut out).unwrap();
        assert_eq!(out, &wire[..wire.len() - 3]);
    }
}
