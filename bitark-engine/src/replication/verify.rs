//! Before a master sends a slave any record, it checks that the URL the slave registered
//! with really reaches that slave: `GET <url>/internal/replication/status` must answer
//! with the slave's id, the session it registered with, and this master's session as the
//! one it follows. A registration naming someone else's URL, or a URL nothing answers
//! at, never gets a record: its buffer holds what is committed while the check runs (so
//! that a slave verified a moment after it registered misses nothing, even at stages 1
//! and 2, which cannot resend) and is dropped when the check gives up.
//!
//! A slave stores the master's session when its registration is answered, which can be a
//! moment after the master starts checking; so a check is tried a few times before it
//! gives up, and the slave's next registration starts another.

use super::link::{HubInner, SlaveLink};
use super::status::SlaveState;
use super::view::refresh_metrics;
use std::sync::Arc;
use std::time::Duration;

/// Attempts of one check, and the pause before the first retry (doubling).
const ATTEMPTS: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(20);

/// Starts checking `link`'s URL unless a check is already running.
pub(crate) fn start(hub: Arc<HubInner>, link: Arc<SlaveLink>) {
    {
        let mut s = link.lock();
        if s.verifying || s.verified {
            return;
        }
        s.verifying = true;
    }
    let runtime = hub.runtime().clone();
    runtime.spawn(run(hub, link));
}

async fn run(hub: Arc<HubInner>, link: Arc<SlaveLink>) {
    // Tests hold the check back here to commit records while it runs.
    fail::fail_point!("replication::before-verify");
    let mut pause = FIRST_PAUSE;
    for attempt in 1..=ATTEMPTS {
        if link.is_closed() {
            return;
        }
        let (url, session) = {
            let s = link.lock();
            (s.url.clone(), s.slave_session.clone())
        };
        let problem = match hub.client().status(&url).await {
            Ok(status) if status.node_id != link.id() || status.session != session => Some(format!(
                "{url} answers as node `{}` (session {}), not as slave `{}` (session {session})",
                status.node_id,
                status.session,
                link.id()
            )),
            Ok(status) if status.master_session != hub.session() => {
                Some(format!("{url} does not follow this master yet (it follows session `{}`)", status.master_session))
            }
            Ok(_) => None,
            Err(e) => Some(format!("cannot reach {url} to verify the slave: {e}")),
        };
        match problem {
            None => {
                {
                    let mut s = link.lock();
                    s.verified = true;
                    s.verifying = false;
                    if s.state() == SlaveState::Verifying {
                        s.set_state(SlaveState::Alive);
                    }
                }
                tracing::info!(slave = %link.id(), %url, "slave verified; sending it records");
                refresh_metrics(&hub, &link);
                link.wake();
                return;
            }
            Some(problem) => {
                tracing::debug!(slave = %link.id(), attempt, %problem, "slave not verified yet");
                link.lock().last_error = Some(problem);
            }
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
    {
        let mut s = link.lock();
        s.verifying = false;
        s.clear_buffer(hub.send_budget());
    }
    refresh_metrics(&hub, &link);
    tracing::warn!(slave = %link.id(), "slave URL could not be verified; its next registration tries again");
}
