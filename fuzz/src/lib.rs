//! What the fuzz targets share: how a request body becomes a command (the way the services
//! do it), and the seeds of the committed corpora (`cargo test` in this directory with
//! `PADDOCK_WRITE_SEEDS=1` rewrites them).

use paddock_api::pb;
use paddock_model::Command;

/// The request messages that become commands, chosen by a selector byte.
pub const REQUESTS: u8 = 7;

/// Decodes `body` as request kind `kind` with `decode` (protobuf or JSON) and converts it to
/// the command the service would propose; `None` where decoding refuses it.
pub fn command_of(
    kind: u8,
    body: &[u8],
    proto: bool,
) -> Option<Result<Command, paddock_model::Rejection>> {
    fn decode<T: prost::Message + Default + serde::de::DeserializeOwned>(
        body: &[u8],
        proto: bool,
    ) -> Option<T> {
        if proto {
            T::decode(body).ok()
        } else {
            serde_json::from_slice(body).ok()
        }
    }
    Some(match kind % REQUESTS {
        0 => decode::<pb::VmCreateRequest>(body, proto)?.command(),
        1 => decode::<pb::VmCreateManyRequest>(body, proto)?.command(),
        2 => decode::<pb::MigrationCreateRequest>(body, proto)?.command(),
        3 => Ok(decode::<pb::PutRequest>(body, proto)?.command()),
        4 => Ok(decode::<pb::CasRequest>(body, proto)?.command()),
        5 => Ok(decode::<pb::SettingSetRequest>(body, proto)?.command()),
        _ => Ok(decode::<pb::DrainRequest>(body, proto)?.command()),
    })
}

/// Runs what a node does with a decoded command: validation, then apply on a fresh state
/// (twice: the second sees the first's effects). Must never panic.
pub fn exercise(command: Command) {
    let _ = command.validate();
    let mut state = paddock_model::ClusterState::default();
    let proposal = paddock_model::Proposal {
        at_ms: 1_000,
        requests: vec![paddock_model::ClientRequest::internal(command)],
    };
    let _ = state.apply(&proposal);
    let _ = state.apply(&proposal);
}

#[cfg(test)]
mod seeds {
    use std::path::Path;

    use paddock_api::pb;
    use paddock_migration::wire::{self, Chunk, Msg};
    use paddock_model::{codec, ClientRequest, ClusterState, Command, Proposal};
    use prost::Message;

    fn write(target: &str, name: &str, bytes: &[u8]) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), bytes).expect("seed");
    }

    fn vm_create() -> pb::VmCreateRequest {
        pb::VmCreateRequest {
            name: "web-1".into(),
            spec: Some(pb::VmSpec {
                cpus: 2,
                memory_mib: 512,
                labels: [("team".to_string(), "web".to_string())]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            stopped: false,
            request_id: None,
        }
    }

    #[test]
    fn write_seeds() {
        if std::env::var_os("PADDOCK_WRITE_SEEDS").is_none() {
            return;
        }
        // Log entries and a snapshot.
        let create = vm_create().command().expect("command");
        let proposal = Proposal {
            at_ms: 1_000,
            requests: vec![
                ClientRequest::internal(create.clone()),
                ClientRequest::internal(Command::KvPut {
                    key: "k".into(),
                    value: "v".into(),
                }),
            ],
        };
        write(
            "log_entry",
            "proposal",
            &codec::encode(&proposal).expect("encode"),
        );
        let mut state = ClusterState::default();
        state.apply(&proposal);
        write(
            "log_entry",
            "snapshot",
            &codec::encode(&state).expect("encode"),
        );
        // Request bodies: a selector byte, then the body.
        let bodies: Vec<(u8, Vec<u8>, String)> = vec![
            (
                0,
                vm_create().encode_to_vec(),
                serde_json::to_string(&vm_create()).expect("json"),
            ),
            (
                2,
                pb::MigrationCreateRequest {
                    vm: "web-1".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
                r#"{"vm":"web-1","mode":"auto","bandwidth":"500MiB"}"#.into(),
            ),
            (
                3,
                pb::PutRequest {
                    key: "k".into(),
                    value: "v".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
                r#"{"key":"k","value":"v"}"#.into(),
            ),
            (
                5,
                pb::SettingSetRequest {
                    key: "heartbeat_ms".into(),
                    value: "400".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
                r#"{"key":"audit_keep","value":"1000"}"#.into(),
            ),
        ];
        for (kind, proto, json) in bodies {
            let mut p = vec![kind];
            p.extend(proto);
            write("proto_request", &format!("kind-{kind}"), &p);
            let mut j = vec![kind];
            j.extend(json.into_bytes());
            write("json_request", &format!("kind-{kind}"), &j);
        }
        // Migration frames, without their 8-byte length and checksum header.
        let frames = [
            Msg::HelloAck { version: 1 },
            Msg::Chunk(Chunk {
                index: 0,
                mask: 0b111,
                kinds: vec![0, 1, 2],
                crcs: vec![0, 0, 0],
                compression: 0,
                postcopy: false,
                raw_len: 4096 + 2 + 4,
                payload: {
                    let mut p = vec![7u8; 4096];
                    p.extend_from_slice(&[4, 0, 1, 0, 0, 9]);
                    p
                },
            }),
            Msg::Abort {
                reason: "cancelled".into(),
            },
        ];
        for (i, msg) in frames.iter().enumerate() {
            let mut bytes = Vec::new();
            wire::encode(msg, &mut bytes).expect("encode");
            write("migration_frame", &format!("frame-{i}"), &bytes[8..]);
        }
        // Config files.
        write(
            "config_file",
            "full",
            br#"name = "n1"
data_dir = "/var/lib/paddock"
listen = "0.0.0.0:7001"
advertise = "10.0.0.1:7001"
api = "0.0.0.0:7443"
certs_dir = "/etc/paddock/certs"
peers = "n1=10.0.0.1:7001,n2=10.0.0.2:7001,n3=10.0.0.3:7001"
storage = "redb"
labels = { zone = "a", rack = "r1" }
cpus = 16
memory = "64GiB"
"#,
        );
        write("config_file", "bad", b"name = 3\nlisten = \"x\"\n");
    }
}
