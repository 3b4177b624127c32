//! The link's security settings (`--tls*`, `--auth-token-file`,
//! `--allow-plaintext-token`, `--handshake-timeout-secs`), shared by
//! `qdb-recv` and the daemon, checked and loaded in one place so that a bad
//! combination or an unreadable file is a usage error (exit 2) before any
//! socket is bound or the database is locked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::transport::auth::{AuthError, Token};
use crate::transport::handshake::DEFAULT_HANDSHAKE_TIMEOUT_SECS;
use crate::transport::tls::{
    ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles, TlsError, TlsMode,
};

/// The settings as given (flags or TOML keys, merged by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSettings {
    pub tls: TlsMode,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_domain: Option<String>,
    pub tls_client_ca: Option<PathBuf>,
    pub auth_token_file: Option<PathBuf>,
    pub allow_plaintext_token: bool,
    pub handshake_timeout_secs: u64,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            tls: TlsMode::None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_domain: None,
            tls_client_ca: None,
            auth_token_file: None,
            allow_plaintext_token: false,
            handshake_timeout_secs: DEFAULT_HANDSHAKE_TIMEOUT_SECS,
        }
    }
}

#[derive(Debug, Error)]
pub enum LinkError {
    /// A combination that cannot work; the message names the flags.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Loaded material for one side of the link.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub server: Option<Arc<ServerTls>>,
    pub client: Option<Arc<ClientTls>>,
    pub token: Option<Token>,
    pub handshake_timeout: Duration,
}

impl LinkSettings {
    /// Check the combination for a listening (`listening` true) or
    /// connecting process, then read every file.
    pub fn load(&self, listening: bool) -> Result<Link, LinkError> {
        let usage = |m: String| Err(LinkError::Usage(m));
        if self.handshake_timeout_secs == 0 {
            return usage("--handshake-timeout-secs must be at least 1".into());
        }
        let mut link = Link {
            handshake_timeout: Duration::from_secs(self.handshake_timeout_secs),
            ..Link::default()
        };
        match self.tls {
            TlsMode::None => {
                let stray = [
                    ("--tls-cert", self.tls_cert.is_some()),
                    ("--tls-key", self.tls_key.is_some()),
                    ("--tls-ca", self.tls_ca.is_some()),
                    ("--tls-client-ca", self.tls_client_ca.is_some()),
                    ("--tls-domain", self.tls_domain.is_some()),
                ];
                if let Some((flag, _)) = stray.iter().find(|(_, set)| *set) {
                    return usage(format!(
                        "{flag} is set but --tls is none: add --tls server (with --listen) or --tls client \
                         (with --connect), or remove {flag}"
                    ));
                }
            }
            TlsMode::Server => {
                if !listening {
                    return usage(
                        "--tls server needs --listen (with --connect use --tls client)".into(),
                    );
                }
                let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
                    return usage("--tls server needs --tls-cert and --tls-key".into());
                };
                if self.tls_ca.is_some() || self.tls_domain.is_some() {
                    log::warn!(
                        "--tls-ca and --tls-domain are for --tls client and are ignored in server mode; \
                         to require client certificates use --tls-client-ca"
                    );
                }
                link.server = Some(Arc::new(ServerTls::load(ServerTlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                })?));
            }
            TlsMode::Client => {
                if listening {
                    return usage(
                        "--tls client needs --connect (with --listen use --tls server)".into(),
                    );
                }
                let (Some(ca), Some(domain)) = (&self.tls_ca, &self.tls_domain) else {
                    return usage("--tls client needs --tls-ca and --tls-domain".into());
                };
                if self.tls_cert.is_some() != self.tls_key.is_some() {
                    return usage(
                        "a client certificate needs both --tls-cert and --tls-key".into(),
                    );
                }
                if self.tls_client_ca.is_some() {
                    return usage("--tls-client-ca is for --tls server".into());
                }
                link.client = Some(Arc::new(ClientTls::load(ClientTlsFiles {
                    ca: ca.clone(),
                    domain: domain.clone(),
                    cert: self.tls_cert.clone(),
                    key: self.tls_key.clone(),
                })?));
            }
        }
        if let Some(f) = &self.auth_token_file {
            if self.tls == TlsMode::None && !self.allow_plaintext_token {
                return usage(
                    "--auth-token-file without TLS would send the token in the clear: add --tls, or \
                     --allow-plaintext-token if the network is trusted (e.g. an ssh tunnel)"
                        .into(),
                );
            }
            link.token = Some(Token::load(f)?);
        }
        Ok(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: LinkSettings, listening: bool) -> String {
        s.load(listening).unwrap_err().to_string()
    }

    #[test]
    fn combinations_are_checked_before_files() {
        let s = LinkSettings {
            tls: TlsMode::Server,
            ..LinkSettings::default()
        };
        assert!(err(s.clone(), true).contains("needs --tls-cert and --tls-key"));
        assert!(err(s, false).contains("needs --listen"));
        let s = LinkSettings {
            tls: TlsMode::Client,
            tls_ca: Some("ca".into()),
            ..LinkSettings::default()
        };
        assert!(err(s, false).contains("needs --tls-ca and --tls-domain"));
        let s = LinkSettings {
            tls_cert: Some("c".into()),
            ..LinkSettings::default()
        };
        assert!(err(s, true).contains("--tls-cert is set but --tls is none"));
        let s = LinkSettings {
            auth_token_file: Some("/nonexistent".into()),
            ..LinkSettings::default()
        };
        assert!(err(s.clone(), true).contains("in the clear"));
        let s = LinkSettings {
            allow_plaintext_token: true,
            ..s
        };
        assert!(err(s, true).contains("cannot read --auth-token-file /nonexistent"));
        assert!(LinkSettings::default().load(true).unwrap().server.is_none());
    }
}
