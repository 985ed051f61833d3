//! `bitark shards init | show | assign | split`: the shard map in etcd, read and changed from
//! the command line. Every change is one compare-and-swap on the map's revision, checked
//! for overlapping and missing ranges before it is written.

use bitark_common::{parse_hash, GroupId, HashRange, ShardMap, ShardMapError};
use bitark_engine::sharding::{read_directory, ShardError, ShardMapStore};
use bitark_infra::etcd::{Etcd, EtcdError};
use std::time::Duration;

/// Where the map is: the etcd endpoints and the key prefix.
#[derive(Clone, Debug)]
pub struct Place {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub timeout: Duration,
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
    }
    Ok(())
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
