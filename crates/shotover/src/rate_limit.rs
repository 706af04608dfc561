//! The cross-core rate limit behind RequestThrottling.
//!
//! A limit of R requests per second holds for the whole process, yet no worker core waits
//! for another or takes a lock on the data path:
//! - [`GlobalRate`] lives on the control core. Every tick it reads how many requests each
//!   core was asked to admit, and splits R into per-core rates by that demand
//!   ([`allocate`]: cores that need little get what they need, the rest share the remainder
//!   equally, and any slack is spread evenly so a core that wakes up is not starved).
//! - [`Gcra`] lives on one worker core and is shared by its connections. It admits requests
//!   at its core's current rate with the Generic Cell Rate Algorithm: a theoretical arrival
//!   time moves forward by 1/rate per request, and a request is refused when that time runs
//!   more than [`BURST`] ahead of now.
//!
//! The two talk through two relaxed atomics per core ([`CoreShare`]): the core adds to its
//! demand counter, the control core stores its rate.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How far ahead of now a core's theoretical arrival time may run: the burst a core may
/// admit at once is about `BURST × its rate` requests, so the whole process admits about
/// one second of its limit at once after a quiet spell (as much as a driver's startup
/// needs), and exactly its limit per second under sustained load.
pub const BURST: Duration = Duration::from_secs(1);
/// Weight of the newest tick in the demand average (about 10 ticks of memory).
const DEMAND_WEIGHT: f64 = 0.1;
/// Headroom over a core's observed demand, so that growing demand shows.
const HEADROOM: f64 = 1.1;
/// Part of the limit every core keeps even when idle, so it can start serving at once.
const FLOOR: f64 = 0.02;

/// What one worker core and the control core share.
#[derive(Debug, Default)]
pub struct CoreShare {
    /// Requests per second this core may admit (f64 bits), set by the control core.
    rate: AtomicU64,
    /// Requests this core was asked to admit since it started, admitted or not.
    demand: AtomicU64,
}

impl CoreShare {
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    fn set_rate(&self, rate: f64) {
        self.rate.store(rate.to_bits(), Ordering::Relaxed);
    }
}

struct CoreEntry {
    share: Arc<CoreShare>,
    seen: u64,
    /// Requests per second, averaged over recent ticks.
    demand: f64,
}

/// One global limit, split between the cores that use it.
pub struct GlobalRate {
    limit: f64,
    cores: Mutex<Vec<CoreEntry>>,
}

impl GlobalRate {
    pub fn new(limit_per_second: f64) -> Arc<Self> {
        Arc::new(GlobalRate { limit: limit_per_second, cores: Mutex::new(Vec::new()) })
    }

    pub fn limit(&self) -> f64 {
        self.limit
    }

    /// Adds a core; the limit is re-split at once so the sum never exceeds it.
    pub fn join(&self) -> Arc<CoreShare> {
        let share = Arc::new(CoreShare::default());
        if let Ok(mut cores) = self.cores.lock() {
            cores.push(CoreEntry { share: share.clone(), seen: 0, demand: 0.0 });
            let even = self.limit / cores.len() as f64;
            for core in cores.iter() {
                core.share.set_rate(even);
            }
        }
        share
    }

    /// One control-core tick: measure each core's demand since the last tick and re-split.
    pub fn rebalance(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if seconds <= 0.0 {
            return;
        }
        let Ok(mut cores) = self.cores.lock() else { return };
        let floor = self.limit * FLOOR / cores.len().max(1) as f64;
        let wanted: Vec<f64> = cores
            .iter_mut()
            .map(|core| {
                let total = core.share.demand.load(Ordering::Relaxed);
                let rate = total.saturating_sub(core.seen) as f64 / seconds;
                core.seen = total;
                core.demand += DEMAND_WEIGHT * (rate - core.demand);
                core.demand * HEADROOM + floor
            })
            .collect();
        for (core, rate) in cores.iter().zip(allocate(self.limit, &wanted)) {
            core.share.set_rate(rate);
        }
    }
}

/// Splits `limit` by `wanted` (max-min fair): in increasing order of want, each core gets
/// what it wants or an equal part of what is left, whichever is less; what nobody wanted is
/// spread evenly. The result always sums to `limit`.
pub fn allocate(limit: f64, wanted: &[f64]) -> Vec<f64> {
    let n = wanted.len();
    let mut shares = vec![0.0; n];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| wanted[a].total_cmp(&wanted[b]));
    let mut remaining = limit;
    for (k, &i) in order.iter().enumerate() {
        let fair = remaining / (n - k) as f64;
        let give = wanted[i].max(0.0).min(fair);
        shares[i] = give;
        remaining -= give;
    }
    if n > 0 && remaining > 0.0 {
        let extra = remaining / n as f64;
        for share in &mut shares {
            *share += extra;
        }
    }
    shares
}

/// A worker core's limiter, shared by the connections of that core.
pub struct Gcra {
    share: Arc<CoreShare>,
    /// Theoretical arrival time of the next request.
    tat: Cell<Instant>,
}

impl Gcra {
    pub fn new(share: Arc<CoreShare>) -> Self {
        Gcra { share, tat: Cell::new(Instant::now()) }
    }

    /// Counts requests the core was asked to admit, for the control core's split.
    pub fn record_demand(&self, requests: u64) {
        self.share.demand.fetch_add(requests, Ordering::Relaxed);
    }

    /// Admits `cost` requests arriving at `now`, or none of them.
    pub fn try_admit(&self, now: Instant, cost: u64) -> bool {
        let rate = self.share.rate();
        if rate <= 0.0 || cost == 0 {
            return cost == 0;
        }
        let single = Duration::from_secs_f64(1.0 / rate);
        let interval = single.mul_f64(cost as f64);
        let start = self.tat.get().max(now);
        let tat = start + interval;
        // Conforming when the last of the `cost` requests is no further ahead of now than
        // the burst tolerance allows a single request to be.
        if tat.saturating_duration_since(now) > BURST + single {
            return false;
        }
        self.tat.set(tat);
        true
    }

    /// The largest cost [`Gcra::try_admit`] can ever admit at the current rate (one burst).
    /// A single request that costs more (a CQL BATCH of many statements) cannot be split,
    /// so callers count it as this much, or it would be refused forever.
    pub fn max_cost(&self) -> u64 {
        let rate = self.share.rate();
        if rate <= 0.0 {
            return 1;
        }
        (rate * BURST.as_secs_f64()) as u64 + 1
    }

    /// How long from `now` until `cost` requests would be admitted, if no others come first.
    pub fn wait_for(&self, now: Instant, cost: u64) -> Duration {
        let rate = self.share.rate();
        if rate <= 0.0 {
            // No share at the moment: the control core hands one out within a tick or two.
            return Duration::from_millis(100);
        }
        let single = Duration::from_secs_f64(1.0 / rate);
        let tat = self.tat.get().max(now) + single.mul_f64(cost as f64);
        tat.saturating_duration_since(now).saturating_sub(BURST + single)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_says_when_a_refused_request_would_be_admitted() {
        let global = GlobalRate::new(100.0);
        let gcra = Gcra::new(global.join());
        global.rebalance(Duration::from_millis(10));
        let now = Instant::now();
        let mut admitted = 0;
        while gcra.try_admit(now, 1) {
            admitted += 1;
        }
        assert!(admitted >= 100, "the burst of one second: {admitted}");
        let wait = gcra.wait_for(now, 1);
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(10), "{wait:?}");
        assert!(gcra.try_admit(now + wait, 1), "admitted once the wait is over");
    }

    #[test]
    fn allocate_gives_small_demands_what_they_want() {
        let shares = allocate(500.0, &[1000.0, 100.0]);
        assert_eq!(shares, vec![400.0, 100.0]);
    }

    #[test]
    fn allocate_splits_evenly_under_equal_pressure() {
        assert_eq!(allocate(500.0, &[900.0, 700.0]), vec![250.0, 250.0]);
    }

    #[test]
    fn allocate_spreads_slack() {
        let shares = allocate(500.0, &[100.0, 0.0]);
        assert_eq!(shares, vec![300.0, 200.0]);
        assert_eq!(shares.iter().sum::<f64>(), 500.0);
    }

    #[test]
    fn gcra_admits_at_its_rate() {
        let share = Arc::new(CoreShare::default());
        share.set_rate(1000.0);
        let gcra = Gcra::new(share);
        let start = Instant::now();
        let mut admitted = 0;
        // Three simulated seconds, a request every 100 µs: ten times the rate. The first
        // second's burst, then the rate.
        for i in 0..30_000u64 {
            if gcra.try_admit(start + Duration::from_micros(i * 100), 1) {
                admitted += 1;
            }
        }
        assert!((3990..=4010).contains(&admitted), "{admitted}");
    }

    #[test]
    fn a_batch_costs_each_of_its_requests() {
        let share = Arc::new(CoreShare::default());
        share.set_rate(50.0);
        let gcra = Gcra::new(share);
        let now = Instant::now();
        // The burst allows about one second of the rate at once, not more.
        assert!(!gcra.try_admit(now, 199), "a batch of 199 at 50/s");
        assert!(gcra.try_admit(now, 40));
        assert!(!gcra.try_admit(now, 20), "the burst is used up");
    }

    #[test]
    fn a_request_costing_up_to_max_cost_is_admitted_when_the_limiter_is_idle() {
        let share = Arc::new(CoreShare::default());
        share.set_rate(50.0);
        let gcra = Gcra::new(share);
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(gcra.max_cost(), 51);
        assert!(gcra.try_admit(later, gcra.max_cost()));
    }

    #[test]
    fn idle_core_keeps_little_when_another_is_busy() {
        let global = GlobalRate::new(1000.0);
        let busy = global.join();
        let idle = global.join();
        for _ in 0..50 {
            busy.demand.fetch_add(100, Ordering::Relaxed); // 10k/s at a 10 ms tick
            global.rebalance(Duration::from_millis(10));
        }
        assert!(busy.rate() > 970.0, "busy core gets {}", busy.rate());
        assert!((busy.rate() + idle.rate() - 1000.0).abs() < 1e-6);
    }
}
