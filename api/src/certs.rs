//! The cluster CA and the certificates it signs.
//!
//! Layout of a certificates directory (the same for `paddock certs`, `paddockd --certs-dir` and
//! `paddock --certs-dir`):
//!
//! ```text
//!   ca.crt  ca.key        the cluster CA (ca.key only where certificates are issued)
//!   NAME.crt NAME.key     a node (NAME = node name) or a client (NAME = user name)
//! ```
//!
//! The subject's common name is the node or user name; its organizational unit is the role:
//! `node` for cluster members, `admin`, `operator` or `viewer` for clients. Servers read the
//! role from the verified client certificate, so only nodes may speak Raft.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// What a certificate allows its holder to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A cluster member: Raft traffic, forwarding, everything.
    Node,
    Admin,
    Operator,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "node" => Some(Role::Node),
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is on the other end of a verified TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {message}")]
    Tls { path: PathBuf, message: String },
    #[error("cannot read {path}: {hint}")]
    Read {
        path: PathBuf,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; remove it first or use another directory (refusing to overwrite a certificate or key)")]
    Exists { path: PathBuf },
    #[error("{path} is not a valid PEM certificate or key")]
    Invalid {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot create the certificate")]
    Generate(#[source] rcgen::Error),
    #[error("invalid name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("invalid host {host:?} for the certificate: give an IP address or a DNS name")]
    BadHost { host: String },
}

/// Paths of a certificates directory.
#[derive(Debug, Clone)]
pub struct CertsDir {
    pub dir: PathBuf,
}

impl CertsDir {
    pub fn new(dir: impl Into<PathBuf>) -> CertsDir {
        CertsDir { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// Creates the cluster CA (`ca.crt`, `ca.key`).
    pub fn init_ca(&self, cluster_name: &str) -> Result<(), CertError> {
        fs::create_dir_all(&self.dir).map_err(|source| CertError::Write {
            path: self.dir.clone(),
            source,
        })?;
        refuse_existing(&[self.ca_cert(), self.ca_key()])?;
        let key = KeyPair::generate().map_err(CertError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&format!("{cluster_name} cluster CA"), "ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, 10);
        let cert = params.self_signed(&key).map_err(CertError::Generate)?;
        write_file(&self.ca_cert(), cert.pem().as_bytes(), false)?;
        write_file(&self.ca_key(), key.serialize_pem().as_bytes(), true)?;
        Ok(())
    }

    /// Issues `NAME.crt`/`NAME.key` for a node reachable at `hosts` (IPs or DNS names).
    pub fn issue_node(&self, name: &str, hosts: &[String]) -> Result<(), CertError> {
        check_name(name)?;
        for host in hosts {
            if host.is_empty() || host.contains([':', '/', ' ']) {
                return Err(CertError::BadHost { host: host.clone() });
            }
        }
        let params = CertificateParams::new(hosts.to_vec()).map_err(|_| CertError::BadHost {
            host: hosts.join(","),
        })?;
        self.issue(name, Role::Node, params)
    }

    /// Issues `NAME.crt`/`NAME.key` for a client with `role`.
    pub fn issue_client(&self, name: &str, role: Role) -> Result<(), CertError> {
        check_name(name)?;
        self.issue(name, role, CertificateParams::default())
    }

    fn issue(
        &self,
        name: &str,
        role: Role,
        mut params: CertificateParams,
    ) -> Result<(), CertError> {
        refuse_existing(&[self.cert(name), self.key(name)])?;
        let ca_key_pem = read_text(
            &self.ca_key(),
            "create the CA first with `paddock certs init`",
        )?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|source| CertError::Invalid {
            path: self.ca_key(),
            source,
        })?;
        let ca_pem = read_text(
            &self.ca_cert(),
            "create the CA first with `paddock certs init`",
        )?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|source| CertError::Invalid {
                path: self.ca_cert(),
                source,
            })?;
        params.distinguished_name = distinguished_name(name, role.as_str());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match role {
            Role::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, 2);
        let key = KeyPair::generate().map_err(CertError::Generate)?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(CertError::Generate)?;
        write_file(&self.cert(name), cert.pem().as_bytes(), false)?;
        write_file(&self.key(name), key.serialize_pem().as_bytes(), true)?;
        Ok(())
    }

    fn identity(
        &self,
        name: &str,
        hint: &'static str,
    ) -> Result<(Certificate, Identity), CertError> {
        let ca = read_text(&self.ca_cert(), hint)?;
        let cert = read_text(&self.cert(name), hint)?;
        let key = read_text(&self.key(name), hint)?;
        Ok((Certificate::from_pem(ca), Identity::from_pem(cert, key)))
    }

    /// TLS settings for a node's server: its own certificate, client certificates required and
    /// checked against the cluster CA.
    pub fn server_tls(&self, node: &str) -> Result<ServerTlsConfig, CertError> {
        let (ca, identity) = self.identity(node, NODE_HINT)?;
        Ok(ServerTlsConfig::new().identity(identity).client_ca_root(ca))
    }

    /// TLS for the HTTPS API listener: the node's certificate; a client certificate of the
    /// cluster CA is optional (callers may authenticate per request with a token instead);
    /// HTTP/2 and HTTP/1.1 offered.
    pub fn api_server_config(&self, node: &str) -> Result<rustls::ServerConfig, CertError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |path: PathBuf, what: &str| CertError::Tls {
            path,
            message: what.to_string(),
        };
        let ca_pem = read_text(&self.ca_cert(), NODE_HINT)?;
        let cert_pem = read_text(&self.cert(node), NODE_HINT)?;
        let key_pem = read_text(&self.key(node), NODE_HINT)?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let ca = ca.map_err(|_| invalid(self.ca_cert(), "not a PEM certificate"))?;
            roots
                .add(ca)
                .map_err(|e| invalid(self.ca_cert(), &e.to_string()))?;
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| invalid(self.cert(node), "not a PEM certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| invalid(self.key(node), "not a PEM private key"))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .map_err(|e| invalid(self.ca_cert(), &e.to_string()))?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| invalid(self.cert(node), &e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// TLS settings for connecting to nodes as `name` (a node or a user).
    pub fn client_tls(&self, name: &str, hint: &'static str) -> Result<ClientTlsConfig, CertError> {
        let (ca, identity) = self.identity(name, hint)?;
        Ok(ClientTlsConfig::new().ca_certificate(ca).identity(identity))
    }
}

/// Hint shown when a node's certificate files are missing.
pub const NODE_HINT: &str =
    "create it with `paddock certs node NAME --dir DIR --host ADDRESS` and pass --certs-dir DIR";
/// Hint shown when a user's certificate files are missing.
pub const CLIENT_HINT: &str =
    "create it with `paddock certs client NAME --dir DIR --role admin`, then pass --certs-dir DIR and --user NAME";

/// Reads name and role from a verified peer certificate (DER).
pub fn peer_identity(der: &[u8]) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let role = subject
        .iter_organizational_unit()
        .next()?
        .as_str()
        .ok()
        .and_then(Role::parse)?;
    Some(PeerIdentity { name, role })
}

fn check_name(name: &str) -> Result<(), CertError> {
    paddock_model::ids::validate_node_name(name).map_err(|reason| CertError::BadName {
        name: name.to_string(),
        reason,
    })?;
    if name == "ca" {
        return Err(CertError::BadName {
            name: name.into(),
            reason: "\"ca\" is the cluster CA's file name".into(),
        });
    }
    Ok(())
}

fn distinguished_name(common_name: &str, unit: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::OrganizationName, "Paddock");
    dn
}

fn set_validity(params: &mut CertificateParams, years: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365 * years);
}

fn refuse_existing(paths: &[PathBuf]) -> Result<(), CertError> {
    match paths.iter().find(|p| p.exists()) {
        Some(path) => Err(CertError::Exists { path: path.clone() }),
        None => Ok(()),
    }
}

fn read_text(path: &Path, hint: &'static str) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        hint,
        source,
    })
}

/// Writes a new file (never overwriting), private keys readable by the owner only.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), CertError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|source| CertError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| CertError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_node_and_client_certificates_with_roles() {
        let dir = std::env::temp_dir().join(format!("paddock-certs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let certs = CertsDir::new(&dir);
        certs.init_ca("test").expect("ca");
        assert!(matches!(
            certs.init_ca("test"),
            Err(CertError::Exists { .. })
        ));
        certs
            .issue_node("n1", &["127.0.0.1".into(), "localhost".into()])
            .expect("node");
        certs.issue_client("alice", Role::Viewer).expect("client");
        assert!(matches!(
            certs.issue_client("alice", Role::Admin),
            Err(CertError::Exists { .. })
        ));
        assert!(matches!(
            certs.issue_client("Bad/Name", Role::Admin),
            Err(CertError::BadName { .. })
        ));
        for (name, role) in [("n1", Role::Node), ("alice", Role::Viewer)] {
            let pem = fs::read_to_string(certs.cert(name)).expect("read");
            let der = pem_to_der(&pem);
            assert_eq!(
                peer_identity(&der),
                Some(PeerIdentity {
                    name: name.into(),
                    role
                })
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        parsed.contents
    }
}
