//! The proxy's latency and batch-size distributions ("histograms" in the Shotover guide).
//!
//! The guide says a histogram holds its values for about 60 seconds: every 20 seconds the
//! oldest of 3 chunks is cleared. So a scrape shows each one as a Prometheus summary, with
//! the quantiles Shotover shows (0, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999 and 1) over the last
//! 40 to 60 seconds, and `_sum` and `_count` since the start, as a summary's always are.
//!
//! - **Recording** ([`Distribution::observe`]) is on the data path, once per batch and
//!   transform: a value goes into one of [`BUCKETS`] counters found from its bits (each power
//!   of two split in 8, so a bucket is at most 12.5% wide), with no search and no lock. Each
//!   worker core has its own counters.
//! - **Scraping**: every core's counters are exported as one cumulative histogram with those
//!   buckets ([`DistributionVec`] is a `prometheus` collector), the cores are summed, and
//!   [`Windows::summarize`] subtracts what the counts were 40 to 60 seconds earlier and turns
//!   the difference into quantiles. A quantile is the middle of the bucket it falls in, or,
//!   for the narrow buckets that hold one whole number (batch sizes below 16), that number.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Powers of two from 2^-24 (60 ns, as a latency in seconds) to 2^24 (16.7 million).
const MIN_EXP: i32 = -24;
const MAX_EXP: i32 = 24;
/// Each power of two is split in `1 << SUB_BITS` buckets.
const SUB_BITS: u32 = 3;
/// Bucket 0 holds zero and everything below 2^MIN_EXP; the last one everything from 2^MAX_EXP.
pub const BUCKETS: usize = (((MAX_EXP - MIN_EXP) as usize) << SUB_BITS) + 2;
/// 2^MIN_EXP, the lowest value of bucket 1.
const MIN_VALUE: f64 = 1.0 / (1u64 << -MIN_EXP) as f64;

/// The quantiles a scrape shows, as the original Shotover's.
const QUANTILES: [f64; 8] = [0.0, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0];
/// How often the window moves on, and how far back it reaches.
const CHUNK: Duration = Duration::from_secs(20);
const WINDOW: Duration = Duration::from_secs(60);

/// The bucket of `v`: from its exponent and the first [`SUB_BITS`] bits of its mantissa.
fn bucket(v: f64) -> usize {
    // Also NaN and negative values.
    if v.is_nan() || v < MIN_VALUE {
        return 0;
    }
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1023;
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = ((bits >> (52 - SUB_BITS)) & ((1 << SUB_BITS) - 1)) as usize;
    // exp is within MIN_EXP..MAX_EXP here, so the difference is not negative.
    1 + ((((exp - MIN_EXP) as usize) << SUB_BITS) | sub)
}

/// The lowest value of bucket `i` (0 for bucket 0).
fn lower_bound(i: usize) -> f64 {
    if i == 0 {
        return 0.0;
    }
    let i = i - 1;
    let exp = (i >> SUB_BITS) as i32 + MIN_EXP;
    let sub = (i & ((1 << SUB_BITS) - 1)) as f64;
    f64::powi(2.0, exp) * (1.0 + sub / f64::from(1u32 << SUB_BITS))
}

/// One label set's counters on one core.
struct Series {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum of the values, as the bits of an `f64`.
    sum: AtomicU64,
}

/// A distribution of one label set on one core: cheap to clone, recorded on that core.
#[derive(Clone)]
pub struct Distribution(Arc<Series>);

impl Distribution {
    /// One that no registry shows, for unit tests.
    #[cfg(test)]
    pub fn unregistered() -> Self {
        Distribution(Arc::new(Series::new()))
    }

    pub fn observe(&self, v: f64) {
        let s = &self.0;
        if let Some(b) = s.buckets.get(bucket(v)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        s.count.fetch_add(1, Ordering::Relaxed);
        // Only the core that made this series records into it (it is in that core's
        // registry), so a load and a store cannot lose another core's update.
        let sum = f64::from_bits(s.sum.load(Ordering::Relaxed)) + v;
        s.sum.store(sum.to_bits(), Ordering::Relaxed);
    }
}

impl Series {
    fn new() -> Self {
        Series {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }
}

/// The distributions of one metric on one core, one per label set. Clones share them.
#[derive(Clone)]
pub struct DistributionVec(Arc<VecInner>);

struct VecInner {
    desc: Desc,
    series: Mutex<Vec<(Vec<String>, Distribution)>>,
}

impl DistributionVec {
    pub fn new(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        let desc = Desc::new(name.into(), help.into(), labels.iter().map(|l| l.to_string()).collect(), HashMap::new())?;
        Ok(DistributionVec(Arc::new(VecInner { desc, series: Mutex::new(Vec::new()) })))
    }

    /// The distribution of these label values (one per label, in order), made on first use.
    pub fn with_label_values(&self, values: &[&str]) -> Distribution {
        let Ok(mut series) = self.0.series.lock() else { return Distribution(Arc::new(Series::new())) };
        if let Some((_, d)) = series.iter().find(|(v, _)| v.iter().map(String::as_str).eq(values.iter().copied())) {
            return d.clone();
        }
        let d = Distribution(Arc::new(Series::new()));
        series.push((values.iter().map(|v| v.to_string()).collect(), d.clone()));
        d
    }
}

impl Collector for DistributionVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    /// Cumulative histograms with every bucket; [`Windows::summarize`] turns them (summed over
    /// the cores) into summaries.
    fn collect(&self) -> Vec<MetricFamily> {
        let mut family = MetricFamily::default();
        let desc = &self.0.desc;
        family.set_name(desc.fq_name.clone());
        family.set_help(desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        let series = self.0.series.lock().map(|s| s.clone()).unwrap_or_default();
        for (values, d) in series {
            let mut metric = Metric::default();
            let labels = desc.variable_labels.iter().zip(values).map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.clone());
                pair.set_value(value);
                pair
            });
            metric.set_label(labels.collect());
            let mut h = prometheus::proto::Histogram::default();
            let mut cumulative = 0;
            let buckets = d.0.buckets.iter().enumerate().map(|(i, b)| {
                cumulative += b.load(Ordering::Relaxed);
                let mut bucket = Bucket::default();
                bucket.set_cumulative_count(cumulative);
                bucket.set_upper_bound(lower_bound(i + 1));
                bucket
            });
            h.set_bucket(buckets.collect());
            h.set_sample_count(d.0.count.load(Ordering::Relaxed));
            h.set_sample_sum(f64::from_bits(d.0.sum.load(Ordering::Relaxed)));
            metric.set_histogram(h);
            family.mut_metric().push(metric);
        }
        vec![family]
    }
}

/// Cumulative bucket counts of one series at one moment.
struct Snapshot {
    at: Instant,
    counts: Vec<u64>,
}

/// A series: its metric's name and its labels.
type SeriesKey = (String, Vec<(String, String)>);

/// What each series' counts were over the last minute, kept by the scraper.
#[derive(Default)]
pub struct Windows(HashMap<SeriesKey, VecDeque<Snapshot>>);

impl Windows {
    /// Turns `family`, a histogram from [`DistributionVec`] summed over the cores, into a
    /// summary of the last 40-60 seconds (in the minute after a series' first scrape, also
    /// what it counted before that scrape). A window with no value shows NaN quantiles.
    pub fn summarize(&mut self, family: &mut MetricFamily, now: Instant) {
        if family.get_field_type() != MetricType::HISTOGRAM {
            return;
        }
        let name = family.name().to_string();
        for metric in family.mut_metric().iter_mut() {
            let h = metric.get_histogram().clone();
            let counts: Vec<u64> = h.get_bucket().iter().map(|b| b.cumulative_count()).collect();
            let labels = metric.get_label().iter().map(|l| (l.name().to_string(), l.value().to_string())).collect();
            // A series first scraped gets a snapshot of zeros, as if taken then: what it
            // counted before its first scrape stays in the window for that scrape's minute.
            let snapshots = self
                .0
                .entry((name.clone(), labels))
                .or_insert_with(|| VecDeque::from([Snapshot { at: now, counts: vec![0; counts.len()] }]));
            // The oldest snapshot within the window; without one (scrapes further apart than
            // the window), the newest.
            let base = snapshots
                .iter()
                .find(|s| now.saturating_duration_since(s.at) <= WINDOW)
                .or(snapshots.back())
                .map(|s| s.counts.clone())
                .unwrap_or_default();
            let window: Vec<u64> =
                counts.iter().enumerate().map(|(i, c)| c.saturating_sub(base.get(i).copied().unwrap_or(0))).collect();
            let mut summary = Summary::default();
            summary.set_sample_count(h.get_sample_count());
            summary.set_sample_sum(h.get_sample_sum());
            summary.set_quantile(QUANTILES.iter().map(|&q| quantile(&window, q)).collect());
            metric.set_histogram(prometheus::proto::Histogram::default());
            metric.set_summary(summary);
            if snapshots.back().is_none_or(|s| now.saturating_duration_since(s.at) >= CHUNK) {
                snapshots.push_back(Snapshot { at: now, counts });
            }
            while snapshots.len() > 1 && snapshots.front().is_some_and(|s| now.saturating_duration_since(s.at) > WINDOW)
            {
                snapshots.pop_front();
            }
        }
        family.set_field_type(MetricType::SUMMARY);
    }
}

/// Quantile `q` of the values whose cumulative bucket counts are `cumulative`: the middle of
/// the bucket that holds it, or the whole number a narrow bucket holds (NaN when there are
/// no values).
fn quantile(cumulative: &[u64], q: f64) -> Quantile {
    let total = cumulative.last().copied().unwrap_or(0);
    let mut out = Quantile::default();
    out.set_quantile(q);
    // The rank of the value, 1-based: the smallest for q = 0, the largest for q = 1.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total.max(1));
    let value = match cumulative.iter().position(|&c| c >= rank) {
        Some(i) if total > 0 => {
            let (low, high) = (lower_bound(i), lower_bound(i + 1));
            // A bucket at most 1 wide that starts at a whole number holds one whole number
            // (a batch size below 16): that number, exactly.
            let whole = low >= 1.0 && low.fract() == 0.0 && high - low <= 1.0;
            if i == 0 {
                0.0
            } else if i + 1 >= BUCKETS || whole {
                low
            } else {
                (low + high) / 2.0
            }
        }
        _ => f64::NAN,
    };
    out.set_value(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_found_from_the_bits_and_are_at_most_an_eighth_wide() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(-1.0), 0);
        assert_eq!(bucket(f64::NAN), 0);
        assert_eq!(bucket(1e-9), 0);
        assert_eq!(bucket(1e30), BUCKETS - 1);
        for v in [6e-8, 1e-6, 0.00031, 0.5, 1.0, 3.0, 17.0, 1e6, 1.6e7] {
            let i = bucket(v);
            assert!(lower_bound(i) <= v && v < lower_bound(i + 1), "{v} in bucket {i}");
            assert!(lower_bound(i + 1) / lower_bound(i) <= 1.125 + 1e-12, "{v}");
        }
        // Small whole numbers (batch sizes) start their buckets, and are shown exactly.
        for n in 1..=16 {
            assert_eq!(lower_bound(bucket(f64::from(n))), f64::from(n));
            let mut cumulative = vec![0; BUCKETS];
            cumulative.iter_mut().skip(bucket(f64::from(n))).for_each(|c| *c = 3);
            let shown = quantile(&cumulative, 0.5).value();
            assert!(shown == f64::from(n) || (n == 16 && shown == 17.0), "{n}: {shown}");
        }
    }

    fn family(vec: &DistributionVec) -> MetricFamily {
        vec.collect().into_iter().next().expect("one family")
    }

    #[test]
    fn quantiles_cover_the_last_minute_and_count_and_sum_everything() {
        let vec = DistributionVec::new("lat", "help", &["chain"]).unwrap();
        let d = vec.with_label_values(&["c"]);
        for _ in 0..90 {
            d.observe(0.001);
        }
        for _ in 0..10 {
            d.observe(0.1);
        }
        let mut windows = Windows::default();
        let t0 = Instant::now();
        let mut f = family(&vec);
        windows.summarize(&mut f, t0);
        assert_eq!(f.get_field_type(), MetricType::SUMMARY);
        let s = f.get_metric()[0].get_summary();
        assert_eq!(s.sample_count(), 100);
        assert!((s.sample_sum() - 1.09).abs() < 1e-9, "{}", s.sample_sum());
        let q: Vec<(f64, f64)> = s.get_quantile().iter().map(|q| (q.quantile(), q.value())).collect();
        let near = |v: f64, want: f64| (v / want - 1.0).abs() < 0.07;
        assert!(near(q[2].1, 0.001) && near(q[5].1, 0.1) && near(q[0].1, 0.001) && near(q[7].1, 0.1), "{q:?}");
        assert!(near(q[3].1, 0.001) && near(q[4].1, 0.1), "{q:?}");

        // 30 s later, the window still holds them, and what came after.
        for _ in 0..100 {
            d.observe(0.01);
        }
        let mut f = family(&vec);
        windows.summarize(&mut f, t0 + Duration::from_secs(30));
        let s = f.get_metric()[0].get_summary();
        assert_eq!(s.sample_count(), 200);
        assert!(near(s.get_quantile()[0].value(), 0.001), "{:?}", s.get_quantile());
        assert!(near(s.get_quantile()[4].value(), 0.01), "{:?}", s.get_quantile());

        // Slow values only from then on.
        for _ in 0..100 {
            d.observe(2.0);
        }
        // 70 s after the start, the window starts at the scrape 40 s before; 25 s later,
        // with nothing new, the window is empty.
        let mut f = family(&vec);
        windows.summarize(&mut f, t0 + Duration::from_secs(70));
        let s = f.get_metric()[0].get_summary();
        assert!(near(s.get_quantile()[0].value(), 2.0), "{:?}", s.get_quantile());
        let mut f = family(&vec);
        windows.summarize(&mut f, t0 + Duration::from_secs(95));
        let s = f.get_metric()[0].get_summary();
        assert!(s.get_quantile().iter().all(|q| q.value().is_nan()), "{:?}", s.get_quantile());
        assert_eq!(s.sample_count(), 300);
    }
}
