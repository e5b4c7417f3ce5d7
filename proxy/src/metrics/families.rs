//! Writes metric families in the Prometheus/OpenMetrics text format through prometheus-client,
//! from values read at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::Histogram;

type Labels = Vec<(&'static str, String)>;

enum Values {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, i64)>),
    Histogram((f64, u64, Vec<(f64, u64)>)),
}

struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    values: Values,
}

/// The families of one scrape, in the order they were added.
#[derive(Default)]
pub struct Families {
    families: Vec<Family>,
}

impl std::fmt::Debug for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Families")
            .field("len", &self.families.len())
            .finish()
    }
}

impl Families {
    /// A counter without labels; `name` without `_total` (the encoder adds it).
    pub fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.counters(name, help, None, vec![(Vec::new(), value)]);
    }

    /// A counter family; `unit` is appended to the name (`…_microdollars_total`).
    pub fn counters(
        &mut self,
        name: &'static str,
        help: &'static str,
        unit: Option<Unit>,
        values: Vec<(Labels, u64)>,
    ) {
        self.families.push(Family {
            name,
            help,
            unit,
            values: Values::Counter(values),
        });
    }

    pub fn gauge(&mut self, name: &'static str, help: &'static str, value: i64) {
        self.gauges(name, help, None, vec![(Vec::new(), value)]);
    }

    pub fn gauges(
        &mut self,
        name: &'static str,
        help: &'static str,
        unit: Option<Unit>,
        values: Vec<(Labels, i64)>,
    ) {
        self.families.push(Family {
            name,
            help,
            unit,
            values: Values::Gauge(values),
        });
    }

    /// A histogram in seconds; `name` without `_seconds`.
    pub fn histogram(&mut self, name: &'static str, help: &'static str, h: &Histogram) {
        self.families.push(Family {
            name,
            help,
            unit: Some(Unit::Seconds),
            values: Values::Histogram(h.snapshot()),
        });
    }

    /// The text exposition (OpenMetrics 1.0, which Prometheus reads).
    pub fn encode(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            let kind = match family.values {
                Values::Counter(_) => MetricType::Counter,
                Values::Gauge(_) => MetricType::Gauge,
                Values::Histogram(_) => MetricType::Histogram,
            };
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, family.unit.as_ref(), kind)?;
            match &family.values {
                Values::Counter(values) => encode_each(metric, values, ConstCounter::new)?,
                Values::Gauge(values) => encode_each(metric, values, ConstGauge::new)?,
                Values::Histogram((sum, count, buckets)) => {
                    metric.encode_histogram::<NoLabels>(*sum, *count, buckets, None)?;
                }
            }
        }
        Ok(())
    }
}

type NoLabels = prometheus_client::encoding::NoLabelSet;

/// One sample without labels, or one per label set.
fn encode_each<V: Copy, M: EncodeMetric>(
    mut metric: MetricEncoder<'_>,
    values: &[(Labels, V)],
    make: impl Fn(V) -> M,
) -> Result<(), std::fmt::Error> {
    match values {
        [(labels, value)] if labels.is_empty() => make(*value).encode(metric),
        _ => {
            for (labels, value) in values {
                make(*value).encode(metric.encode_family(labels)?)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode_with_help_type_units_and_total() {
        let mut f = Families::default();
        f.counter("sentinel_pg_queries", "Statements forwarded.", 7);
        f.counters(
            "sentinel_llm_cost",
            "Cost charged.",
            Some(Unit::Other("microdollars".into())),
            vec![(vec![("tenant", "acme".to_owned())], 1900)],
        );
        f.gauges(
            "sentinel_pg_clients",
            "Clients.",
            None,
            vec![(vec![("state", "idle".to_owned())], 3)],
        );
        let h = Histogram::latency();
        h.observe(std::time::Duration::from_millis(2));
        f.histogram("sentinel_pg_pool_wait", "Wait.", &h);
        let text = f.encode();
        for line in [
            "# HELP sentinel_pg_queries Statements forwarded.",
            "# TYPE sentinel_pg_queries counter",
            "sentinel_pg_queries_total 7",
            "sentinel_llm_cost_microdollars_total{tenant=\"acme\"} 1900",
            "sentinel_pg_clients{state=\"idle\"} 3",
            "# TYPE sentinel_pg_pool_wait_seconds histogram",
            "sentinel_pg_pool_wait_seconds_bucket{le=\"0.0025\"} 1",
            "sentinel_pg_pool_wait_seconds_count 1",
            "sentinel_pg_pool_wait_seconds_bucket{le=\"+Inf\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
