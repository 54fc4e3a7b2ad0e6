//! Finding the end of a chunked body (RFC 9112 section 7.1) without decoding it: the bytes are
//! forwarded as they are, so only the framing is followed. Trailer fields are dropped (as
//! hyper drops them): an upstream must not send header fields past latchkey's checks.

/// Where a chunked body stands after the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// In a chunk-size line: the size read so far, and how many hex digits.
    Size(u64, u8),
    /// After the size, in chunk extensions, until the line ends.
    Extension(u64),
    /// Saw CR at the end of the size line.
    SizeLf(u64),
    /// Inside chunk data: bytes left.
    Data(u64),
    /// After the data: expects CR.
    DataCr,
    /// After the data's CR: expects LF.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Saw CR at the start of a line: the final LF ends the body.
    EndLf,
    /// The body is complete.
    Done,
}

/// A chunked body whose framing is broken.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

impl Chunked {
    pub fn new() -> Chunked {
        Chunked::Size(0, 0)
    }

    /// Follows the framing through `bytes`, copying them to `out` without trailer fields.
    /// Returns how many of them belong to the body: all of them, or fewer when the body ends
    /// inside `bytes` (then the state is `Done`).
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            if let Chunked::Data(left) = *self {
                let take = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                out.extend_from_slice(&bytes[i..i + take]);
                i += take;
                let left = left - take as u64;
                *self = if left == 0 {
                    Chunked::DataCr
                } else {
                    Chunked::Data(left)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            let trailer_field = matches!(*self, Chunked::Trailer)
                || (*self == Chunked::TrailerStart && b != b'\r' && b != b'\n');
            if !trailer_field && *self != Chunked::Done {
                out.push(b);
            }
            *self = match (*self, b) {
                (Chunked::Size(n, digits), _) if b.is_ascii_hexdigit() => {
                    if digits >= 15 {
                        return Err(BadChunk);
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Chunked::Size(n * 16 + d, digits + 1)
                }
                (Chunked::Size(n, d), b';' | b' ' | b'\t') if d > 0 => Chunked::Extension(n),
                (Chunked::Size(n, d), b'\r') if d > 0 => Chunked::SizeLf(n),
                (Chunked::Extension(n), b'\r') => Chunked::SizeLf(n),
                (Chunked::Extension(n), b'\n') | (Chunked::SizeLf(n), b'\n') => Self::after_size(n),
                (Chunked::Size(n, d), b'\n') if d > 0 => Self::after_size(n),
                (Chunked::Extension(n), _) => Chunked::Extension(n),
                (Chunked::DataCr, b'\r') => Chunked::DataLf,
                (Chunked::DataLf, b'\n') => Chunked::Size(0, 0),
                (Chunked::TrailerStart, b'\r') => Chunked::EndLf,
                (Chunked::TrailerStart, b'\n') | (Chunked::EndLf, b'\n') => {
                    *self = Chunked::Done;
                    return Ok(i);
                }
                (Chunked::TrailerStart, _) | (Chunked::Trailer, _) if b != b'\n' => {
                    Chunked::Trailer
                }
                (Chunked::Trailer, b'\n') => Chunked::TrailerStart,
                (Chunked::Done, _) => return Ok(i - 1),

                _ => return Err(BadChunk),
            };
        }
        Ok(i)
    }

    fn after_size(n: u64) -> Chunked {
        if n == 0 {
            Chunked::TrailerStart
        } else {
            Chunked::Data(n)
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Chunked::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<(usize, Vec<u8>), BadChunk> {
        let mut c = Chunked::new();
        let mut out = vec![];
        let n = c.feed(body, &mut out)?;
        let text = String::from_utf8_lossy(body);
        assert!(c.is_done(), "{c:?} after {text:?}");
        Ok((n, out))
    }

    #[test]
    fn finds_the_end_of_a_body_and_nothing_after_it() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        assert_eq!(whole(body), Ok((body.len(), body.to_vec())));
        let mut more = body.to_vec();
        more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(whole(&more), Ok((body.len(), body.to_vec())));
    }

    #[test]
    fn trailer_fields_are_dropped() {
        let trailers = b"3\r\nabc\r\n0\r\nset-cookie: latchkey-session=x\r\nx-b: 2\r\n\r\n";
        assert_eq!(
            whole(trailers),
            Ok((trailers.len(), b"3\r\nabc\r\n0\r\n\r\n".to_vec()))
        );
    }

    #[test]
    fn the_same_end_whatever_the_pieces() {
        let body = b"A\r\n0123456789\r\n2\r\nab\r\n0\r\ntrailer: x\r\n\r\n";
        for split in 1..body.len() {
            let mut c = Chunked::new();
            let mut seen = 0;
            let mut out = vec![];
            for piece in body.chunks(split) {
                seen += c.feed(piece, &mut out).expect("valid framing");
            }
            assert!(c.is_done(), "pieces of {split}");
            assert_eq!(seen, body.len());
            assert_eq!(out, b"A\r\n0123456789\r\n2\r\nab\r\n0\r\n\r\n");
        }
    }

    #[test]
    fn broken_framing_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX",
            b"5\r\nhello\rX",
            b"ffffffffffffffffff\r\n",
        ] {
            assert_eq!(
                Chunked::new().feed(bad, &mut vec![]),
                Err(BadChunk),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let mut c = Chunked::new();
        assert_eq!(c.feed(b"5\r\nhel", &mut vec![]), Ok(6));
        assert_eq!(c, Chunked::Data(2));
        assert!(!c.is_done());
    }
}
