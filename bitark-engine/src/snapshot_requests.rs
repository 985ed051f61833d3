//! [`SnapshotRequests`]: how the rest of the engine asks the snapshotter thread for
//! work. One method per kind of request; the bounded channel behind them is never
//! waited on by the commit path.

use crate::error::SnapshotError;
use bitark_infra::snapshot::SnapshotInfo;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use tokio::sync::oneshot;

/// What the snapshotter thread is asked to do.
pub(crate) enum Request {
    /// Enough records accumulated; snapshot if `every-records` is reached.
    Nudge,
    /// Snapshot now (admin, full sync), answering with the result.
    Now(oneshot::Sender<Result<SnapshotInfo, SnapshotError>>),
    /// Something that kept log or snapshots let go of them: collect garbage now.
    Collect,
    /// The whole state was replaced (a full sync, or a cut of the log on stepping
    /// down): the snapshot given is the newest one (`None`: there is none).
    Replaced(Option<SnapshotInfo>),
    Stop,
}

/// Requests to the snapshotter thread. Bounded: when it is full a request of the same
/// kind is pending anyway, so every request but [`SnapshotRequests::stop`] is dropped
/// rather than waited for.
#[derive(Clone)]
pub(crate) struct SnapshotRequests(SyncSender<Request>);

impl SnapshotRequests {
    /// The sending side and the snapshotter's receiving side.
    pub fn channel() -> (SnapshotRequests, Receiver<Request>) {
        let (tx, rx) = sync_channel(16);
        (SnapshotRequests(tx), rx)
    }

    /// Enough records accumulated since the last snapshot.
    pub fn nudge(&self) {
        let _ = self.0.try_send(Request::Nudge);
    }

    /// Something let go of log or snapshots: collect garbage now.
    pub fn collect(&self) {
        let _ = self.0.try_send(Request::Collect);
    }

    /// The whole state was replaced; `newest` is the newest snapshot now.
    pub fn replaced(&self, newest: Option<SnapshotInfo>) {
        let _ = self.0.try_send(Request::Replaced(newest));
    }

    /// Takes a snapshot now and answers where it went.
    pub async fn now(&self) -> Result<SnapshotInfo, SnapshotError> {
        let (reply, rx) = oneshot::channel();
        match self.0.try_send(Request::Now(reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(SnapshotError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(SnapshotError::ShuttingDown),
        }
        rx.await.unwrap_or(Err(SnapshotError::ShuttingDown))
    }

    /// Stops the thread once it has done what is queued (waits for room).
    pub fn stop(&self) {
        let _ = self.0.send(Request::Stop);
    }
}
