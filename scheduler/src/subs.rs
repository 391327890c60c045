//! Subscriptions: who wants to hear when an item's price drops or it is back in stock.
//!
//! State behind one interface, like reservations. A SKU's subscriptions live in one partition
//! ([`subs_part`], a hash of the SKU), so a subscribe touches that partition and its request
//! id's home only:
//! - `w` sku kind bucket user → [`SubscriptionRecord`]: the index notifications page through,
//!   in (bucket, user) order, where the bucket ([`user_bucket`], 16 bits of a hash of the user)
//!   places each user in one notification shard, so a worker reads its own range of the index
//!   and nothing else;
//! - `N` len(user) user sku kind → empty: a user's subscriptions, for listing (every partition
//!   holds those of its SKUs).
//!
//! A record keeps the epochs it was live in ([`Span`]), so notifications for an epoch go to
//! the subscriptions as they stood when that epoch began, however late a notification worker
//! pages through them. Records are never dropped (a user's unsubscribed record stays, closed,
//! and is reused when they subscribe again).

use ordo_storage::Part;
use serde::{Deserialize, Serialize};

use crate::model::*;

/// What a subscriber wants to hear about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubKind {
    /// The price drops (to below `below_cents`, when given).
    PriceDrop { below_cents: Option<i64> },
    /// Units become available again: at any DC, at the DCs named, or at a DC within a radius of
    /// a point (the edge decides distances; execution stores the point).
    BackInStock { near: Option<Near>, dcs: Vec<u32> },
}

/// A point and radius, in integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Near {
    pub lat_e6: i32,
    pub lon_e6: i32,
    pub radius_m: u32,
}

/// A subscription's kind without its parameters: one subscription per (user, SKU, kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SubTag {
    PriceDrop,
    BackInStock,
}

impl SubTag {
    pub fn byte(self) -> u8 {
        match self {
            SubTag::PriceDrop => 1,
            SubTag::BackInStock => 2,
        }
    }
}

impl SubKind {
    pub fn tag(&self) -> SubTag {
        match self {
            SubKind::PriceDrop { .. } => SubTag::PriceDrop,
            SubKind::BackInStock { .. } => SubTag::BackInStock,
        }
    }
}

/// Epochs a subscription was live in: from after `since` (the epoch that subscribed) through
/// `until` (the epoch that unsubscribed), or on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub since: u64,
    pub until: Option<u64>,
}

/// A record keeps at most this many spans, the latest: a user who subscribes and unsubscribes
/// more often than this loses the oldest spans (notifications of those epochs not yet sent
/// then miss them).
pub const SPANS_MAX: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub user: String,
    pub sku: u32,
    /// The parameters as last subscribed.
    pub kind: SubKind,
    pub spans: Vec<Span>,
    /// The request that last subscribed.
    pub request_id: String,
}

impl SubscriptionRecord {
    /// Whether it is open now.
    pub fn active(&self) -> bool {
        self.spans.last().is_some_and(|s| s.until.is_none())
    }

    /// Whether it stood when epoch `epoch` began: subscribed in an earlier epoch and not
    /// unsubscribed before this one.
    pub fn live_at(&self, epoch: u64) -> bool {
        self.spans
            .iter()
            .any(|s| s.since < epoch && s.until.is_none_or(|u| u >= epoch))
    }
}

/// Buckets the subscription index splits users into (a bucket is 16 bits).
pub const BUCKETS: u32 = 1 << 16;

/// A user's bucket: the first 2 bytes of BLAKE3(user), big-endian.
pub fn user_bucket(user: &str) -> u16 {
    let hash = blake3::hash(user.as_bytes());
    u16::from_be_bytes([hash.as_bytes()[0], hash.as_bytes()[1]])
}

/// The shard of `shards` a user's notifications go to: shards split the buckets into equal
/// ranges, shard `s` taking buckets `b` with `b * shards / 65536 == s` (0 or 1 shard: 0).
/// Notification workers split users by it; `shards` is at most [`BUCKETS`].
pub fn user_shard(user: &str, shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    (u64::from(user_bucket(user)) * u64::from(shards) / u64::from(BUCKETS)) as u32
}

/// The buckets of shard `shard` of `shards`: `lo..hi`, `hi` at most [`BUCKETS`] (empty for a
/// shard out of range).
pub fn shard_buckets(shard: u32, shards: u32) -> (u32, u32) {
    let shards = u64::from(shards.clamp(1, BUCKETS));
    let at = |s: u64| (s.min(shards) * u64::from(BUCKETS)).div_ceil(shards) as u32;
    (at(u64::from(shard)), at(u64::from(shard) + 1))
}

/// The partition that holds a SKU's subscriptions.
pub fn subs_part(sku: u32, partitions: u32) -> Part {
    kv_part(&format!("subs/{sku}"), partitions)
}

pub mod key {
    use super::SubTag;

    pub const SUBSCRIPTION: u8 = b'w';
    /// The index's first layout (`n` sku kind user, no bucket), before shards had ranges of
    /// their own: a store that holds such keys was written by an older Ordo.
    pub const SUBSCRIPTION_UNBUCKETED: u8 = b'n';
    pub const BY_USER: u8 = b'N';

    pub fn subscription(sku: u32, tag: SubTag, user: &str) -> Vec<u8> {
        let mut k = prefix(sku, tag);
        k.extend_from_slice(&super::user_bucket(user).to_be_bytes());
        k.extend_from_slice(user.as_bytes());
        k
    }

    /// Every subscription of `sku` and `tag` starts with this, in (bucket, user) order.
    pub fn prefix(sku: u32, tag: SubTag) -> Vec<u8> {
        let mut k = vec![SUBSCRIPTION];
        k.extend_from_slice(&sku.to_be_bytes());
        k.push(tag.byte());
        k
    }

    /// `start..end` holding exactly the subscriptions of `sku` and `tag` whose users fall in
    /// shard `shard` of `shards`.
    pub fn shard_range(sku: u32, tag: SubTag, shard: u32, shards: u32) -> (Vec<u8>, Vec<u8>) {
        let (lo, hi) = super::shard_buckets(shard, shards);
        let at = |bucket: u32| {
            let mut k = prefix(sku, tag);
            match u16::try_from(bucket) {
                Ok(b) => k.extend_from_slice(&b.to_be_bytes()),
                // Past the last bucket: the next tag's prefix.
                Err(_) => *k.last_mut().expect("a prefix") += 1,
            }
            k
        };
        (at(lo), at(hi))
    }

    pub fn by_user(user: &str, sku: u32, tag: SubTag) -> Vec<u8> {
        let mut k = user_prefix(user);
        k.extend_from_slice(&sku.to_be_bytes());
        k.push(tag.byte());
        k
    }

    /// Users are at most 128 bytes (the validator's limit), so one length byte frames them.
    pub fn user_prefix(user: &str) -> Vec<u8> {
        let mut k = vec![BY_USER, user.len().min(255) as u8];
        k.extend_from_slice(user.as_bytes());
        k
    }

    /// `(sku, tag byte)` of a by-user key.
    pub fn parse_by_user(k: &[u8]) -> Option<(u32, u8)> {
        let len = *k.get(1)? as usize;
        let rest = k.get(2 + len..)?;
        if rest.len() != 5 {
            return None;
        }
        Some((u32::from_be_bytes(rest[..4].try_into().ok()?), rest[4]))
    }
}

/// The record after a subscribe at `epoch` (`existing`: the record before it).
pub(crate) fn subscribed(
    existing: Option<SubscriptionRecord>,
    user: &str,
    sku: u32,
    kind: &SubKind,
    epoch: u64,
    request_id: &str,
) -> SubscriptionRecord {
    let mut record = existing.unwrap_or(SubscriptionRecord {
        user: user.to_string(),
        sku,
        kind: kind.clone(),
        spans: Vec::new(),
        request_id: String::new(),
    });
    if !record.active() {
        record.spans.push(Span {
            since: epoch,
            until: None,
        });
        if record.spans.len() > SPANS_MAX {
            record.spans.remove(0);
        }
    }
    record.kind = kind.clone();
    record.request_id = request_id.to_string();
    record
}

/// The record after an unsubscribe at `epoch`; `None` when there was nothing open to close.
pub(crate) fn unsubscribed(
    existing: Option<SubscriptionRecord>,
    epoch: u64,
) -> Option<SubscriptionRecord> {
    let mut record = existing.filter(SubscriptionRecord::active)?;
    if let Some(span) = record.spans.last_mut() {
        span.until = Some(epoch);
    }
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_stands_from_the_epoch_after_it_is_made_through_the_one_that_ends_it() {
        let kind = SubKind::PriceDrop { below_cents: None };
        let r = subscribed(None, "u", 1, &kind, 10, "a");
        assert!(!r.live_at(10) && r.live_at(11) && r.live_at(1_000));
        let r = unsubscribed(Some(r), 20).unwrap();
        assert!(r.live_at(20) && !r.live_at(21) && !r.active());
        // Subscribing again opens a new span; the old one still answers for its epochs.
        let r = subscribed(Some(r), "u", 1, &kind, 30, "b");
        assert!(r.live_at(15) && !r.live_at(25) && r.live_at(31));
        // Subscribing while open only changes the parameters.
        let cheaper = SubKind::PriceDrop {
            below_cents: Some(5),
        };
        let r = subscribed(Some(r), "u", 1, &cheaper, 40, "c");
        assert_eq!((r.spans.len(), r.kind.clone()), (2, cheaper));
        assert!(unsubscribed(None, 5).is_none());
    }

    #[test]
    fn only_the_latest_spans_are_kept() {
        let kind = SubKind::PriceDrop { below_cents: None };
        let mut r = None;
        for e in 0..20u64 {
            let s = subscribed(r, "u", 1, &kind, e * 10, "x");
            r = unsubscribed(Some(s), e * 10 + 5);
        }
        assert_eq!(r.unwrap().spans.len(), SPANS_MAX);
    }

    #[test]
    fn a_shard_s_range_of_the_index_holds_exactly_its_users() {
        for shards in [1, 2, 3, 4, 7, 1000, BUCKETS] {
            let mut next = 0;
            for shard in 0..shards {
                let (lo, hi) = shard_buckets(shard, shards);
                assert_eq!(lo, next, "shards tile the buckets ({shard} of {shards})");
                assert!(hi > lo, "no shard is empty ({shard} of {shards})");
                next = hi;
            }
            assert_eq!(next, BUCKETS);
        }
        for i in 0..2000 {
            let user = format!("user-{i}");
            let key = key::subscription(9, SubTag::PriceDrop, &user);
            for shards in [1, 4, 5, 64] {
                let shard = user_shard(&user, shards);
                for s in 0..shards {
                    let (start, end) = key::shard_range(9, SubTag::PriceDrop, s, shards);
                    let inside = start <= key && key < end;
                    assert_eq!(inside, s == shard, "{user} in shard {s} of {shards}");
                }
            }
        }
        // The last shard's range ends where the SKU's next kind begins.
        let (_, end) = key::shard_range(9, SubTag::PriceDrop, 3, 4);
        assert_eq!(end, key::prefix(9, SubTag::BackInStock));
    }

    #[test]
    fn keys_frame_the_user() {
        let k = key::by_user("alice", 7, SubTag::BackInStock);
        assert_eq!(key::parse_by_user(&k), Some((7, 2)));
        assert!(k.starts_with(&key::user_prefix("alice")));
        assert!(!k.starts_with(&key::user_prefix("alic")));
    }
}
