//! Versioned binary encoding of what Paddock persists or sends: postcard behind a one-byte
//! format version, so a future format can be told apart from this one instead of being
//! misread.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Format version written in front of every log entry and snapshot.
/// Version 2 added nodes, VMs and settings to the state; version 3 migrations and drains;
/// version 4 a VM's guest (boot source, metadata, disk policy); version 5 disk images;
/// version 6 the cluster event log and API tokens.
pub const FORMAT_VERSION: u8 = 7;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("data is empty; expected a format version byte")]
    Empty,
    #[error("data has format version {found}, this build reads version {FORMAT_VERSION}; run a paddockd that knows that version")]
    UnknownVersion { found: u8 },
    #[error("data is corrupt or not a Paddock record")]
    Postcard(#[source] postcard::Error),
}

/// Encodes `value` as `[FORMAT_VERSION] ++ postcard(value)`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    postcard::to_io(value, &mut out).map_err(CodecError::Postcard)?;
    Ok(out)
}

/// Decodes what [`encode`] wrote, refusing other format versions.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { found: version });
    }
    postcard::from_bytes(body).map_err(CodecError::Postcard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let bytes = encode(&("k".to_string(), 5u32)).expect("encode");
        assert_eq!(
            decode::<(String, u32)>(&bytes).expect("decode"),
            ("k".to_string(), 5)
        );
        assert!(matches!(decode::<u32>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<u32>(&[9, 1]),
            Err(CodecError::UnknownVersion { found: 9 })
        ));
        assert!(matches!(
            decode::<String>(&[FORMAT_VERSION, 200]),
            Err(CodecError::Postcard(_))
        ));
    }
}
