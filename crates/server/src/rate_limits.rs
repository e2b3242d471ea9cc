//! Abuse limits at a replica's edge (issue 13, section 3): token buckets per client address and
//! per identity, set in `[limits]` (`rate_*`, see [`crate::config::Limits`]).
//!
//! - **updates** per client address and per identity (VRF index, so that many addresses
//!   hammering one identity share its bucket);
//! - **registrations** (updates of an identity without an entry) per client address, charged
//!   on every attempt, failed ones included, so that a registration code cannot be guessed;
//! - **distinct lookups** per client address: only a user id the address has not asked for
//!   recently costs a token, so re-checking one's contacts is free and enumerating user ids
//!   through the VRF is not;
//! - **e-mail code requests** per client address and per identity (mail bombing).
//!
//! A refusal is [`RateLimited`], which becomes RESOURCE_EXHAUSTED naming the limit and its
//! configuration key, with `retry-after-ms` metadata: milliseconds until a retry can succeed.
//! Addresses in `rate_exempt_addresses` are never limited, not even per identity (trusted
//! frontends, load generators). A request without a known client address is limited per
//! identity only.
//!
//! Client addresses are keyed as the host's network sees them: an IPv4-mapped IPv6 address is
//! its IPv4 address, and an IPv6 address counts as its /64 (one host usually holds a whole /64,
//! so per-address buckets would otherwise be free to multiply).
//!
//! The buckets are GCRA (the `governor` crate) on the replica's clock
//! ([`crate::seams::Seams::clock`]), made monotonic here. Memory is bounded: each table of
//! buckets holds at most `rate_keys_max` keys; when a new key finds it full, the half of the
//! keys closest to a full bucket (the smallest theoretical arrival times) is dropped. A key
//! being limited has a later arrival time than any key used once, so an attacker must drain
//! half a table's buckets to push a limited key out, and a dropped key gets back at most one
//! burst. The recent user ids of the distinct-lookup limit are bounded the same way
//! ([`LOOKUP_RECENT_IDS_PER_ADDRESS`] per address, [`LOOKUP_RECENT_ADDRESSES_MAX`]
//! addresses, least recently seen dropped first).

use crate::config::Limits;
use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use keyraft_core::clock::Clock;
use keyraft_core::Index;
use serde::{Deserialize, Serialize};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::Status;

/// The metadata key of a refusal's wait: integer milliseconds until a retry can succeed.
pub const RETRY_AFTER_MS_METADATA: &str = "retry-after-ms";
/// The metadata key naming the limit that refused a request (its configuration key).
pub const RATE_LIMIT_METADATA: &str = "rate-limit";
/// User ids remembered per client address for the distinct-lookup limit: an address book of
/// this many contacts is re-checked for free.
pub const LOOKUP_RECENT_IDS_PER_ADDRESS: usize = 256;
/// Client addresses whose recent user ids are remembered (8 bytes per id: at most 16 MiB
/// with [`LOOKUP_RECENT_IDS_PER_ADDRESS`]); the least recently seen address is forgotten first.
pub const LOOKUP_RECENT_ADDRESSES_MAX: usize = 8_192;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// Updates from one client address.
    UpdatesPerAddress,
    /// Updates of one identity, from any address.
    UpdatesPerIdentity,
    /// Registration attempts (updates of an identity without an entry) from one client address.
    RegistrationsPerAddress,
    /// Lookups of user ids one client address has not asked for recently.
    LookupsDistinctPerAddress,
    /// E-mail code requests from one client address.
    EmailCodesPerAddress,
    /// E-mail code requests for one identity, from any address.
    EmailCodesPerIdentity,
}

impl Limit {
    /// The configuration key of the limit's rate.
    pub fn config_key(self) -> &'static str {
        match self {
            Self::UpdatesPerAddress => "limits.rate_updates_per_address_per_minute",
            Self::UpdatesPerIdentity => "limits.rate_updates_per_identity_per_minute",
            Self::RegistrationsPerAddress => "limits.rate_registrations_per_address_per_hour",
            Self::LookupsDistinctPerAddress => "limits.rate_lookups_distinct_per_address_per_minute",
            Self::EmailCodesPerAddress => "limits.rate_email_codes_per_address_per_hour",
            Self::EmailCodesPerIdentity => "limits.rate_email_codes_per_identity_per_hour",
        }
    }

    /// The configuration key of the limit's burst.
    pub fn burst_key(self) -> &'static str {
        match self {
            Self::UpdatesPerAddress => "limits.rate_updates_per_address_burst",
            Self::UpdatesPerIdentity => "limits.rate_updates_per_identity_burst",
            Self::RegistrationsPerAddress => "limits.rate_registrations_per_address_burst",
            Self::LookupsDistinctPerAddress => "limits.rate_lookups_distinct_per_address_burst",
            Self::EmailCodesPerAddress => "limits.rate_email_codes_per_address_burst",
            Self::EmailCodesPerIdentity => "limits.rate_email_codes_per_identity_burst",
        }
    }

    /// What is counted, in words.
    fn counted(self) -> &'static str {
        match self {
            Self::UpdatesPerAddress => "updates from this client address",
            Self::UpdatesPerIdentity => "updates of this identity",
            Self::RegistrationsPerAddress => "registration attempts from this client address",
            Self::LookupsDistinctPerAddress => "lookups of new user ids from this client address",
            Self::EmailCodesPerAddress => "e-mail code requests from this client address",
            Self::EmailCodesPerIdentity => "e-mail code requests for this identity",
        }
    }

    /// The period the rate is counted over.
    fn period(self) -> Period {
        match self {
            Self::UpdatesPerAddress | Self::UpdatesPerIdentity | Self::LookupsDistinctPerAddress => Period::Minute,
            Self::RegistrationsPerAddress | Self::EmailCodesPerAddress | Self::EmailCodesPerIdentity => Period::Hour,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Period {
    Minute,
    Hour,
}

impl Period {
    fn duration(self) -> Duration {
        match self {
            Self::Minute => Duration::from_secs(60),
            Self::Hour => Duration::from_secs(3_600),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
        }
    }
}

/// A request refused by a rate limit: the caller sends too fast; not a server fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate limited: {} are limited to {rate} per {} with bursts of {burst} ({} and {} on this replica); \
     retry in {retry_after_ms} ms. The caller is sending too fast: this is not a server fault",
    limit.counted(),
    limit.period().name(),
    limit.config_key(),
    limit.burst_key()
)]
pub struct RateLimited {
    /// The limit that refused the request.
    pub limit: Limit,
    /// Its rate, per minute or per hour ([`Limit::config_key`] says which).
    pub rate: u32,
    /// Its burst.
    pub burst: u32,
    /// Milliseconds until a retry can succeed (at least 1).
    pub retry_after_ms: u64,
}

impl From<RateLimited> for Status {
    fn from(e: RateLimited) -> Status {
        let mut status = Status::resource_exhausted(e.to_string());
        status.metadata_mut().insert(RETRY_AFTER_MS_METADATA, MetadataValue::from(e.retry_after_ms));
        status.metadata_mut().insert(RATE_LIMIT_METADATA, MetadataValue::from_static(e.limit.config_key()));
        status
    }
}

/// An address or a network in CIDR form (`192.0.2.7`, `10.0.0.0/8`, `2001:db8::/32`), as
/// written in `rate_exempt_addresses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AddressRange {
    network: IpAddr,
    prefix_bits: u8,
}

impl AddressRange {
    /// Whether `ip` lies in this range (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical_ip(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix_bits) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix_bits) == u128::from(n),
            _ => false,
        }
    }
}

fn mask32(bits: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(bits.min(32))).unwrap_or(0)
}

fn mask128(bits: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(bits.min(128))).unwrap_or(0)
}

impl std::str::FromStr for AddressRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("rate_exempt_addresses: {s:?} is not an IP address or a network (a.b.c.d/n)"))?;
        let width: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let prefix_bits = match prefix {
            None => width,
            Some(p) => match p.parse::<u8>() {
                Ok(bits) if bits <= width => bits,
                _ => return Err(format!("rate_exempt_addresses: {s:?}: the prefix length must be 0 to {width}")),
            },
        };
        // `::ffff:10.0.0.0/104` is 10.0.0.0/8: clients are compared as IPv4 addresses.
        let (network, prefix_bits) = match ip {
            IpAddr::V6(v6) if prefix_bits >= 96 && v6.to_ipv4_mapped().is_some() => {
                (canonical_ip(ip), prefix_bits - 96)
            }
            ip => (ip, prefix_bits),
        };
        let host_bits_clear = match network {
            IpAddr::V4(n) => u32::from(n) & !mask32(prefix_bits) == 0,
            IpAddr::V6(n) => u128::from(n) & !mask128(prefix_bits) == 0,
        };
        if !host_bits_clear {
            return Err(format!(
                "rate_exempt_addresses: {s:?} has bits set after its /{} prefix (write the network's first address)",
                prefix.unwrap_or_default()
            ));
        }
        Ok(Self { network, prefix_bits })
    }
}

impl TryFrom<String> for AddressRange {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<AddressRange> for String {
    fn from(r: AddressRange) -> String {
        let width = if r.network.is_ipv4() { 32 } else { 128 };
        if r.prefix_bits == width {
            r.network.to_string()
        } else {
            format!("{}/{}", r.network, r.prefix_bits)
        }
    }
}

/// An IPv4-mapped IPv6 address as its IPv4 address; others as they are.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The key of a client address's buckets: its IPv4 address, or its IPv6 /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(64))),
        v4 => v4,
    }
}

/// The replica's clock as governor's: nanoseconds, never going back (a host clock stepped back
/// would otherwise stretch every wait).
#[derive(Debug, Clone)]
pub struct ReplicaClock {
    clock: Arc<dyn Clock>,
    latest_ns: Arc<AtomicU64>,
}

impl ReplicaClock {
    /// Governor's view of `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, latest_ns: Arc::new(AtomicU64::new(0)) }
    }
}

impl GovernorClock for ReplicaClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        let now = self.clock.now_ms().saturating_mul(1_000_000);
        let latest = self.latest_ns.fetch_max(now, Ordering::Relaxed);
        Nanos::new(now.max(latest))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Governor's state (each key's theoretical arrival time) in a table of at most `keys_max`
/// keys; see the module's documentation for what is dropped when it is full.
#[derive(Debug)]
struct Table<K> {
    keys_max: usize,
    arrivals: Mutex<HashMap<K, u64>>,
}

/// The store governor holds; the bucket keeps another handle on the table.
#[derive(Debug)]
struct BoundedStore<K>(Arc<Table<K>>);

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut arrivals = lock(&self.0.arrivals);
        if let Some(arrival) = arrivals.get_mut(key) {
            let (answer, next) = f(Some(Nanos::new(*arrival)))?;
            *arrival = next.as_u64();
            return Ok(answer);
        }
        let (answer, next) = f(None)?;
        if arrivals.len() >= self.0.keys_max {
            drop_most_recovered(&mut arrivals);
        }
        arrivals.insert(key.clone(), next.as_u64());
        Ok(answer)
    }
}

/// Drops the half of the keys with the earliest arrival times: the buckets closest to full,
/// which lose the least by starting over.
fn drop_most_recovered<K>(arrivals: &mut HashMap<K, u64>) {
    let mut times: Vec<u64> = arrivals.values().copied().collect();
    if times.is_empty() {
        return;
    }
    let middle = times.len() / 2;
    let median = *times.select_nth_unstable(middle).1;
    arrivals.retain(|_, arrival| *arrival > median);
}

/// One limit: a bucket per key.
struct Bucket<K: Hash + Eq + Clone> {
    limit: Limit,
    rate: u32,
    burst: u32,
    limiter: RateLimiter<K, BoundedStore<K>, ReplicaClock, NoOpMiddleware<Nanos>>,
    table: Arc<Table<K>>,
}

impl<K: Hash + Eq + Clone> Bucket<K> {
    /// The limit of `rate` per the limit's period with bursts of `burst`; `None` (off) when
    /// `rate` is 0.
    fn new(limit: Limit, rate: u32, burst: u32, keys_max: usize, clock: &ReplicaClock) -> Option<Self> {
        let rate_nz = NonZeroU32::new(rate)?;
        // A burst of 0 with a rate is refused by the configuration check; one token if not.
        let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(limit.period().duration() / rate_nz.get())?.allow_burst(burst_nz);
        let table = Arc::new(Table { keys_max: keys_max.max(2), arrivals: Mutex::new(HashMap::new()) });
        let limiter = RateLimiter::new(quota, BoundedStore(table.clone()), clock.clone());
        Some(Self { limit, rate, burst, limiter, table })
    }

    fn check(&self, key: &K) -> Result<(), RateLimited> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            let retry_after_ms = u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX).max(1);
            RateLimited { limit: self.limit, rate: self.rate, burst: self.burst, retry_after_ms }
        })
    }

    /// Keys in the table (in the service's `Debug`, and for tests of the bound).
    fn keys(&self) -> usize {
        lock(&self.table.arrivals).len()
    }
}

/// The distinct-lookup limit: a bucket per client address, charged only for user ids the
/// address has not asked for recently.
struct DistinctLookups {
    bucket: Bucket<IpAddr>,
    recent: Mutex<RecentIds>,
}

#[derive(Default)]
struct RecentIds {
    by_address: HashMap<IpAddr, Recent>,
    /// Lookups seen, a logical clock for "least recently seen".
    seen: u64,
}

struct Recent {
    ids: VecDeque<u64>,
    last_seen: u64,
}

impl DistinctLookups {
    fn check(&self, address: IpAddr, id: u64) -> Result<(), RateLimited> {
        let mut recent = lock(&self.recent);
        recent.seen += 1;
        let seen = recent.seen;
        if let Some(r) = recent.by_address.get_mut(&address) {
            r.last_seen = seen;
            if r.ids.contains(&id) {
                return Ok(());
            }
        }
        self.bucket.check(&address)?;
        if !recent.by_address.contains_key(&address) && recent.by_address.len() >= LOOKUP_RECENT_ADDRESSES_MAX {
            forget_least_recent(&mut recent.by_address);
        }
        let r = recent.by_address.entry(address).or_insert_with(|| Recent { ids: VecDeque::new(), last_seen: seen });
        if r.ids.len() >= LOOKUP_RECENT_IDS_PER_ADDRESS {
            r.ids.pop_front();
        }
        r.ids.push_back(id);
        Ok(())
    }
}

/// Forgets the half of the addresses seen least recently.
fn forget_least_recent(by_address: &mut HashMap<IpAddr, Recent>) {
    let mut times: Vec<u64> = by_address.values().map(|r| r.last_seen).collect();
    if times.is_empty() {
        return;
    }
    let middle = times.len() / 2;
    let median = *times.select_nth_unstable(middle).1;
    by_address.retain(|_, r| r.last_seen > median);
}

/// Every rate limit of a replica's public service.
pub struct RateLimits {
    exempt: Vec<AddressRange>,
    updates_per_address: Option<Bucket<IpAddr>>,
    updates_per_identity: Option<Bucket<[u8; 32]>>,
    registrations_per_address: Option<Bucket<IpAddr>>,
    lookups_distinct_per_address: Option<DistinctLookups>,
    email_codes_per_address: Option<Bucket<IpAddr>>,
    email_codes_per_identity: Option<Bucket<u64>>,
    /// Hashes user ids into keys (randomly keyed: clients cannot aim for collisions).
    hasher: RandomState,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = |b: Option<&Bucket<_>>| b.map(Bucket::keys);
        f.debug_struct("RateLimits")
            .field("exempt", &self.exempt)
            .field("updates_per_address_keys", &keys(self.updates_per_address.as_ref()))
            .field("updates_per_identity_keys", &self.updates_per_identity.as_ref().map(Bucket::keys))
            .field("registrations_per_address_keys", &keys(self.registrations_per_address.as_ref()))
            .field(
                "lookups_distinct_per_address_keys",
                &self.lookups_distinct_per_address.as_ref().map(|l| l.bucket.keys()),
            )
            .field("email_codes_per_address_keys", &keys(self.email_codes_per_address.as_ref()))
            .field("email_codes_per_identity_keys", &self.email_codes_per_identity.as_ref().map(Bucket::keys))
            .finish()
    }
}

impl RateLimits {
    /// The limits `[limits]` sets, on `clock`.
    pub fn new(limits: &Limits, clock: Arc<dyn Clock>) -> Self {
        let clock = ReplicaClock::new(clock);
        let keys_max = limits.rate_keys_max;
        let l = limits;
        Self {
            exempt: l.rate_exempt_addresses.clone(),
            updates_per_address: Bucket::new(
                Limit::UpdatesPerAddress,
                l.rate_updates_per_address_per_minute,
                l.rate_updates_per_address_burst,
                keys_max,
                &clock,
            ),
            updates_per_identity: Bucket::new(
                Limit::UpdatesPerIdentity,
                l.rate_updates_per_identity_per_minute,
                l.rate_updates_per_identity_burst,
                keys_max,
                &clock,
            ),
            registrations_per_address: Bucket::new(
                Limit::RegistrationsPerAddress,
                l.rate_registrations_per_address_per_hour,
                l.rate_registrations_per_address_burst,
                keys_max,
                &clock,
            ),
            lookups_distinct_per_address: Bucket::new(
                Limit::LookupsDistinctPerAddress,
                l.rate_lookups_distinct_per_address_per_minute,
                l.rate_lookups_distinct_per_address_burst,
                keys_max,
                &clock,
            )
            .map(|bucket| DistinctLookups { bucket, recent: Mutex::default() }),
            email_codes_per_address: Bucket::new(
                Limit::EmailCodesPerAddress,
                l.rate_email_codes_per_address_per_hour,
                l.rate_email_codes_per_address_burst,
                keys_max,
                &clock,
            ),
            email_codes_per_identity: Bucket::new(
                Limit::EmailCodesPerIdentity,
                l.rate_email_codes_per_identity_per_hour,
                l.rate_email_codes_per_identity_burst,
                keys_max,
                &clock,
            ),
            hasher: RandomState::new(),
        }
    }

    /// Who `peer` is to the limits: exempt, unknown (no address), or its address's key.
    fn client(&self, peer: Option<IpAddr>) -> Client {
        match peer {
            None => Client::Unknown,
            Some(ip) if self.exempt.iter().any(|r| r.contains(ip)) => Client::Exempt,
            Some(ip) => Client::Address(address_key(ip)),
        }
    }

    /// An update of the identity at `index` from `peer`; `registration` when the identity has
    /// no entry yet. Counted before the update is checked, so failed attempts count too.
    pub fn check_update(&self, peer: Option<IpAddr>, index: &Index, registration: bool) -> Result<(), RateLimited> {
        let address = match self.client(peer) {
            Client::Exempt => return Ok(()),
            Client::Unknown => None,
            Client::Address(a) => Some(a),
        };
        if let (Some(bucket), Some(a)) = (&self.updates_per_address, address) {
            bucket.check(&a)?;
        }
        if let Some(bucket) = &self.updates_per_identity {
            bucket.check(&index.0)?;
        }
        if let (Some(bucket), Some(a), true) = (&self.registrations_per_address, address, registration) {
            bucket.check(&a)?;
        }
        Ok(())
    }

    /// A lookup of `user_id` from `peer`: free if the address asked for it recently.
    pub fn check_lookup(&self, peer: Option<IpAddr>, user_id: &str) -> Result<(), RateLimited> {
        match (self.client(peer), &self.lookups_distinct_per_address) {
            (Client::Address(a), Some(limit)) => limit.check(a, self.hasher.hash_one(user_id)),
            _ => Ok(()),
        }
    }

    /// A request for an e-mail code for `user_id` from `peer`.
    pub fn check_email_code(&self, peer: Option<IpAddr>, user_id: &str) -> Result<(), RateLimited> {
        let address = match self.client(peer) {
            Client::Exempt => return Ok(()),
            Client::Unknown => None,
            Client::Address(a) => Some(a),
        };
        if let (Some(bucket), Some(a)) = (&self.email_codes_per_address, address) {
            bucket.check(&a)?;
        }
        if let Some(bucket) = &self.email_codes_per_identity {
            bucket.check(&self.hasher.hash_one(user_id))?;
        }
        Ok(())
    }
}

enum Client {
    Exempt,
    Unknown,
    Address(IpAddr),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use keyraft_core::clock::ManualClock;

    /// Every rate limit off; each test turns on the ones it is about.
    fn off() -> Limits {
        Limits {
            rate_updates_per_address_per_minute: 0,
            rate_updates_per_identity_per_minute: 0,
            rate_registrations_per_address_per_hour: 0,
            rate_lookups_distinct_per_address_per_minute: 0,
            rate_email_codes_per_address_per_hour: 0,
            rate_email_codes_per_identity_per_hour: 0,
            ..Limits::default()
        }
    }

    fn limits(edit: impl FnOnce(&mut Limits)) -> (RateLimits, ManualClock) {
        let mut l = off();
        edit(&mut l);
        let clock = ManualClock::new(1_700_000_000_000);
        (RateLimits::new(&l, Arc::new(clock.clone())), clock)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn index(n: u8) -> Index {
        Index([n; 32])
    }

    #[test]
    fn an_exhausted_bucket_answers_resource_exhausted_with_retry_after_and_the_key() {
        let (limits, _) = limits(|l| {
            l.rate_updates_per_address_per_minute = 60;
            l.rate_updates_per_address_burst = 2;
        });
        let a = ip("192.0.2.1");
        limits.check_update(a, &index(1), false).unwrap();
        limits.check_update(a, &index(2), false).unwrap();
        let refused = limits.check_update(a, &index(3), false).unwrap_err();
        assert_eq!(refused, RateLimited { limit: Limit::UpdatesPerAddress, rate: 60, burst: 2, retry_after_ms: 1_000 });
        let status = Status::from(refused);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get(RETRY_AFTER_MS_METADATA).unwrap(), "1000");
        assert_eq!(status.metadata().get(RATE_LIMIT_METADATA).unwrap(), "limits.rate_updates_per_address_per_minute");
        let m = status.message();
        assert!(m.contains("limits.rate_updates_per_address_per_minute") && m.contains("not a server fault"), "{m}");
        // Another address has its own bucket.
        limits.check_update(ip("192.0.2.2"), &index(3), false).unwrap();
    }

    #[test]
    fn a_bucket_recovers_once_the_clock_passes_retry_after() {
        let (limits, clock) = limits(|l| {
            l.rate_updates_per_address_per_minute = 60;
            l.rate_updates_per_address_burst = 1;
        });
        let a = ip("192.0.2.1");
        limits.check_update(a, &index(1), false).unwrap();
        let wait = limits.check_update(a, &index(1), false).unwrap_err().retry_after_ms;
        clock.advance(wait - 1);
        assert_eq!(limits.check_update(a, &index(1), false).unwrap_err().retry_after_ms, 1);
        clock.advance(1);
        limits.check_update(a, &index(1), false).unwrap();
        // A host clock stepped back does not stretch the wait.
        clock.set(clock.now_ms() - 3_600_000);
        assert_eq!(limits.check_update(a, &index(1), false).unwrap_err().retry_after_ms, 1_000);
    }

    #[test]
    fn an_identity_is_limited_whichever_addresses_its_updates_come_from() {
        let (limits, _) = limits(|l| {
            l.rate_updates_per_identity_per_minute = 6;
            l.rate_updates_per_identity_burst = 3;
        });
        for a in ["192.0.2.1", "192.0.2.2", "2001:db8::1"] {
            limits.check_update(ip(a), &index(7), false).unwrap();
        }
        let refused = limits.check_update(ip("198.51.100.9"), &index(7), false).unwrap_err();
        assert_eq!(refused.limit, Limit::UpdatesPerIdentity);
        assert_eq!(refused.retry_after_ms, 10_000);
        // Without a known address too.
        assert_eq!(limits.check_update(None, &index(7), false).unwrap_err().limit, Limit::UpdatesPerIdentity);
        limits.check_update(ip("198.51.100.9"), &index(8), false).unwrap();
    }

    #[test]
    fn registrations_are_counted_per_address_per_hour_on_every_attempt() {
        let (limits, clock) = limits(|l| {
            l.rate_registrations_per_address_per_hour = 4;
            l.rate_registrations_per_address_burst = 2;
        });
        let a = ip("192.0.2.1");
        // Attempts for one identity (a guessed code, refused after this check) count as
        // much as attempts for new ones.
        limits.check_update(a, &index(1), true).unwrap();
        limits.check_update(a, &index(1), true).unwrap();
        let refused = limits.check_update(a, &index(2), true).unwrap_err();
        assert_eq!(refused.limit, Limit::RegistrationsPerAddress);
        assert_eq!(refused.retry_after_ms, 15 * 60 * 1_000);
        assert!(refused.to_string().contains("per hour"), "{refused}");
        // Updates of existing identities are not registrations.
        limits.check_update(a, &index(3), false).unwrap();
        limits.check_update(ip("192.0.2.2"), &index(2), true).unwrap();
        clock.advance(15 * 60 * 1_000);
        limits.check_update(a, &index(2), true).unwrap();
    }

    #[test]
    fn looking_up_the_same_ids_again_is_free_and_new_ids_are_limited() {
        let (limits, clock) = limits(|l| {
            l.rate_lookups_distinct_per_address_per_minute = 60;
            l.rate_lookups_distinct_per_address_burst = 3;
        });
        let a = ip("192.0.2.1");
        let contacts = ["alice@example.com", "bob@example.com", "carol@example.com"];
        for _ in 0..100 {
            for c in contacts {
                limits.check_lookup(a, c).unwrap();
            }
        }
        let refused = limits.check_lookup(a, "dave@example.com").unwrap_err();
        assert_eq!(refused.limit, Limit::LookupsDistinctPerAddress);
        assert_eq!(refused.retry_after_ms, 1_000);
        // A refused id was not remembered: it costs a token once the bucket has one.
        assert!(limits.check_lookup(a, "dave@example.com").is_err());
        limits.check_lookup(ip("192.0.2.2"), "dave@example.com").unwrap();
        clock.advance(1_000);
        limits.check_lookup(a, "dave@example.com").unwrap();
        limits.check_lookup(a, "dave@example.com").unwrap();
        assert!(limits.check_lookup(a, "erin@example.com").is_err());
    }

    #[test]
    fn an_address_forgets_its_oldest_ids_past_the_recent_set() {
        let (limits, _) = limits(|l| {
            l.rate_lookups_distinct_per_address_per_minute = 60;
            l.rate_lookups_distinct_per_address_burst = 10_000;
        });
        let a = ip("192.0.2.1");
        for n in 0..=LOOKUP_RECENT_IDS_PER_ADDRESS {
            limits.check_lookup(a, &format!("user{n}")).unwrap();
        }
        let recent = lock(&limits.lookups_distinct_per_address.as_ref().unwrap().recent);
        let ids = &recent.by_address[&a.unwrap()].ids;
        assert_eq!(ids.len(), LOOKUP_RECENT_IDS_PER_ADDRESS);
        assert!(!ids.contains(&limits.hasher.hash_one("user0")));
        assert!(ids.contains(&limits.hasher.hash_one("user1")));
    }

    #[test]
    fn e_mail_code_requests_are_limited_per_address_and_per_identity() {
        let (limits, _) = limits(|l| {
            l.rate_email_codes_per_address_per_hour = 10;
            l.rate_email_codes_per_address_burst = 2;
            l.rate_email_codes_per_identity_per_hour = 6;
            l.rate_email_codes_per_identity_burst = 1;
        });
        limits.check_email_code(ip("192.0.2.1"), "alice@example.com").unwrap();
        let refused = limits.check_email_code(ip("192.0.2.2"), "alice@example.com").unwrap_err();
        assert_eq!(refused.limit, Limit::EmailCodesPerIdentity);
        assert_eq!(refused.retry_after_ms, 10 * 60 * 1_000);
        limits.check_email_code(ip("192.0.2.1"), "bob@example.com").unwrap();
        let refused = limits.check_email_code(ip("192.0.2.1"), "carol@example.com").unwrap_err();
        assert_eq!(refused.limit, Limit::EmailCodesPerAddress);
    }

    #[test]
    fn exempt_addresses_are_never_limited() {
        let (limits, _) = limits(|l| {
            l.rate_exempt_addresses = vec!["10.1.0.0/16".parse().unwrap(), "::1".parse().unwrap()];
            l.rate_updates_per_address_per_minute = 1;
            l.rate_updates_per_address_burst = 1;
            l.rate_updates_per_identity_per_minute = 1;
            l.rate_updates_per_identity_burst = 1;
            l.rate_registrations_per_address_per_hour = 1;
            l.rate_registrations_per_address_burst = 1;
            l.rate_lookups_distinct_per_address_per_minute = 1;
            l.rate_lookups_distinct_per_address_burst = 1;
            l.rate_email_codes_per_address_per_hour = 1;
            l.rate_email_codes_per_address_burst = 1;
            l.rate_email_codes_per_identity_per_hour = 1;
            l.rate_email_codes_per_identity_burst = 1;
        });
        for a in ["10.1.2.3", "::ffff:10.1.200.1", "::1"] {
            for n in 0..50 {
                limits.check_update(ip(a), &index(1), true).unwrap();
                limits.check_lookup(ip(a), &format!("user{n}")).unwrap();
                limits.check_email_code(ip(a), "alice@example.com").unwrap();
            }
        }
        limits.check_update(ip("10.2.0.1"), &index(2), false).unwrap();
        assert!(limits.check_update(ip("10.2.0.1"), &index(3), false).is_err());
    }

    #[test]
    fn ipv4_mapped_addresses_are_their_ipv4_address_and_ipv6_counts_per_64() {
        let (limits, _) = limits(|l| {
            l.rate_updates_per_address_per_minute = 1;
            l.rate_updates_per_address_burst = 1;
        });
        limits.check_update(ip("192.0.2.1"), &index(1), false).unwrap();
        assert!(limits.check_update(ip("::ffff:192.0.2.1"), &index(1), false).is_err());
        limits.check_update(ip("2001:db8:0:1::1"), &index(1), false).unwrap();
        assert!(limits.check_update(ip("2001:db8:0:1:ffff::2"), &index(1), false).is_err());
        limits.check_update(ip("2001:db8:0:2::1"), &index(1), false).unwrap();
    }

    #[test]
    fn tables_stay_bounded_under_many_addresses_and_keep_the_limited_ones() {
        let keys_max = 1_000;
        let (limits, _) = limits(|l| {
            l.rate_keys_max = keys_max;
            l.rate_updates_per_address_per_minute = 1;
            l.rate_updates_per_address_burst = 2;
            l.rate_lookups_distinct_per_address_per_minute = 1;
            l.rate_lookups_distinct_per_address_burst = 2;
        });
        let limited = ip("198.51.100.1");
        limits.check_update(limited, &index(1), false).unwrap();
        limits.check_update(limited, &index(1), false).unwrap();
        for n in 0..100_000u32 {
            let a = IpAddr::V6(Ipv6Addr::from(u128::from(n) << 64));
            limits.check_update(Some(a), &index(1), false).unwrap();
            limits.check_lookup(Some(a), "alice@example.com").unwrap();
        }
        let updates = limits.updates_per_address.as_ref().unwrap();
        assert!(updates.keys() <= keys_max, "{}", updates.keys());
        let lookups = limits.lookups_distinct_per_address.as_ref().unwrap();
        assert!(lookups.bucket.keys() <= keys_max, "{}", lookups.bucket.keys());
        assert!(lock(&lookups.recent).by_address.len() <= LOOKUP_RECENT_ADDRESSES_MAX);
        // The address that drained its bucket has a later arrival time than any address used
        // once: it was kept, still limited.
        assert_eq!(limits.check_update(limited, &index(1), false).unwrap_err().limit, Limit::UpdatesPerAddress);
    }

    #[test]
    fn address_ranges_parse_match_and_refuse_host_bits() {
        let r: AddressRange = "10.1.0.0/16".parse().unwrap();
        assert!(r.contains("10.1.255.7".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!r.contains("10.2.0.1".parse().unwrap()));
        assert!(!r.contains("::1".parse().unwrap()));
        let mapped: AddressRange = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(String::from(mapped), "10.0.0.0/8");
        let all: AddressRange = "::/0".parse().unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        assert_eq!(String::from("192.0.2.7".parse::<AddressRange>().unwrap()), "192.0.2.7");
        assert!("10.1.0.1/16".parse::<AddressRange>().unwrap_err().contains("bits set after its /16"));
        assert!("2001:db8::/129".parse::<AddressRange>().unwrap_err().contains("0 to 128"));
        assert!("example.com".parse::<AddressRange>().is_err());
    }
}
