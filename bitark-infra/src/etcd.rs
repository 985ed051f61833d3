//! The etcd v3 client the failover coordination uses (`coordination.etcd.*`): leases,
//! keys, one compare-and-swap transaction and a watch. I/O only: which keys mean what,
//! and when to campaign, is the engine's `coordination` policy.
//!
//! Every call is bounded by the configured timeout, so a cut or paused etcd shows as an
//! error within it rather than as a hang; the gRPC channel reconnects on its own (HTTP/2
//! keep-alive pings find a dead connection).

use etcdv3client::grpc::TonicClient;
use etcdv3client::pb;
use etcdv3client::{KvClient, LeaseClient, WatchClient};
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("coordination.etcd.endpoints: `{0}` is not a URL etcd can be reached at ({1})")]
    Endpoint(String, String),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("etcd: {0}")]
    Call(String),
}

/// A lease: its id and the TTL etcd granted (at least what was asked; etcd raises a TTL
/// below its minimum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: Duration,
}

/// One key as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

impl From<pb::KeyValue> for KeyValue {
    fn from(kv: pb::KeyValue) -> Self {
        KeyValue {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: kv.value,
            mod_revision: kv.mod_revision,
            lease: kv.lease,
        }
    }
}

/// A condition of [`Etcd::swap`].
#[derive(Clone, Debug)]
pub enum Expect {
    /// The key does not exist.
    Absent(String),
    /// The key was last changed at this revision.
    ModRevision(String, i64),
    /// The key exists and is attached to this lease.
    Lease(String, i64),
}

/// A client of one etcd cluster (any of its endpoints).
#[derive(Clone, Debug)]
pub struct Etcd {
    kv: KvClient<TonicClient>,
    lease: LeaseClient<TonicClient>,
    watch: WatchClient<TonicClient>,
    timeout: Duration,
}

impl Etcd {
    /// A client of `endpoints` (`http://host:port`). Connects lazily: an etcd that is
    /// down now is reached once it is up.
    pub fn connect(endpoints: &[String], timeout: Duration) -> Result<Etcd, EtcdError> {
        let mut channels = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| EtcdError::Endpoint(url.clone(), e.to_string()))?
                .connect_timeout(timeout)
                .timeout(timeout)
                .http2_keep_alive_interval(timeout)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
            channels.push(endpoint);
        }
        let channel = match channels.len() {
            0 => return Err(EtcdError::Endpoint(String::new(), "no endpoint given".into())),
            1 => channels.remove(0).connect_lazy(),
            _ => Channel::balance_list(channels.into_iter()),
        };
        let client = etcdv3client::Client::with_service(TonicClient::new(channel));
        Ok(Etcd { kv: client.kv, lease: client.lease, watch: client.watch, timeout })
    }

    async fn bounded<T>(&self, call: impl Future<Output = Result<T, etcdv3client::Error>>) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(EtcdError::Call(e.to_string())),
            Err(_) => Err(EtcdError::Timeout(self.timeout)),
        }
    }

    /// A new lease of (at least) `ttl`, whole seconds.
    pub async fn grant(&self, ttl: Duration) -> Result<Lease, EtcdError> {
        let mut lease = self.lease.clone();
        let request = pb::LeaseGrantRequest { ttl: ttl.as_secs().max(1) as i64, id: 0 };
        let granted = self.bounded(lease.lease_grant(request)).await?;
        if !granted.error.is_empty() {
            return Err(EtcdError::Call(granted.error));
        }
        Ok(Lease { id: granted.id, ttl: Duration::from_secs(granted.ttl.max(0) as u64) })
    }

    /// Renews `lease` once: answers its TTL from now, or `None` when it has expired (or
    /// was revoked) and the keys attached to it are gone.
    pub async fn keep_alive(&self, lease: i64) -> Result<Option<Duration>, EtcdError> {
        let mut client = self.lease.clone();
        let request = tokio_stream::once(pb::LeaseKeepAliveRequest { id: lease });
        let call = async move {
            let mut answers = client.lease_keep_alive(request).await?;
            answers.message().await.map_err(etcdv3client::Error::from)
        };
        match self.bounded(call).await? {
            Some(answer) if answer.ttl > 0 => Ok(Some(Duration::from_secs(answer.ttl as u64))),
            Some(_) => Ok(None),
            None => Err(EtcdError::Call("the keep-alive stream ended without an answer".into())),
        }
    }

    /// Ends `lease` now: the keys attached to it go at once.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let mut client = self.lease.clone();
        self.bounded(client.lease_revoke(pb::LeaseRevokeRequest { id: lease })).await.map(|_| ())
    }

    /// The key, if it exists, and the store's revision at the time of the answer.
    pub async fn get(&self, key: &str) -> Result<(Option<KeyValue>, i64), EtcdError> {
        let mut kv = self.kv.clone();
        let request = pb::RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() };
        let answer = self.bounded(kv.range(request)).await?;
        let revision = answer.header.map_or(0, |h| h.revision);
        Ok((answer.kvs.into_iter().next().map(KeyValue::from), revision))
    }

    /// Every key that starts with `prefix`.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let mut kv = self.kv.clone();
        let request =
            pb::RangeRequest { key: prefix.as_bytes().to_vec(), range_end: prefix_end(prefix), ..Default::default() };
        Ok(self.bounded(kv.range(request)).await?.kvs.into_iter().map(KeyValue::from).collect())
    }

    /// Sets `key`, attached to `lease` when one is given (`0`: none).
    pub async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), EtcdError> {
        let mut kv = self.kv.clone();
        let request = pb::PutRequest { key: key.as_bytes().to_vec(), value, lease, ..Default::default() };
        self.bounded(kv.put(request)).await.map(|_| ())
    }

    /// Deletes `key` if it is still attached to `lease`. Answers whether it did.
    pub async fn delete_if_leased(&self, key: &str, lease: i64) -> Result<bool, EtcdError> {
        let compare = pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Lease as i32,
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
            target_union: Some(pb::compare::TargetUnion::Lease(lease)),
        };
        let delete = pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        });
        let request = pb::TxnRequest {
            compare: vec![compare],
            success: vec![pb::RequestOp { request: Some(delete) }],
            failure: Vec::new(),
        };
        let mut kv = self.kv.clone();
        Ok(self.bounded(kv.txn(request)).await?.succeeded)
    }

    /// One atomic compare-and-swap: when every condition holds, sets every
    /// `(key, value, lease)`. Answers whether it did.
    pub async fn swap(&self, expect: &[Expect], set: Vec<(String, Vec<u8>, i64)>) -> Result<bool, EtcdError> {
        let compare = expect
            .iter()
            .map(|e| match e {
                Expect::Absent(key) => pb::Compare {
                    result: pb::compare::CompareResult::Equal as i32,
                    target: pb::compare::CompareTarget::Version as i32,
                    key: key.as_bytes().to_vec(),
                    range_end: Vec::new(),
                    target_union: Some(pb::compare::TargetUnion::Version(0)),
                },
                Expect::Lease(key, lease) => pb::Compare {
                    result: pb::compare::CompareResult::Equal as i32,
                    target: pb::compare::CompareTarget::Lease as i32,
                    key: key.as_bytes().to_vec(),
                    range_end: Vec::new(),
                    target_union: Some(pb::compare::TargetUnion::Lease(*lease)),
                },
                Expect::ModRevision(key, revision) => pb::Compare {
                    result: pb::compare::CompareResult::Equal as i32,
                    target: pb::compare::CompareTarget::Mod as i32,
                    key: key.as_bytes().to_vec(),
                    range_end: Vec::new(),
                    target_union: Some(pb::compare::TargetUnion::ModRevision(*revision)),
                },
            })
            .collect();
        let success = set
            .into_iter()
            .map(|(key, value, lease)| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.into_bytes(),
                    value,
                    lease,
                    ..Default::default()
                })),
            })
            .collect();
        let mut kv = self.kv.clone();
        let request = pb::TxnRequest { compare, success, failure: Vec::new() };
        Ok(self.bounded(kv.txn(request)).await?.succeeded)
    }

    /// Watches every key under `prefix`: the receiver gets a `()` for each batch of
    /// changes, and closes when the watch breaks (the caller watches again).
    pub async fn watch_prefix(&self, prefix: &str) -> Result<mpsc::Receiver<()>, EtcdError> {
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix),
                ..Default::default()
            })),
        };
        // The request stream stays open for as long as the watch lives.
        let (requests, stream) = mpsc::channel(1);
        let _ = requests.send(create).await;
        let mut watch = self.watch.clone();
        let mut answers = self.bounded(watch.watch(tokio_stream::wrappers::ReceiverStream::new(stream))).await?;
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let _keep_open = requests;
            while let Ok(Some(answer)) = answers.message().await {
                if answer.canceled {
                    break;
                }
                if !answer.events.is_empty() && tx.try_send(()).is_err() && tx.is_closed() {
                    break;
                }
            }
        });
        Ok(rx)
    }
}

/// The end of the key range that holds every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_just_past_every_key_that_starts_with_it() {
        assert_eq!(prefix_end("/bitark/"), b"/bitark0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), vec![b'a', 0x80]);
    }

    #[test]
    fn an_endpoint_that_is_no_url_is_named() {
        let e = Etcd::connect(&["not a url".into()], Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("`not a url`"), "{e}");
    }
}
