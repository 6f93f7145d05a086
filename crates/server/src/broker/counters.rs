//! What `Stats` counts: limit hits, disconnects by reason, denials by
//! identity. Keys are the gateway's own names, except denials, whose
//! identities are bounded: past [`MAX_DENIAL_ENTRIES`] new identities are
//! counted together, so many identities cannot grow `Stats`.

use std::collections::BTreeMap;

use qm_ipc_proto::ErrorReply;

/// Identities whose denials `Stats` counts one by one.
pub const MAX_DENIAL_ENTRIES: usize = 64;
pub const OTHER_IDENTITIES: &str = "(other identities)";

#[derive(Debug, Default)]
pub struct Counters {
    pub limit_hits: BTreeMap<&'static str, u64>,
    pub disconnects: BTreeMap<&'static str, u64>,
    pub denials: BTreeMap<String, u64>,
}

impl Counters {
    /// Counts a limit hit and builds its error.
    pub fn limit(&mut self, limit: &'static str, max: usize) -> ErrorReply {
        *self.limit_hits.entry(limit).or_default() += 1;
        ErrorReply::LimitExceeded {
            limit: limit.into(),
            max: max as u64,
        }
    }

    pub fn disconnect(&mut self, reason: &'static str) {
        *self.disconnects.entry(reason).or_default() += 1;
    }

    pub fn denial(&mut self, identity: String) {
        let key = if self.denials.contains_key(&identity) || self.denials.len() < MAX_DENIAL_ENTRIES
        {
            identity
        } else {
            OTHER_IDENTITIES.to_owned()
        };
        *self.denials.entry(key).or_default() += 1;
    }
}
