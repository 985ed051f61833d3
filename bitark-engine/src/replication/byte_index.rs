//! How many bytes of log follow an LSN, without reading the log: the master's lag in
//! bytes, and the write rate its headroom is measured in.

use bitark_common::Lsn;
use std::collections::VecDeque;
use std::time::Instant;

/// Cumulative bytes of log at sampled LSNs, so `bytes_after(lsn)` can say how many bytes
/// of log follow an LSN without reading the log. A point is kept about every `step`
/// bytes; when there are too many points, every other one goes and `step` doubles, so
/// memory stays bounded and the error stays below `step` bytes.
pub(crate) struct ByteIndex {
    /// `(last LSN of a batch, bytes of log written through it)`, ascending.
    points: VecDeque<(u64, u64)>,
    /// Bytes written through the newest LSN.
    total: u64,
    newest: u64,
    /// The LSN the index started at.
    start: u64,
    step: u64,
    /// Bytes of log written per second, smoothed; sampled about once a second.
    rate: f64,
    sampled: (Instant, u64),
}

const MAX_POINTS: usize = 1 << 16;

impl ByteIndex {
    pub fn new(start: Lsn) -> ByteIndex {
        ByteIndex {
            points: VecDeque::from([(start.0, 0)]),
            total: 0,
            newest: start.0,
            start: start.0,
            step: 64 * 1024,
            rate: 0.0,
            sampled: (Instant::now(), 0),
        }
    }

    /// Bytes of log written per second lately (0 when nothing is written).
    pub fn rate(&self) -> f64 {
        let (at, total) = self.sampled;
        // A sample older than a few seconds means writes stopped since.
        if at.elapsed().as_secs_f64() > 5.0 && total == self.total {
            0.0
        } else {
            self.rate
        }
    }

    /// Average bytes of one record written by this process (0 before any).
    pub fn record_bytes(&self) -> f64 {
        let records = self.newest - self.start;
        if records == 0 {
            0.0
        } else {
            self.total as f64 / records as f64
        }
    }

    /// Notes `bytes` more of log, through `last`.
    pub fn push(&mut self, last: Lsn, bytes: u64) {
        self.total += bytes;
        self.newest = last.0;
        let (at, total) = self.sampled;
        let elapsed = at.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            let now = (self.total - total) as f64 / elapsed;
            self.rate = if self.rate == 0.0 { now } else { 0.5 * self.rate + 0.5 * now };
            self.sampled = (Instant::now(), self.total);
        }
        let (_, at) = *self.points.back().expect("never empty");
        if self.total - at >= self.step {
            self.points.push_back((last.0, self.total));
            if self.points.len() > MAX_POINTS {
                self.points = self.points.iter().copied().step_by(2).collect();
                self.step *= 2;
            }
        }
    }

    /// Bytes of log after `lsn`: exact to within one step; for an LSN older than this
    /// process's log, the bytes since the process started (a lower bound).
    pub fn bytes_after(&self, lsn: Lsn) -> u64 {
        if lsn.0 >= self.newest {
            return 0;
        }
        let at = self.points.partition_point(|(l, _)| *l <= lsn.0);
        let through = match at {
            0 => 0,
            i => {
                let (l0, b0) = self.points[i - 1];
                let (l1, b1) = self.points.get(i).copied().unwrap_or((self.newest, self.total));
                if l1 > l0 {
                    b0 + (b1 - b0) * (lsn.0 - l0) / (l1 - l0)
                } else {
                    b0
                }
            }
        };
        self.total - through
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_index_answers_bytes_after_an_lsn() {
        let mut index = ByteIndex::new(Lsn(100));
        for lsn in 101..=100_100u64 {
            index.push(Lsn(lsn), 44);
        }
        assert_eq!(index.bytes_after(Lsn(100_100)), 0);
        let exact = |lsn: u64| (100_100 - lsn) * 44;
        for lsn in [100, 101, 5_000, 50_000, 99_999] {
            let got = index.bytes_after(Lsn(lsn));
            assert!(got.abs_diff(exact(lsn)) <= index.step, "after {lsn}: {got} vs {}", exact(lsn));
        }
        assert_eq!(index.bytes_after(Lsn(3)), 100_000 * 44, "older than the index: what this process wrote");
    }

    #[test]
    fn byte_index_stays_bounded() {
        let mut index = ByteIndex::new(Lsn(0));
        for lsn in 1..=3_000_000u64 {
            index.push(Lsn(lsn), 1000);
        }
        assert!(index.points.len() <= MAX_POINTS);
        let got = index.bytes_after(Lsn(1_000_000));
        assert!(got.abs_diff(2_000_000_000) <= index.step, "{got}");
    }
}
