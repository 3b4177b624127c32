//! TLS for the WAL link (rustls with the ring provider; no OpenSSL).
//!
//! Two roles, each with reloadable material:
//!
//! * [`ServerTls`]: the accepting side. A certificate chain and key
//!   (`--tls-cert`, `--tls-key`), and optionally `--tls-client-ca`: then
//!   every client must present a certificate signed by that CA (mutual TLS),
//!   which is what authenticates a leader.
//! * [`ClientTls`]: the connecting side. The CA that signs the server's
//!   certificate (`--tls-ca`), the name to verify it against
//!   (`--tls-domain`), and optionally a client certificate and key.
//!
//! Both load and check every file when built ([`ServerTls::load`],
//! [`ClientTls::load`]), so a bad configuration is an error at startup, and
//! both keep the built rustls config behind an `Arc` that [`reload`]
//! replaces (on SIGHUP): a session already running keeps the config it was
//! handshaken with; the next connection uses the new one.
//!
//! # API for the sending side (`qdb-ship`)
//!
//! ```no_run
//! # use quiverdb_follower::tls::{ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles};
//! # use std::io::Write;
//! # use std::time::Duration;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // --sink tls://HOST:PORT: connect, verify the follower, send the stream.
//! let client = ClientTls::load(ClientTlsFiles {
//!     ca: "ca.pem".into(),
//!     domain: "follower.example.com".into(),
//!     cert: Some("leader.pem".into()),
//!     key: Some("leader.key".into()),
//! })?;
//! let mut stream = quiverdb_follower::tls::connect_tls("follower:9999", &client, Duration::from_secs(10))?;
//! // With --auth-token-file: the preamble, before the stream.
//! let token = quiverdb_follower::auth::Token::load("token".as_ref())?;
//! quiverdb_follower::auth::send_token(&mut stream, &token, "follower:9999")?;
//! stream.write_all(b"...")?;
//! stream.close()?; // close_notify, so the follower sees a clean end
//!
//! // --listen ADDR --tls server: wrap each accepted socket.
//! let server = ServerTls::load(ServerTlsFiles {
//!     cert: "ship.pem".into(),
//!     key: "ship.key".into(),
//!     client_ca: None,
//! })?;
//! let listener = std::net::TcpListener::bind("0.0.0.0:9999")?;
//! let (tcp, _) = listener.accept()?;
//! let mut stream = server.accept(tcp, Duration::from_secs(10))?;
//! # Ok(()) }
//! ```
//!
//! [`reload`]: ServerTls::reload

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, RootCertStore,
    ServerConfig, ServerConnection, StreamOwned,
};
use thiserror::Error;

/// `--tls`: the same values as QuiverDB 1.3-alpha's follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    None,
    /// Accept TLS (listen mode).
    Server,
    /// Connect with TLS (connect mode).
    Client,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Server => "server",
            TlsMode::Client => "client",
        }
    }
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<TlsMode, String> {
        match s.trim() {
            // 1.3-alpha treats an empty value as none.
            "none" | "" => Ok(TlsMode::None),
            "server" => Ok(TlsMode::Server),
            "client" => Ok(TlsMode::Client),
            other => Err(format!(
                "{other:?} is not one of \"none\", \"server\", \"client\""
            )),
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of loading TLS material and of handshakes. Each is one line that
/// names the file or the peer and says what to check.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)", path.display())]
    NoCert { what: &'static str, path: PathBuf },
    #[error("{what} {} is not a valid PEM file: {msg}", path.display())]
    BadPem {
        what: &'static str,
        path: PathBuf,
        msg: String,
    },
    #[error("--tls-key {} holds no private key (expected PKCS#8, RSA or EC PEM)", path.display())]
    NoKey { path: PathBuf },
    #[error("--tls-key {} cannot be used: {msg}", path.display())]
    BadKey { path: PathBuf, msg: String },
    #[error("--tls-key {} does not match the certificate in --tls-cert {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{what} {} holds a certificate that cannot be used as a trust anchor: {msg}", path.display())]
    BadCa {
        what: &'static str,
        path: PathBuf,
        msg: String,
    },
    #[error("--tls-domain {0:?} is not a valid DNS name or IP address")]
    BadDomain(String),
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
    #[error("TLS with {peer}: {msg}")]
    Handshake { peer: String, msg: String },
    #[error("TLS with {peer}: no handshake within {secs} s")]
    Timeout { peer: String, secs: u64 },
    #[error("TLS with {peer}: stopping on signal")]
    Shutdown { peer: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what,
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file("--tls-key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        e => TlsError::BadPem {
            what: "--tls-key",
            path: path.to_path_buf(),
            msg: e.to_string(),
        },
    })
}

/// A certificate chain and its key, checked to belong together: rustls
/// alone would only notice at the first handshake.
fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs("--tls-cert", cert)?;
    let der = load_key(key)?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::BadKey {
            path: key.to_path_buf(),
            msg: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) => Ok(Arc::new(ck)),
        // Unknown means the key type cannot tell its public key; let the
        // handshake decide rather than refuse a working pair.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(ck)),
        Err(_) => Err(TlsError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
    }
}

fn load_roots(what: &'static str, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            what,
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// One certificate and key, resolved the same for every client (no SNI).
#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The material in use, swapped whole on SIGHUP: connections take a clone
/// of the `Arc`, so a reload never disturbs a handshake under way. A
/// poisoned lock still holds a complete config, so it is used as is.
#[derive(Debug)]
struct Current<T>(RwLock<Arc<T>>);

impl<T> Current<T> {
    fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

/// The server side's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// `--tls-cert`: PEM chain, leaf first.
    pub cert: PathBuf,
    /// `--tls-key`: PEM private key (PKCS#8, RSA or SEC1).
    pub key: PathBuf,
    /// `--tls-client-ca`: require client certificates signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// TLS server material, reloadable. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct ServerTls {
    files: ServerTlsFiles,
    current: Current<ServerConfig>,
}

impl ServerTls {
    /// Read and check every file; the error names the first bad one.
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let config = Self::build(&files)?;
        Ok(ServerTls {
            files,
            current: Current(RwLock::new(config)),
        })
    }

    fn build(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let ck = load_certified_key(&files.cert, &files.key, &provider)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let roots = load_roots("--tls-client-ca", ca)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| TlsError::BadCa {
                        what: "--tls-client-ca",
                        path: ca.clone(),
                        msg: e.to_string(),
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(SingleCert(ck)));
        // No session resumption: a leader connects once per session, and
        // tickets the client never reads would make its close a reset
        // (unread data in its receive buffer) that cuts the stream's tail.
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// True when clients must present a certificate (mutual TLS).
    pub fn requires_client_cert(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Re-read every file. On error the current material stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Self::build(&self.files)?;
        self.current.set(config);
        Ok(())
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.get()
    }

    /// Run the server handshake on an accepted socket, within `timeout`.
    pub fn accept(&self, tcp: TcpStream, timeout: Duration) -> Result<TlsStream, TlsError> {
        let never = AtomicBool::new(false);
        let s = self.accept_until(tcp, Instant::now() + timeout, &never)?;
        // Plain blocking I/O from here on, as the caller expects.
        let _ = s.tcp().set_read_timeout(None);
        Ok(s)
    }

    /// As [`ServerTls::accept`], with a deadline and a shutdown flag.
    pub fn accept_until(
        &self,
        tcp: TcpStream,
        deadline: Instant,
        shutdown: &AtomicBool,
    ) -> Result<TlsStream, TlsError> {
        let peer = peer_of(&tcp);
        // A first byte that is not a TLS handshake record (22) is a peer
        // speaking plain TCP: say so instead of rustls's "corrupt message".
        let mut first = [0u8; 1];
        wait_readable(&tcp, &peer, deadline, shutdown)?;
        match tcp.peek(&mut first) {
            Ok(1) if first[0] != 22 => {
                return Err(TlsError::Handshake {
                    peer,
                    msg: "sent plaintext, not TLS (this port expects TLS: is the leader configured for TLS? \
                          `quiverdb wal-ship` speaks plain TCP: use qdb-ship --sink tls:// or a TLS tunnel)"
                        .into(),
                })
            }
            Ok(0) => {
                return Err(TlsError::Handshake {
                    peer,
                    msg: "closed the connection before the TLS handshake".into(),
                })
            }
            _ => {}
        }
        let conn =
            ServerConnection::new(self.config()).map_err(|e| TlsError::Config(e.to_string()))?;
        let mut s = StreamOwned::new(conn, tcp);
        handshake(&mut s.conn, &mut s.sock, &peer, deadline, shutdown)?;
        Ok(TlsStream::Server(Box::new(s)))
    }
}

/// The client side's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// `--tls-ca`: the CA that signs the server's certificate.
    pub ca: PathBuf,
    /// `--tls-domain`: the name the server's certificate must carry (also sent as SNI).
    pub domain: String,
    /// `--tls-cert` in client mode: our certificate, for a server that requires one.
    pub cert: Option<PathBuf>,
    /// `--tls-key` in client mode.
    pub key: Option<PathBuf>,
}

/// TLS client material, reloadable. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct ClientTls {
    files: ClientTlsFiles,
    name: ServerName<'static>,
    current: Current<ClientConfig>,
}

impl ClientTls {
    pub fn load(files: ClientTlsFiles) -> Result<ClientTls, TlsError> {
        let name = ServerName::try_from(files.domain.clone())
            .map_err(|_| TlsError::BadDomain(files.domain.clone()))?;
        let config = Self::build(&files)?;
        Ok(ClientTls {
            files,
            name,
            current: Current(RwLock::new(config)),
        })
    }

    fn build(files: &ClientTlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        let roots = load_roots("--tls-ca", &files.ca)?;
        // Built explicitly so that a bad CA file is reported as such.
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::BadCa {
                what: "--tls-ca",
                path: files.ca.clone(),
                msg: e.to_string(),
            })?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_webpki_verifier(verifier);
        let config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => {
                let ck = load_certified_key(cert, key, &provider)?;
                builder.with_client_cert_resolver(Arc::new(ClientCert(ck)))
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs both --tls-cert and --tls-key".into(),
                ))
            }
        };
        Ok(Arc::new(config))
    }

    pub fn files(&self) -> &ClientTlsFiles {
        &self.files
    }

    /// Re-read every file. On error the current material stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Self::build(&self.files)?;
        self.current.set(config);
        Ok(())
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.current.get()
    }

    /// Run the client handshake on a connected socket, within `deadline`.
    pub fn handshake(
        &self,
        tcp: TcpStream,
        deadline: Instant,
        shutdown: &AtomicBool,
    ) -> Result<TlsStream, TlsError> {
        let peer = peer_of(&tcp);
        let conn = ClientConnection::new(self.config(), self.name.clone())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut s = StreamOwned::new(conn, tcp);
        handshake(&mut s.conn, &mut s.sock, &peer, deadline, shutdown)?;
        Ok(TlsStream::Client(Box::new(s)))
    }
}

#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Connect to `addr` (HOST:PORT) and run the client handshake, both within
/// `timeout`. For `qdb-ship --sink tls://HOST:PORT`.
pub fn connect_tls(addr: &str, tls: &ClientTls, timeout: Duration) -> Result<TlsStream, TlsError> {
    use std::net::ToSocketAddrs;
    let err = |source| TlsError::Connect {
        addr: addr.to_string(),
        source,
    };
    let deadline = Instant::now() + timeout;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses found");
    for target in addr.to_socket_addrs().map_err(err)? {
        match TcpStream::connect_timeout(&target, timeout) {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                let never = AtomicBool::new(false);
                let s = tls.handshake(tcp, deadline, &never)?;
                // Plain blocking I/O from here on, as the caller expects.
                let _ = s.tcp().set_read_timeout(None);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(err(last))
}

fn peer_of(tcp: &TcpStream) -> String {
    tcp.peer_addr()
        .map_or_else(|_| "the peer".to_string(), |a| a.to_string())
}

/// Wait until `tcp` is readable, the deadline passes or shutdown is set.
fn wait_readable(
    tcp: &TcpStream,
    peer: &str,
    deadline: Instant,
    shutdown: &AtomicBool,
) -> Result<(), TlsError> {
    let mut buf = [0u8; 1];
    loop {
        step_timeout(tcp, peer, deadline, shutdown)?;
        match tcp.peek(&mut buf) {
            Ok(_) => return Ok(()),
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                return Err(TlsError::Handshake {
                    peer: peer.to_string(),
                    msg: e.to_string(),
                })
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Set the socket's timeouts to the shorter of the time left and a tick, so
/// that a peer that drips one byte at a time cannot stretch the deadline and
/// shutdown is seen promptly.
fn step_timeout(
    tcp: &TcpStream,
    peer: &str,
    deadline: Instant,
    shutdown: &AtomicBool,
) -> Result<(), TlsError> {
    if shutdown.load(Ordering::Relaxed) {
        return Err(TlsError::Shutdown {
            peer: peer.to_string(),
        });
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(TlsError::Timeout {
            peer: peer.to_string(),
            secs: 0,
        });
    }
    let t = Some(left.min(crate::transport::net::TICK));
    let _ = tcp.set_read_timeout(t);
    let _ = tcp.set_write_timeout(t);
    Ok(())
}

fn handshake<C, S>(
    conn: &mut C,
    tcp: &mut TcpStream,
    peer: &str,
    deadline: Instant,
    shutdown: &AtomicBool,
) -> Result<(), TlsError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    let started = Instant::now();
    while conn.is_handshaking() {
        step_timeout(tcp, peer, deadline, shutdown).map_err(|e| match e {
            TlsError::Timeout { peer, .. } => TlsError::Timeout {
                peer,
                secs: started.elapsed().as_secs_f64().round() as u64,
            },
            e => e,
        })?;
        match conn.complete_io(tcp) {
            Ok((0, 0)) if conn.is_handshaking() && conn.wants_read() => {
                return Err(TlsError::Handshake {
                    peer: peer.to_string(),
                    msg: "closed the connection during the TLS handshake (it may have refused our certificate)"
                        .into(),
                })
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                // Tell the peer why, as rustls would in blocking use.
                let _ = conn.complete_io(tcp);
                return Err(TlsError::Handshake {
                    peer: peer.to_string(),
                    msg: describe_io(&e),
                });
            }
        }
    }
    // Handshake done: back to the stream's own tick timeout.
    let _ = tcp.set_read_timeout(Some(crate::transport::net::TICK));
    let _ = tcp.set_write_timeout(None);
    Ok(())
}

/// rustls errors arrive wrapped in io::Error (InvalidData); say what they
/// mean for an operator.
fn describe_io(e: &io::Error) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    describe(tls)
}

fn describe(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::NoCertificatesPresented => {
            "presented no client certificate (this server requires one: --tls-client-ca)".into()
        }
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "its certificate is not signed by the trusted CA (--tls-client-ca / --tls-ca): unknown issuer".into()
        }
        // An issuer with the trusted CA's name but another key.
        E::InvalidCertificate(CertificateError::BadSignature) => {
            "its certificate is not signed by the trusted CA (--tls-client-ca / --tls-ca): the signature does not verify"
                .into()
        }
        E::InvalidCertificate(CertificateError::Expired)
        | E::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "its certificate has expired".into()
        }
        E::InvalidCertificate(CertificateError::NotValidYet)
        | E::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => {
            "its certificate is not valid yet (check the clocks)".into()
        }
        E::InvalidCertificate(CertificateError::NotValidForName)
        | E::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "its certificate is not valid for --tls-domain".into()
        }
        E::InvalidCertificate(_) => format!("its certificate was refused ({e})"),
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            "the peer requires a client certificate (give --tls-cert and --tls-key)".into()
        }
        E::AlertReceived(
            a @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::DecryptError),
        ) => format!("the peer refused our certificate ({a:?})"),
        E::InvalidMessage(_) => "sent something that is not TLS".into(),
        e => e.to_string(),
    }
}

/// A connection after the handshake: plain TCP or TLS, as one Read + Write
/// type so that the session code does not care which.
#[derive(Debug)]
pub enum TlsStream {
    Plain(TcpStream),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl TlsStream {
    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            TlsStream::Plain(s) => s,
            TlsStream::Server(s) => &s.sock,
            TlsStream::Client(s) => &s.sock,
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, TlsStream::Plain(_))
    }

    /// The peer's end-entity certificate (DER), if it presented one.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        let certs = match self {
            TlsStream::Plain(_) => None,
            TlsStream::Server(s) => s.conn.peer_certificates(),
            TlsStream::Client(s) => s.conn.peer_certificates(),
        };
        certs.and_then(|c| c.first()).map(|c| c.to_vec())
    }

    /// Send TLS close_notify (so the peer can tell a clean end from a cut),
    /// shut the socket down for writing, and read what the peer still sends
    /// until it closes (at most [`CLOSE_DRAIN`]): closing a socket with
    /// unread data resets the connection, and a reset can discard the
    /// stream's last bytes before the peer has read them.
    pub fn close(&mut self) -> io::Result<()> {
        match self {
            TlsStream::Plain(_) => {}
            TlsStream::Server(s) => {
                s.conn.send_close_notify();
                s.flush()?;
            }
            TlsStream::Client(s) => {
                s.conn.send_close_notify();
                s.flush()?;
            }
        }
        self.tcp().shutdown(Shutdown::Write)?;
        let deadline = Instant::now() + CLOSE_DRAIN;
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            self.tcp().set_read_timeout(Some(left))?;
            match self.tcp().read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

/// How long [`TlsStream::close`] waits for the peer to close.
pub const CLOSE_DRAIN: Duration = Duration::from_secs(5);

/// A TLS peer that closes without close_notify shows as UnexpectedEof; for
/// the WAL stream that is the same as a TCP close (a cut record is a partial
/// tail either way), so it reads as an end.
fn eof_is_end(r: io::Result<usize>) -> io::Result<usize> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        r => r,
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            TlsStream::Plain(s) => s.read(buf),
            TlsStream::Server(s) => eof_is_end(s.read(buf)),
            TlsStream::Client(s) => eof_is_end(s.read(buf)),
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            TlsStream::Plain(s) => s.write(buf),
            TlsStream::Server(s) => s.write(buf),
            TlsStream::Client(s) => s.write(buf),
        }
    }

    /// Passed on, so that a plain socket takes a catch-up batch in one
    /// system call (qdb-ship's `bulk`), as a bare `TcpStream` would.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            TlsStream::Plain(s) => s.write_vectored(bufs),
            TlsStream::Server(s) => s.write_vectored(bufs),
            TlsStream::Client(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            TlsStream::Plain(s) => s.flush(),
            TlsStream::Server(s) => s.flush(),
            TlsStream::Client(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_in_1_3_alpha() {
        assert_eq!("none".parse::<TlsMode>().unwrap(), TlsMode::None);
        assert_eq!("".parse::<TlsMode>().unwrap(), TlsMode::None);
        assert_eq!("server".parse::<TlsMode>().unwrap(), TlsMode::Server);
        assert_eq!("client".parse::<TlsMode>().unwrap(), TlsMode::Client);
        assert!("mtls".parse::<TlsMode>().unwrap_err().contains("\"mtls\""));
    }

    #[test]
    fn missing_files_are_named() {
        let e = ServerTls::load(ServerTlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            client_ca: None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("cannot read --tls-cert /nonexistent/cert.pem"),
            "{e}"
        );
        let e = ClientTls::load(ClientTlsFiles {
            ca: "/nonexistent/ca.pem".into(),
            domain: "x".into(),
            cert: None,
            key: None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("cannot read --tls-ca /nonexistent/ca.pem"),
            "{e}"
        );
        let e = ClientTls::load(ClientTlsFiles {
            ca: "/nonexistent/ca.pem".into(),
            domain: "not a name!".into(),
            cert: None,
            key: None,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("--tls-domain"), "{e}");
    }
}
