//! A listener's connection limits: open connections counted per remote address and in
//! total, and refusals logged at a bounded rate.

use super::ConnectionLimits;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
// Tokio's clock, which is the host's except in a simulation in paused time.
use tokio::time::Instant;

/// Refused connections are logged at most this often per listener, with their count.
const REFUSALS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// Its address already has this many connections open.
    Address(usize),
    /// The listener already has this many connections open.
    Total(usize),
}

/// A listener's open connections, in total and per remote address.
pub(super) struct Slots {
    limits: ConnectionLimits,
    open: Mutex<Counts>,
    /// The metrics' count of open connections, if any.
    gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Slots {
    pub(super) fn new(limits: ConnectionLimits, gauge: Option<prometheus_client::metrics::gauge::Gauge>) -> Self {
        Self { limits, open: Mutex::default(), gauge }
    }

    pub(super) fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.total >= self.limits.total_max {
            return Err(Refused::Total(open.total));
        }
        let from_ip = open.per_address.entry(ip).or_default();
        if *from_ip >= self.limits.per_address_max {
            return Err(Refused::Address(*from_ip));
        }
        *from_ip += 1;
        open.total += 1;
        if let Some(g) = &self.gauge {
            g.inc();
        }
        Ok(Slot { slots: self.clone(), ip })
    }
}

/// One counted connection; uncounted when dropped.
pub(super) struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.total -= 1;
        if let Some(g) = &self.slots.gauge {
            g.dec();
        }
        if let Some(n) = open.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&self.ip);
            }
        }
    }
}

/// Logs refused connections at most every [`REFUSALS_LOG_INTERVAL`] per limit, with their
/// count.
#[derive(Default)]
pub(super) struct RefusalLog {
    per_address: Throttle,
    total: Throttle,
}

/// When a limit's refusals were last logged, and how many came since.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    pub(super) fn refused(&mut self, name: &str, remote: SocketAddr, why: &Refused) {
        let (throttle, open, limit) = match why {
            Refused::Address(n) => (&mut self.per_address, n, "limits.connections_per_address_max"),
            Refused::Total(n) => (&mut self.total, n, "limits.connections_max"),
        };
        throttle.unlogged += 1;
        if throttle.last.is_some_and(|at| at.elapsed() < REFUSALS_LOG_INTERVAL) {
            return;
        }
        tracing::warn!(
            listener = name,
            %remote,
            open,
            refused = throttle.unlogged,
            "refusing connections: {limit} reached; `refused` counts them since the last such line"
        );
        throttle.last = Some(Instant::now());
        throttle.unlogged = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            handshake: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            per_address_max: 2,
            total_max: 3,
            streams_max: 10,
            requests_max: None,
            close_grace: Duration::from_secs(1),
            http1: false,
        }
    }

    #[test]
    fn slots_count_per_address_and_in_total_and_free_on_drop() {
        let slots = Arc::new(Slots::new(limits(), None));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(mapped).unwrap();
        assert_eq!(slots.take(a).err(), Some(Refused::Address(2)), "an IPv4-mapped address is the same address");
        let _b1 = slots.take(b).unwrap();
        assert_eq!(slots.take(b).err(), Some(Refused::Total(3)));
        drop(a1);
        let _b2 = slots.take(b).unwrap();
        assert_eq!(slots.take(a).err(), Some(Refused::Total(3)));
    }
}
