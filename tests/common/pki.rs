//! Certificates for the TLS tests, made with the `openssl` CLI in a
//! temporary folder: a CA, a server certificate for localhost/127.0.0.1,
//! client certificates (good, from another CA, expired) and token files.
//! Shared by tests/tls.rs and tests/ship_secure.rs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use quiverdb_follower::tls::{ClientTls, ClientTlsFiles};

pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";

pub fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA, a server certificate for localhost / 127.0.0.1, and client
/// certificates: good, from another CA, expired.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.issue("server", "ca", "localhost", "serverAuth", "30", 1);
        pki.issue("client", "ca", "leader", "clientAuth", "30", 2);
        pki.issue("rogue", "other-ca", "leader", "clientAuth", "30", 3);
        pki.issue("expired", "ca", "leader", "clientAuth", "-1", 4);
        fs::write(pki.path("token"), format!("{TOKEN}\n")).unwrap();
        fs::write(pki.path("wrong-token"), "ffffffffffffffffffffffffffffffff").unwrap();
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    pub fn ca(&self, name: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "30",
                "-subj",
                &format!("/CN={name}"),
            ],
        );
    }

    /// `days` -1 makes a certificate that expired when it was made.
    pub fn issue(&self, name: &str, ca: &str, cn: &str, eku: &str, days: &str, serial: u32) {
        let d = self.dir.path();
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        fs::write(
            d.join(format!("{name}.ext")),
            format!(
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={eku}\nbasicConstraints=CA:FALSE\n"
            ),
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-set_serial",
                &serial.to_string(),
                "-days",
                days,
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }

    /// A client for our server; `cert`: which client certificate, if any.
    pub fn client(&self, cert: Option<&str>) -> ClientTls {
        ClientTls::load(ClientTlsFiles {
            ca: self.path("ca.pem"),
            domain: "localhost".into(),
            cert: cert.map(|c| self.path(&format!("{c}.pem"))),
            key: cert.map(|c| self.path(&format!("{c}.key"))),
        })
        .unwrap()
    }

    /// The connecting side's flags for [`Pki::server_args`]`(true)`: our CA and
    /// name, the client certificate and the token (without `--tls client`,
    /// which qdb-ship's `--sink tls://` implies).
    pub fn client_args(&self) -> Vec<String> {
        vec![
            "--tls-ca".into(),
            self.p("ca.pem"),
            "--tls-domain".into(),
            "localhost".into(),
            "--tls-cert".into(),
            self.p("client.pem"),
            "--tls-key".into(),
            self.p("client.key"),
            "--auth-token-file".into(),
            self.p("token"),
        ]
    }

    /// `--tls server` with mutual TLS and the token.
    pub fn server_args(&self, token: bool) -> Vec<String> {
        let mut v = vec![
            "--tls".into(),
            "server".into(),
            "--tls-cert".into(),
            self.p("server.pem"),
            "--tls-key".into(),
            self.p("server.key"),
            "--tls-client-ca".into(),
            self.p("ca.pem"),
        ];
        if token {
            v.push("--auth-token-file".into());
            v.push(self.p("token"));
        }
        v
    }
}
