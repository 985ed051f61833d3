//! `bitark shards init | show | assign | split`: the shard map in etcd, read and changed from
//! the command line. Every change is one compare-and-swap on the map's revision, checked
//! for overlapping and missing ranges before it is written. `move | abort | rollback |
//! status` run the move controller (see `shards_move.rs`).

use crate::shards_move::HttpSteps;
use bitark_common::{parse_hash, GroupId, HashRange, ShardMap, ShardMapError};
use bitark_engine::sharding::controller::{Controller, MoveFailure, MoveOptions, Phase, Progress};
use bitark_engine::sharding::{read_directory, ShardError, ShardMapStore};
use bitark_infra::etcd::{Etcd, EtcdError};
use std::time::Duration;

/// Where the map is: the etcd endpoints and the key prefix.
#[derive(Clone, Debug)]
pub struct Place {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub timeout: Duration,
    /// `security.admin-token`, for the groups' `/admin/shard/*` endpoints.
    pub admin_token: Option<String>,
}

/// What a `shards` command does.
#[derive(Clone, Debug)]
pub enum Action {
    /// Writes the first map: the hash space cut evenly over these groups, in order.
    Init { groups: Vec<String> },
    /// Prints the map and each group's master.
    Show { json: bool },
    /// Gives a range to a group, in the next map version.
    Assign { range: String, group: String, expect_version: Option<u64> },
    /// Cuts one of the map's ranges in two, at a hash or at its midpoint, in the next
    /// map version (the same group owns both halves).
    Split { range: String, at: Option<String>, expect_version: Option<u64> },
    /// Moves one of the map's ranges, with its users, to another group.
    Move { range: String, to: String, options: MoveOptions },
    /// Aborts a move that has not committed.
    Abort { range: String },
    /// Moves a range a finished move took back to the group it came from.
    Rollback { range: String, options: MoveOptions },
    /// Prints every recorded move.
    Status,
}

/// Why a `shards` command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Map(#[from] ShardError),
    #[error(transparent)]
    Invalid(#[from] ShardMapError),
    #[error("give the etcd endpoints: --etcd URL, or coordination.etcd.endpoints in the configuration")]
    NoEtcd,
    #[error(transparent)]
    Move(#[from] MoveFailure),
    #[error("the move of {range} ended aborted: {reason}")]
    Aborted { range: HashRange, reason: String },
    #[error("no finished move of {0} to roll back")]
    NothingToRollBack(HashRange),
}

/// Runs `action` against the map at `place`; `say` prints a line.
pub async fn run(place: Place, action: Action, say: impl Fn(&str)) -> Result<(), Error> {
    if place.endpoints.is_empty() {
        return Err(Error::NoEtcd);
    }
    let etcd = Etcd::connect(&place.endpoints, place.timeout)?;
    let store = ShardMapStore::new(etcd.clone(), &place.prefix);
    match action {
        Action::Init { groups } => {
            let groups = groups.iter().map(|g| GroupId::new(g.trim())).collect::<Result<Vec<_>, _>>()?;
            let map = ShardMap::even(&groups)?;
            store.init(&map).await?;
            say(&format!("shard map version 1 written at {}", store.key()));
            show(&map, &Default::default(), &say);
        }
        Action::Show { json } => {
            let directory = read_directory(&etcd, &place.prefix).await?;
            let Some(directory) = directory else {
                return Err(ShardError::NoMap(store.key().to_string()).into());
            };
            if json {
                say(&serde_json::to_string_pretty(&directory.map).expect("a map serializes"));
            } else {
                show(&directory.map, &directory.masters, &say);
            }
        }
        Action::Assign { range, group, expect_version } => {
            let range: HashRange = range.parse()?;
            let group = GroupId::new(&group)?;
            let map = store.assign(range, &group, expect_version).await?;
            say(&format!("shard map version {}: {range} is group {group}'s", map.version));
            show(&map, &Default::default(), &say);
        }
        Action::Split { range, at, expect_version } => {
            let range: HashRange = range.parse()?;
            let at = at.as_deref().map(parse_hash).transpose()?;
            let started = std::time::Instant::now();
            let map = store.split(range, at, expect_version).await?;
            let took = started.elapsed();
            say(&format!("shard map version {}: {range} split in two (committed in {took:.1?})", map.version));
            show(&map, &Default::default(), &say);
        }
        Action::Move { range, to, options } => {
            let (range, to) = (range.parse()?, GroupId::new(&to)?);
            let controller = Controller::new(etcd.clone(), steps(&etcd, &place), &place.prefix, options);
            let recorded = controller.status().await?.into_iter().find(|m| m.range == range && m.to == to);
            match recorded {
                // A controller that died left this move: take it on from its phase.
                Some(m) if !m.phase.is_over() => say(&format!("resuming the move of {range} to group {to}")),
                Some(m) if m.phase == Phase::Done && store.current().await?.map.owner_of_range(range) == Some(&to) => {
                    say(&format!("done already: {range} is group {to}'s"));
                    return Ok(());
                }
                _ => {
                    let planned = controller.plan(range, &to).await?;
                    say(&format!("moving {range} from group {} to group {to}", planned.from));
                }
            }
            drive(&controller, range, &say).await?;
        }
        Action::Rollback { range, options } => {
            let range: HashRange = range.parse()?;
            let controller = Controller::new(etcd.clone(), steps(&etcd, &place), &place.prefix, options);
            let done = controller.status().await?.into_iter().find(|m| m.range == range && m.phase == Phase::Done);
            let done = done.ok_or(Error::NothingToRollBack(range))?;
            controller.plan(range, &done.from).await?;
            say(&format!("moving {range} back from group {} to group {}", done.to, done.from));
            drive(&controller, range, &say).await?;
        }
        Action::Abort { range } => {
            let range: HashRange = range.parse()?;
            let controller = Controller::new(etcd.clone(), steps(&etcd, &place), &place.prefix, MoveOptions::default());
            controller.abort(range, "aborted by bitark shards abort").await?;
            say(&format!("the move of {range} is aborted; the source takes its writes again"));
        }
        Action::Status => {
            let controller = Controller::new(etcd.clone(), steps(&etcd, &place), &place.prefix, MoveOptions::default());
            for m in controller.status().await? {
                let pause = m.pause_ms.map_or(String::new(), |p| format!(", pause {p} ms"));
                say(&format!(
                    "{}  {} -> {}  {}{pause}",
                    m.range,
                    m.from,
                    m.to,
                    serde_json::to_string(&m.phase).unwrap_or_default()
                ));
            }
        }
    }
    Ok(())
}

fn steps(etcd: &Etcd, place: &Place) -> HttpSteps {
    HttpSteps::new(etcd.clone(), &place.prefix, place.admin_token.clone())
}

/// Runs a planned move to its end, printing its progress (the copy at most once a second).
async fn drive(controller: &Controller<Etcd, HttpSteps>, range: HashRange, say: &impl Fn(&str)) -> Result<(), Error> {
    let last = std::cell::Cell::new(None::<std::time::Instant>);
    let report = |p: &Progress| match p {
        Progress::Copying(s) => {
            if last.get().is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last.set(Some(std::time::Instant::now()));
                say(&format!("  {}: {} copied, {} replayed, lag {} records", s.phase, s.copied, s.replayed, s.lag()));
            }
        }
        Progress::Frozen { freeze_lsn } => say(&format!("  frozen on the source at LSN {freeze_lsn}")),
        Progress::Committed { pause } => say(&format!("  committed: writes to the range paused {pause:.1?}")),
        Progress::Aborted(reason) => say(&format!("  aborted: {reason}")),
        Progress::Done => say("  the source dropped its copy"),
    };
    let over = controller.drive(range, report).await?;
    match over.phase {
        Phase::Aborted { reason } => Err(Error::Aborted { range, reason }),
        _ => {
            say(&format!("done: {range} is group {}'s", over.to));
            Ok(())
        }
    }
}

/// The map as a table: one line per range.
fn show(map: &ShardMap, masters: &std::collections::HashMap<GroupId, String>, say: &impl Fn(&str)) {
    say(&format!("version {} · partitioner {} · {} ranges", map.version, map.partitioner.name(), map.ranges.len()));
    for r in &map.ranges {
        let master = masters.get(&r.group).map_or(String::new(), |url| format!("  master {url}"));
        say(&format!(
            "  {}  {:>6.2}%  {:<12} v{}{master}",
            r.range,
            100.0 * r.range.share(),
            r.group.as_str(),
            r.version
        ));
    }
}
