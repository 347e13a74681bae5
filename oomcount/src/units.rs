//! The config file's units: durations and byte sizes as people write them ("90s", "32MiB"),
//! for every table's `deserialize_with`.
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

pub(crate) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|err| {
        de::Error::custom(format!(
            "{text:?} is not a duration ({err}): write it like \"90s\", \"5m\" or \"1h 30m\""
        ))
    })
}

pub(crate) fn opt_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

pub(crate) fn bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Bytes(bytes) => Ok(bytes),
        Size::Text(text) => text
            .parse::<bytesize::ByteSize>()
            .map(|size| size.as_u64())
            .map_err(|err| {
                de::Error::custom(format!(
                    "{text:?} is not a size ({err}): write it like \"32MiB\" or \"512KiB\""
                ))
            }),
    }
}
