//! A small HTTPS client for tests and benchmarks of the API listener: one kept-alive HTTP/1.1
//! connection (hyper's client over rustls, the cluster CA as the only root), JSON requests
//! with a bearer token, and a Server-Sent Events reader.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// TLS for the API: trusts only the cluster CA.
pub fn tls_to(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// One connection to one node's API listener.
pub struct ApiConnection {
    sender: SendRequest<Full<Bytes>>,
    token: String,
}

impl ApiConnection {
    pub async fn connect(
        address: &str,
        tls: Arc<rustls::ClientConfig>,
        token: &str,
    ) -> anyhow::Result<ApiConnection> {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        tcp.set_nodelay(true)?;
        let host = address
            .rsplit_once(':')
            .map_or(address, |(h, _)| h)
            .to_string();
        let name = ServerName::try_from(host)?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(ApiConnection {
            sender,
            token: token.to_string(),
        })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        accept: &str,
        last_event_id: Option<u64>,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "paddock")
            .header("authorization", format!("Bearer {}", self.token))
            .header("accept", accept);
        if let Some(id) = last_event_id {
            builder = builder.header("last-event-id", id.to_string());
        }
        let body = match body {
            Some(value) => {
                builder = builder.header("content-type", "application/json");
                Full::new(Bytes::from(serde_json::to_vec(value)?))
            }
            None => Full::new(Bytes::new()),
        };
        self.sender.ready().await?;
        Ok(self.sender.send_request(builder.body(body)?).await?)
    }

    /// A JSON request: the status and the parsed body (`null` when empty).
    pub async fn json(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let (status, bytes) = self.raw(method, path, body).await?;
        let value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                anyhow!(
                    "{path}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })?
        };
        Ok((status, value))
    }

    /// A request: the status and the body's bytes.
    pub async fn raw(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let response = self
            .send(method, path, body, "application/json", None)
            .await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// Follows `path` as Server-Sent Events; the connection is the stream's from then on.
    pub async fn events(
        mut self,
        path: &str,
        last_event_id: Option<u64>,
    ) -> anyhow::Result<EventStream> {
        let response = self
            .send("GET", path, None, "text/event-stream", last_event_id)
            .await?;
        if !response.status().is_success() {
            return Err(anyhow!("{path}: status {}", response.status()));
        }
        Ok(EventStream {
            body: response.into_body(),
            buffer: String::new(),
        })
    }
}

/// Server-Sent Events as (id, data) pairs.
pub struct EventStream {
    body: Incoming,
    buffer: String,
}

impl EventStream {
    /// The next event, `None` when the stream ended (the node went away).
    pub async fn next(&mut self) -> Option<(Option<u64>, String)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut data) = (None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if id.is_some() || !data.is_empty() {
                    return Some((id, data));
                }
                continue;
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(bytes) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
}
