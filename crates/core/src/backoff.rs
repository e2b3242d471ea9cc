//! Capped exponential backoff: the one rule by which a client resubmits an update, a verifier
//! reconnects and pushes, and a replica re-proposes. Pure arithmetic (the caller brings the
//! randomness for jitter), so a simulation replays the same delays.

/// The delay before retry number `attempt` (0 for the first retry): `base_ms * 2^attempt`, at
/// most `max_ms`.
pub fn delay_ms(attempt: u32, base_ms: u64, max_ms: u64) -> u64 {
    base_ms.saturating_mul(1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX)).min(max_ms)
}

/// `delay_ms` spread over its upper half by `random` (any value, uniformly drawn), so that
/// many clients failing together do not retry together.
pub fn jittered_ms(delay_ms: u64, random: u64) -> u64 {
    delay_ms / 2 + random % (delay_ms / 2 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        assert_eq!(delay_ms(0, 50, 1000), 50);
        assert_eq!(delay_ms(3, 50, 1000), 400);
        assert_eq!(delay_ms(10, 50, 1000), 1000);
        assert_eq!(delay_ms(200, 50, 1000), 1000);
        assert_eq!(delay_ms(u32::MAX, u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        for random in [0, 1, 99, 100, 101, u64::MAX] {
            let d = jittered_ms(200, random);
            assert!((100..=200).contains(&d), "{d}");
        }
        assert_eq!(jittered_ms(0, 7), 0);
        assert_eq!(jittered_ms(1, u64::MAX), 0);
    }
}
