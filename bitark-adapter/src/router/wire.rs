//! HTTP/1.1 on the router's connections to the nodes: a request written out, and an
//! answer read back from whatever bytes have arrived (whole or not yet, by
//! content-length or chunked), with the bytes it took so that pipelined answers can be
//! read one after another.

use axum::body::Bytes;
use axum::http::{HeaderValue, Method, StatusCode};

/// Response headers read (a node sends a handful).
const MAX_HEADERS: usize = 32;
/// The largest answer taken from a node.
pub(super) const MAX_ANSWER: usize = 64 << 20;

/// A node's answer, as the router passes it on.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub location: Option<HeaderValue>,
    pub body: Bytes,
}

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum AnswerError {
    #[error("a malformed answer: {0}")]
    Malformed(httparse::Error),
    #[error("a malformed status {0}")]
    Status(u16),
    #[error("a malformed content-length `{0}`")]
    Length(String),
    #[error("a malformed chunk size")]
    ChunkSize,
    #[error("the answer is over {MAX_ANSWER} bytes")]
    TooLarge,
    #[error("the connection closed mid-answer")]
    Truncated,
    #[error("reading the answer: {0}")]
    Io(std::io::Error),
}

pub(super) fn encode_request(
    method: &Method,
    authority: &str,
    path: &str,
    content_type: Option<&HeaderValue>,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + path.len() + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.as_bytes());
    if let Some(ct) = content_type {
        out.extend_from_slice(b"\r\ncontent-type: ");
        out.extend_from_slice(ct.as_bytes());
    }
    if !body.is_empty() || !matches!(*method, Method::GET | Method::HEAD) {
        out.extend_from_slice(b"\r\ncontent-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub(super) enum Parsed {
    More,
    /// The answer, whether the connection may carry another request, and the bytes of
    /// `buf` the answer took (what follows is the next answer's).
    Done(Answer, bool, usize),
}

/// Parses an answer from `buf`; `closed` when the node closed the connection after it,
/// `head` for an answer to HEAD (no body whatever its length says).
pub(super) fn parse_answer(buf: &[u8], closed: bool, head: bool) -> Result<Parsed, AnswerError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf).map_err(AnswerError::Malformed)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(Parsed::More),
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| AnswerError::Status(code))?;
    let mut keep = response.version == Some(1);
    let (mut content_type, mut location, mut length, mut chunked) = (None, None, None, false);
    for h in response.headers.iter() {
        let value = || HeaderValue::from_bytes(h.value).ok();
        if h.name.eq_ignore_ascii_case("content-type") {
            content_type = value();
        } else if h.name.eq_ignore_ascii_case("location") {
            location = value();
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).unwrap_or("").trim();
            length = Some(text.parse::<usize>().map_err(|_| AnswerError::Length(text.to_string()))?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep &= !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let rest = &buf[head_len..];
    let (body, used) = if head || code == 204 || code == 304 || (100..200).contains(&code) {
        (Bytes::new(), 0)
    } else if chunked {
        match dechunk(rest)? {
            Some(found) => (Bytes::from(found.0), found.1),
            None => return Ok(Parsed::More),
        }
    } else if let Some(length) = length {
        if rest.len() < length {
            return Ok(Parsed::More);
        }
        (Bytes::copy_from_slice(&rest[..length]), length)
    } else if closed {
        keep = false;
        (Bytes::copy_from_slice(rest), rest.len())
    } else {
        return Ok(Parsed::More);
    };
    Ok(Parsed::Done(Answer { status, content_type, location, body }, keep, head_len + used))
}

/// The body of a whole chunked transfer and the bytes it took, or `None` while it is
/// incomplete.
fn dechunk(all: &[u8]) -> Result<Option<(Vec<u8>, usize)>, AnswerError> {
    let mut rest = all;
    let mut body = Vec::new();
    loop {
        let (skip, size) = match httparse::parse_chunk_size(rest).map_err(|_| AnswerError::ChunkSize)? {
            httparse::Status::Complete(found) => found,
            httparse::Status::Partial => return Ok(None),
        };
        let size = usize::try_from(size).map_err(|_| AnswerError::TooLarge)?;
        rest = &rest[skip..];
        if size == 0 {
            // No trailers from a node: the last chunk ends with an empty line.
            return Ok(rest.starts_with(b"\r\n").then(|| (body, all.len() - rest.len() + 2)));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(parsed: Parsed) -> (Answer, bool) {
        match parsed {
            Parsed::Done(answer, keep, _) => (answer, keep),
            Parsed::More => panic!("incomplete"),
        }
    }

    #[test]
    fn an_answer_is_read_by_its_length_whatever_the_reads_cut() {
        let whole = b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        for cut in 0..whole.len() {
            assert!(matches!(parse_answer(&whole[..cut], false, false), Ok(Parsed::More)), "cut at {cut}");
        }
        let (answer, keep) = done(parse_answer(whole, false, false).unwrap());
        assert_eq!(answer.status, StatusCode::CONFLICT);
        assert_eq!(answer.content_type.unwrap(), "application/json");
        assert_eq!(&answer.body[..], b"{\"a\":1}");
        assert!(keep);
    }

    #[test]
    fn chunked_answers_close_and_head_are_understood() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert!(matches!(parse_answer(&chunked[..chunked.len() - 2], false, false), Ok(Parsed::More)));
        assert_eq!(&done(parse_answer(chunked, false, false).unwrap()).0.body[..], b"abcde");
        let close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        assert!(!done(parse_answer(close, false, false).unwrap()).1, "connection: close is not reused");
        let no_length = b"HTTP/1.1 200 OK\r\n\r\nto the end";
        assert!(matches!(parse_answer(no_length, false, false), Ok(Parsed::More)));
        let (answer, keep) = done(parse_answer(no_length, true, false).unwrap());
        assert_eq!((&answer.body[..], keep), (&b"to the end"[..], false));
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n";
        assert!(done(parse_answer(head, false, true).unwrap()).0.body.is_empty());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false, false).is_err());
        assert!(parse_answer(b"garbage\r\n\r\n", false, false).is_err());
    }

    #[test]
    fn requests_name_their_length_and_type() {
        let json = HeaderValue::from_static("application/json");
        let put = encode_request(&Method::PUT, "n:1", "/a?token=x", Some(&json), b"{}");
        assert_eq!(
            put,
            b"PUT /a?token=x HTTP/1.1\r\nhost: n:1\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        assert_eq!(encode_request(&Method::GET, "n:1", "/b", None, b""), b"GET /b HTTP/1.1\r\nhost: n:1\r\n\r\n");
    }
}
