//! One module per command group. Each takes the parsed arguments and the global options and
//! returns what to print, or a [`Failure`](crate::output::Failure) with its exit code.

pub mod access;
pub mod audit;
pub mod certs;
pub mod cluster;
pub mod console;
pub mod dev;
pub mod events;
pub mod image;
pub mod kv;
pub mod migration;
pub mod node;
pub mod token;
pub mod vm;

use std::path::PathBuf;
use std::time::Duration;

use paddock_api::certs::{CertsDir, CLIENT_HINT};
use paddock_api::client::{Client, ClientError};

use crate::output::{exit, Failure, Output};

/// Options every command that talks to the cluster shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub endpoints: Vec<String>,
    pub certs_dir: Option<PathBuf>,
    pub user: String,
    pub output: Output,
    pub timeout: Duration,
}

impl Global {
    /// A client for the configured endpoints, as `--user`.
    pub fn client(&self) -> Result<Client, Failure> {
        let Some(dir) = &self.certs_dir else {
            return Err(Failure::new(
                exit::ERROR,
                "no certificates given: pass --certs-dir DIR or set PADDOCK_CERTS_DIR (for `paddock dev up`: .dev/certs)",
            ));
        };
        let tls = CertsDir::new(dir).client_tls(&self.user, CLIENT_HINT)?;
        Client::new(&self.endpoints, tls, self.timeout).map_err(client_failure)
    }

    /// A client of one node only (to ask that node about its own replica).
    pub fn client_for(&self, endpoint: &str) -> Result<Client, Failure> {
        let one = Global {
            endpoints: vec![endpoint.to_string()],
            ..self.clone()
        };
        one.client()
    }
}

/// Turns a client error into a one-line message and the exit code of its kind: the one place
/// where gRPC codes become exit codes.
pub fn client_failure(e: ClientError) -> Failure {
    use tonic::Code;
    let ClientError::Refused { code, message } = &e else {
        let code = match e {
            ClientError::Unreachable { .. } => exit::UNAVAILABLE,
            _ => exit::ERROR,
        };
        return Failure::new(code, e.to_string());
    };
    let (code, message) = match code {
        Code::PermissionDenied => (
            exit::PERMISSION_DENIED,
            format!("permission denied: {message}"),
        ),
        Code::Unauthenticated => (
            exit::PERMISSION_DENIED,
            format!("not authenticated: {message}"),
        ),
        Code::InvalidArgument | Code::OutOfRange => {
            (exit::INVALID, format!("invalid request: {message}"))
        }
        Code::NotFound => (exit::NOT_FOUND, format!("not found: {message}")),
        Code::AlreadyExists => (exit::ALREADY_EXISTS, format!("already exists: {message}")),
        Code::FailedPrecondition => (exit::FAILED_PRECONDITION, message.clone()),
        Code::ResourceExhausted => (exit::NO_CAPACITY, format!("no capacity: {message}")),
        Code::Unavailable | Code::DeadlineExceeded => (exit::UNAVAILABLE, message.clone()),
        _ => (exit::ERROR, message.clone()),
    };
    Failure::new(code, message)
}

/// Prints `value` as pretty JSON.
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
