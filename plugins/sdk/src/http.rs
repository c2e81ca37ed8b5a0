//! HTTP over `wasi:http`, the only network a plugin has. The host decides
//! which hosts a call may reach and adds any credentials to the requests
//! itself, so they never enter the plugin.

use std::io::{self, Read};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    Scheme,
};
use wasip2::io::streams::{InputStream, StreamError};

use crate::PluginError;

/// The most `wasi:io` lets one blocking write carry.
const WRITE_CHUNK: usize = 4096;
/// How much one read of a response body asks for.
const READ_CHUNK: u64 = 64 << 10;

/// A response whose body is read as a stream.
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    headers: Vec<(String, String)>,
    // Declared child first: `wasi:http` requires the body stream to be
    // dropped before its body, and the body before its response.
    stream: InputStream,
    _body: IncomingBody,
    _response: IncomingResponse,
    pending: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Response {
    /// The first value of header `name` (case-insensitive), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.pending.len() && !self.done {
            match self.stream.blocking_read(READ_CHUNK) {
                Ok(chunk) => {
                    self.pending = chunk;
                    self.pos = 0;
                }
                Err(StreamError::Closed) => self.done = true,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(io::Error::other(format!(
                        "the connection failed while reading the response: {}",
                        e.to_debug_string()
                    )));
                }
            }
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// `GET url` with extra `headers`.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, PluginError> {
    send(Method::Get, url, headers, None)
}

/// `POST url` with extra `headers` and `body`.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, PluginError> {
    send(Method::Post, url, headers, Some(body))
}

/// The scheme, authority and path-with-query of an absolute http(s) URL.
fn split(url: &str) -> Result<(Scheme, &str, &str), PluginError> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(PluginError::new(format!(
            "`{url}` is not an http:// or https:// URL"
        )));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(PluginError::new(format!("`{url}` names no host")));
    }
    Ok((scheme, authority, path))
}

fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, PluginError> {
    let (scheme, authority, path) = split(url)?;
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    let what = || format!("{} {url}", if body.is_some() { "POST" } else { "GET" });
    let mut list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect();
    if let Some(body) = body {
        list.push(("content-length".into(), body.len().to_string().into_bytes()));
    }
    let fields = Fields::from_list(&list)
        .map_err(|e| PluginError::new(format!("{}: invalid request header: {e:?}", what())))?;
    let request = OutgoingRequest::new(fields);
    let invalid = |part: &str| PluginError::new(format!("{}: invalid {part}", what()));
    request
        .set_method(&method)
        .map_err(|()| invalid("method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| invalid("host"))?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| invalid("path"))?;
    let outgoing = request
        .body()
        .map_err(|()| PluginError::new(format!("{}: the request has no body", what())))?;
    // The request is sent before its body is written: the host buffers
    // little, so writing first could wait forever for a reader.
    let future = outgoing_handler::handle(request, None).map_err(|e| failed(&what(), &e))?;
    if let Some(bytes) = body {
        let stream = outgoing
            .write()
            .map_err(|()| PluginError::new(format!("{}: cannot write the body", what())))?;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            stream.blocking_write_and_flush(chunk).map_err(|e| {
                PluginError::new(format!("{}: sending the body failed: {e:?}", what()))
            })?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| failed(&what(), &e))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(failed(&what(), &e)),
        Some(Err(())) | None => {
            return Err(PluginError::new(format!(
                "{}: the host lost the response",
                what()
            )));
        }
    };
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .filter_map(|(k, v)| Some((k, String::from_utf8(v).ok()?)))
        .collect();
    let body = response
        .consume()
        .map_err(|()| PluginError::new(format!("{}: the response has no body", what())))?;
    let stream = body
        .stream()
        .map_err(|()| PluginError::new(format!("{}: cannot read the response body", what())))?;
    Ok(Response {
        status,
        headers,
        stream,
        _body: body,
        _response: response,
        pending: Vec::new(),
        pos: 0,
        done: false,
    })
}

/// A failed request, worded for the user.
fn failed(what: &str, e: &ErrorCode) -> PluginError {
    let reason = match e {
        ErrorCode::HttpRequestDenied => {
            return PluginError::new(format!(
                "{what}: kiln's sandbox refused the request: this plugin may only reach the host its URL names"
            ));
        }
        ErrorCode::DnsError(d) => format!(
            "cannot resolve the host ({})",
            d.rcode.as_deref().unwrap_or("DNS error")
        ),
        ErrorCode::ConnectionRefused => "the connection was refused".into(),
        ErrorCode::ConnectionTimeout => "the connection timed out".into(),
        ErrorCode::ConnectionReadTimeout => "the server stopped answering".into(),
        ErrorCode::TlsCertificateError => "the server's TLS certificate is not trusted".into(),
        ErrorCode::TlsProtocolError => "the TLS handshake failed".into(),
        ErrorCode::InternalError(Some(m)) => m.clone(),
        other => format!("{other:?}"),
    };
    PluginError::new(format!("{what} failed: {reason}"))
}
