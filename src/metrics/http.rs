//! `/metrics` and `/healthz` over HTTP (tiny_http) on a thread of their own,
//! so a slow or hostile scraper never stalls replication: the apply path
//! only ever touches atomics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use thiserror::Error;
use tiny_http::{Header, Method, Response, Server};

use super::Exporter;

/// The content type of Prometheus text format 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}: {msg}; choose another --metrics-addr")]
    Bind { addr: SocketAddr, msg: String },
}

/// The running server; dropping it stops the thread.
pub struct MetricsServer {
    server: Arc<Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Bind `addr` (port 0 picks one) and serve until dropped. Logs
    /// "metrics on http://ADDR/metrics" at info.
    pub fn start(
        addr: SocketAddr,
        exporter: Arc<dyn Exporter>,
    ) -> Result<MetricsServer, MetricsError> {
        let server = Server::http(addr).map_err(|e| MetricsError::Bind {
            addr,
            msg: e.to_string(),
        })?;
        let local = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let s = server.clone();
        let thread = thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&s, &*exporter))
            .expect("spawn metrics thread");
        log::info!("metrics on http://{local}/metrics");
        Ok(MetricsServer {
            server,
            addr: local,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &Server, exporter: &dyn Exporter) {
    let text = |body: &str, ctype: &str, code: u16| {
        Response::from_string(body)
            .with_status_code(code)
            .with_header(Header::from_bytes("Content-Type", ctype).expect("valid header"))
    };
    // `incoming_requests` ends when the server is unblocked (at drop).
    for req in server.incoming_requests() {
        let path = req.url().split('?').next().unwrap_or("");
        let resp = match (req.method(), path) {
            (Method::Get | Method::Head, "/metrics") => text(&exporter.encode(), CONTENT_TYPE, 200),
            (Method::Get | Method::Head, "/healthz") if exporter.healthy() => {
                text("ok\n", "text/plain", 200)
            }
            (Method::Get | Method::Head, "/healthz") => text("unavailable\n", "text/plain", 503),
            (Method::Get | Method::Head, _) => {
                text("not found: try /metrics or /healthz\n", "text/plain", 404)
            }
            _ => text("method not allowed\n", "text/plain", 405),
        };
        // A scraper that hung up is its own problem, and not worth a log line.
        let _ = req.respond(resp);
    }
}
