//! Token authentication: a short preamble that the connecting side sends
//! before the WAL stream, checked by the accepting side in constant time.
//!
//! Wire format (docs/protocol.md, "Authentication and TLS"):
//!
//! ```text
//! client -> server   "QDBAUTH1"            8 bytes, ASCII magic
//!                    len                   u16, big-endian, 1..=1024
//!                    token                 len bytes
//! server -> client   status                1 byte: 0x00 accepted, 0x01 refused
//! ```
//!
//! The stream (16-byte WAL header first) follows the accepted status. On a
//! refusal the server closes the connection after the status byte, so a
//! client can say "token refused" instead of "connection reset".
//!
//! The token travels in the clear unless the link is TLS, so the settings
//! refuse a token without TLS unless `--allow-plaintext-token` says so.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;
use thiserror::Error;

/// The preamble's first 8 bytes.
pub const AUTH_MAGIC: &[u8; 8] = b"QDBAUTH1";
/// Status byte: token accepted, the stream follows.
pub const AUTH_OK: u8 = 0x00;
/// Status byte: token refused, the server closes.
pub const AUTH_REFUSED: u8 = 0x01;
/// Tokens shorter than this are refused when the file is loaded: a token is
/// only as good as it is hard to guess (`openssl rand -hex 32`).
pub const MIN_TOKEN_LEN: usize = 16;
pub const MAX_TOKEN_LEN: usize = 1024;

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("cannot read --auth-token-file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("--auth-token-file {} holds a token of {len} bytes; use {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} bytes (e.g. `openssl rand -hex 32 > FILE`)", path.display())]
    BadLength { path: PathBuf, len: usize },
    #[error("{peer} did not send the auth preamble (got {got}): is it configured with --auth-token-file?")]
    NoPreamble { peer: String, got: String },
    #[error("{peer} sent a token of {len} bytes, more than {MAX_TOKEN_LEN}")]
    TooLong { peer: String, len: usize },
    #[error("{peer} sent a wrong token")]
    WrongToken { peer: String },
    #[error("{peer} refused our token (check --auth-token-file on both ends)")]
    Refused { peer: String },
    #[error("{peer}: {source}")]
    Io { peer: String, source: io::Error },
}

/// A shared secret read from a file. Debug does not show it.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({} bytes)", self.0.len())
    }
}

impl Token {
    /// Read the token: the file's content without surrounding whitespace (a
    /// trailing newline from `echo` or an editor is not part of it).
    pub fn load(path: &Path) -> Result<Token, AuthError> {
        let bytes = std::fs::read(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // `<[u8]>::trim_ascii` needs Rust 1.80; the MSRV is 1.75.
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace());
        let t = match (start, end) {
            (Some(a), Some(b)) => &bytes[a..=b],
            _ => &[][..],
        };
        if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&t.len()) {
            return Err(AuthError::BadLength {
                path: path.to_path_buf(),
                len: t.len(),
            });
        }
        Ok(Token(t.to_vec()))
    }

    pub fn from_bytes(b: &[u8]) -> Token {
        Token(b.to_vec())
    }

    /// Constant time in the token's content (lengths may differ in time;
    /// the length is not the secret).
    pub fn matches(&self, other: &[u8]) -> bool {
        self.0.ct_eq(other).into()
    }
}

fn io_err(peer: &str) -> impl Fn(io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        peer: peer.to_string(),
        source,
    }
}

/// Client side: send the preamble and wait for the status byte.
pub fn send_token<S: Read + Write>(s: &mut S, token: &Token, peer: &str) -> Result<(), AuthError> {
    let mut msg = Vec::with_capacity(10 + token.0.len());
    msg.extend_from_slice(AUTH_MAGIC);
    msg.extend_from_slice(&(token.0.len() as u16).to_be_bytes());
    msg.extend_from_slice(&token.0);
    s.write_all(&msg).map_err(io_err(peer))?;
    s.flush().map_err(io_err(peer))?;
    let mut status = [0u8; 1];
    match read_exact_or_eof(s, &mut status).map_err(io_err(peer))? {
        true if status[0] == AUTH_OK => Ok(()),
        _ => Err(AuthError::Refused {
            peer: peer.to_string(),
        }),
    }
}

/// Server side: read the preamble, compare, answer with the status byte.
/// `read_exact` here relies on the caller's deadline (socket timeouts).
pub fn check_token<S: Read + Write>(s: &mut S, token: &Token, peer: &str) -> Result<(), AuthError> {
    let mut head = [0u8; 10];
    if !read_exact_or_eof(s, &mut head[..8]).map_err(io_err(peer))? || &head[..8] != AUTH_MAGIC {
        return Err(AuthError::NoPreamble {
            peer: peer.to_string(),
            got: crate::format::wal::describe_bytes(&head[..8]),
        });
    }
    if !read_exact_or_eof(s, &mut head[8..]).map_err(io_err(peer))? {
        return Err(AuthError::Io {
            peer: peer.to_string(),
            source: io::ErrorKind::UnexpectedEof.into(),
        });
    }
    let len = u16::from_be_bytes([head[8], head[9]]) as usize;
    if len > MAX_TOKEN_LEN {
        let _ = s.write_all(&[AUTH_REFUSED]).and_then(|_| s.flush());
        return Err(AuthError::TooLong {
            peer: peer.to_string(),
            len,
        });
    }
    let mut got = vec![0u8; len];
    if !read_exact_or_eof(s, &mut got).map_err(io_err(peer))? {
        return Err(AuthError::Io {
            peer: peer.to_string(),
            source: io::ErrorKind::UnexpectedEof.into(),
        });
    }
    if !token.matches(&got) {
        let _ = s.write_all(&[AUTH_REFUSED]).and_then(|_| s.flush());
        return Err(AuthError::WrongToken {
            peer: peer.to_string(),
        });
    }
    s.write_all(&[AUTH_OK]).map_err(io_err(peer))?;
    s.flush().map_err(io_err(peer))
}

/// read_exact that tells a clean EOF (false) from an error, and retries the
/// tick timeouts: the caller's deadline ends the wait (see handshake.rs).
pub(crate) fn read_exact_or_eof<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => return Ok(false),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Reads from `input`, collects what is written.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Duplex {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.input.read(b)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn preamble(token: &[u8]) -> Vec<u8> {
        let mut v = AUTH_MAGIC.to_vec();
        v.extend_from_slice(&(token.len() as u16).to_be_bytes());
        v.extend_from_slice(token);
        v
    }

    #[test]
    fn right_token_is_accepted_wrong_one_refused() {
        let t = Token::from_bytes(b"0123456789abcdef");
        let mut d = Duplex {
            input: Cursor::new(preamble(b"0123456789abcdef")),
            output: vec![],
        };
        check_token(&mut d, &t, "p").unwrap();
        assert_eq!(d.output, [AUTH_OK]);
        for bad in [&b"0123456789abcdeX"[..], b"0123456789abcde", b""] {
            let mut d = Duplex {
                input: Cursor::new(preamble(bad)),
                output: vec![],
            };
            let e = check_token(&mut d, &t, "p").unwrap_err();
            assert!(matches!(e, AuthError::WrongToken { .. }), "{e}");
            assert_eq!(d.output, [AUTH_REFUSED]);
        }
    }

    #[test]
    fn a_wal_header_instead_of_a_preamble_is_named() {
        let t = Token::from_bytes(b"0123456789abcdef");
        let mut d = Duplex {
            input: Cursor::new(b"P1WAL001\0\0\0\0\0\0\0\0".to_vec()),
            output: vec![],
        };
        let e = check_token(&mut d, &t, "p").unwrap_err().to_string();
        assert!(e.contains("did not send the auth preamble"), "{e}");
    }

    #[test]
    fn client_reads_the_status() {
        let t = Token::from_bytes(b"0123456789abcdef");
        let mut d = Duplex {
            input: Cursor::new(vec![AUTH_OK]),
            output: vec![],
        };
        send_token(&mut d, &t, "p").unwrap();
        assert_eq!(d.output, preamble(b"0123456789abcdef"));
        let mut d = Duplex {
            input: Cursor::new(vec![]),
            output: vec![],
        };
        assert!(matches!(
            send_token(&mut d, &t, "p").unwrap_err(),
            AuthError::Refused { .. }
        ));
    }

    #[test]
    fn token_files_are_trimmed_and_bounded() {
        let dir = std::env::temp_dir().join(format!("qdb-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t");
        std::fs::write(&f, "0123456789abcdef\n").unwrap();
        assert!(Token::load(&f).unwrap().matches(b"0123456789abcdef"));
        std::fs::write(&f, "short\n").unwrap();
        assert!(Token::load(&f).unwrap_err().to_string().contains("5 bytes"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
