//! Mutual TLS for migration connections, from the node's certificate files (the cluster CA,
//! the node's certificate and key): the destination requires a client certificate signed by
//! the cluster CA, the source checks the destination's certificate against its address.
//! Both ends then check that the peer is a cluster node (see `peer_is_node` in the caller).

use std::io::{BufReader, IoSlice, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

pub type ClientStream = rustls::StreamOwned<ClientConnection, Socket>;
pub type ServerStream = rustls::StreamOwned<ServerConnection, Socket>;

/// What rustls reads from and writes to: a TCP socket read through a large buffer.
///
/// rustls asks for at most 4 KiB per read, so reading the socket directly costs a system call
/// per 4 KiB (four or more per 16 KiB record); through the buffer it is one per 256 KiB, for
/// one extra memory copy. Writes go straight to the socket.
pub struct Socket(BufReader<TcpStream>);

const READ_BUFFER: usize = 256 * 1024;

impl Socket {
    fn new(tcp: TcpStream) -> std::io::Result<Socket> {
        tcp.set_nodelay(true)?;
        Ok(Socket(BufReader::with_capacity(READ_BUFFER, tcp)))
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.get_mut().write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        self.0.get_mut().write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.get_mut().flush()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Setup(format!("bad CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// ring, preferring AES-128-GCM: as safe for this purpose and about a third cheaper per byte
/// than AES-256 (10 rounds instead of 14), which is what bounds a migration on a busy host.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// The destination's side: its certificate, client certificates required.
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key_file: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
            .build()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert)?, key(key_file)?)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The source's side: the cluster CA as the only root, its own certificate as the client's.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key_file: &Path,
) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(certs(cert)?, key(key_file)?)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Connects to `address` (`host:port`) and completes the TLS handshake.
pub fn connect(config: &Arc<ClientConfig>, address: &str) -> std::io::Result<ClientStream> {
    let host = address
        .rsplit_once(':')
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(address);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::other(format!("bad destination host {host}: {e}")))?;
    let socket = Socket::new(TcpStream::connect(address)?)?;
    let conn = ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Completes the TLS handshake of an accepted connection.
pub fn accept(config: &Arc<ServerConfig>, tcp: TcpStream) -> std::io::Result<ServerStream> {
    let socket = Socket::new(tcp)?;
    let conn = ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// The peer's certificate (DER), once the handshake is done.
pub fn peer_certificate(conn: &rustls::CommonState) -> Option<Vec<u8>> {
    conn.peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| c.to_vec())
}
