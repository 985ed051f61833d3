//! A mixed write workload whose effects can be modelled: marks, unmarks, batches and
//! ranges over keys a test owns, so the expected flag of every key is known.

use super::{Api, CallError};
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::Rng;

/// One write as a writer sends it.
#[derive(Clone, Debug)]
pub enum Write {
    Read { user: u64, msg: u64 },
    Unread { user: u64, msg: u64 },
    Batch { user: u64, msgs: Vec<u64> },
    Range { user: u64, from: u64, to: u64 },
}

impl Write {
    /// A random write to one of `users`, on message ids below `msgs_per_user`: 40% marks,
    /// 30% unmarks, 15% batches of up to 16 ids, 15% ranges of up to 24 ids.
    pub fn random(rng: &mut StdRng, users: &[u64], msgs_per_user: u64) -> Write {
        let user = users[rng.gen_range(0..users.len())];
        let msg = rng.gen_range(0..msgs_per_user);
        match rng.gen_range(0..100) {
            0..40 => Write::Read { user, msg },
            40..70 => Write::Unread { user, msg },
            70..85 => {
                let len = rng.gen_range(1..=16.min(msgs_per_user as usize));
                let msgs = sample(rng, msgs_per_user as usize, len).into_iter().map(|m| m as u64).collect();
                Write::Batch { user, msgs }
            }
            _ => Write::Range { user, from: msg, to: (msg + rng.gen_range(0..24)).min(msgs_per_user - 1) },
        }
    }

    /// Every key it sets, with the flag the key gets.
    pub fn effects(&self) -> Vec<((u64, u64), bool)> {
        match self {
            Write::Read { user, msg } => vec![((*user, *msg), true)],
            Write::Unread { user, msg } => vec![((*user, *msg), false)],
            Write::Batch { user, msgs } => msgs.iter().map(|msg| ((*user, *msg), true)).collect(),
            Write::Range { user, from, to } => (*from..=*to).map(|msg| ((*user, msg), true)).collect(),
        }
    }

    /// Sends it; the LSN of its record on success.
    pub async fn send(&self, api: &Api) -> Result<u64, CallError> {
        match self {
            Write::Read { user, msg } => api.mark_read(*user, *msg).await,
            Write::Unread { user, msg } => api.mark_unread(*user, *msg).await,
            Write::Batch { user, msgs } => api.mark_batch(*user, msgs).await,
            Write::Range { user, from, to } => api.mark_range(*user, *from, *to).await,
        }
    }
}
