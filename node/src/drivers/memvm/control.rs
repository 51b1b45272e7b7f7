//! The memvm guest's control socket (`DIR/control.sock`), the way QEMU has QMP: paddockd asks a
//! running guest to migrate, for progress, and tells it the committed outcome. One JSON request
//! per connection, one JSON reply.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use paddock_migration::Progress;
use serde::{Deserialize, Serialize};

pub use crate::drivers::{MigrateRequest, MigrationRole as Role};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Migrate(MigrateRequest),
    /// Role and progress of the migration this guest is part of.
    Query,
    /// The committed outcome of the ownership switch.
    Switch {
        committed: bool,
    },
    Cancel {
        reason: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub error: Option<String>,
    pub role: Option<Role>,
    pub migration: Option<u64>,
    /// Source: the engine's figures. Destination: phase only.
    pub progress: Option<Progress>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply {
            ok: true,
            ..Reply::default()
        }
    }

    pub fn error(message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(message.into()),
            ..Reply::default()
        }
    }
}

/// A path to `socket` that fits a socket address (108 bytes on Linux): the path itself when it
/// is short, else the same file reached through `/proc/self/fd/N` of its directory, which the
/// returned handle keeps open. (Data directories can be deep; a socket path must not be.)
fn short_path(socket: &Path) -> std::io::Result<(Option<std::fs::File>, std::path::PathBuf)> {
    use std::os::fd::AsRawFd;
    if socket.as_os_str().len() < 100 {
        return Ok((None, socket.to_path_buf()));
    }
    let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
        return Ok((None, socket.to_path_buf()));
    };
    let handle = std::fs::File::open(dir)?;
    let path = Path::new(&format!("/proc/self/fd/{}", handle.as_raw_fd())).join(name);
    Ok((Some(handle), path))
}

/// Sends one request to the guest listening at `socket`.
pub fn call(socket: &Path, request: &Request) -> std::io::Result<Reply> {
    let (_dir, path) = short_path(socket)?;
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

/// Serves requests on `socket` with `handle`, one thread, until the process ends.
pub fn serve(
    socket: &Path,
    handle: impl Fn(Request) -> Reply + Send + 'static,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let (_dir, path) = short_path(socket)?;
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let reply = match serde_json::from_str::<Request>(&line) {
                    Ok(request) => handle(request),
                    Err(e) => Reply::error(format!("bad request: {e}")),
                };
                let mut out = serde_json::to_vec(&reply).unwrap_or_default();
                out.push(b'\n');
                let _ = (&stream).write_all(&out);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_in_deep_directories_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).expect("mkdir");
        let socket = deep.join("control.sock");
        assert!(socket.as_os_str().len() > 108);
        serve(&socket, |_| Reply::ok()).expect("serve");
        let reply = call(&socket, &Request::Query).expect("call");
        assert!(reply.ok);
    }
}
