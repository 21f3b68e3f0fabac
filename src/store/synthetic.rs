//! Synthetic data for benchmarks and size measurements: deterministic, realistic-looking
//! messages written straight into the schema in one transaction. Test and benchmark
//! tooling only; the daemon never calls it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use rusqlite::{TransactionBehavior, params};
use tracing::info;
use uuid::Uuid;

use super::codec::{channel_code, key_digest, request_code, status_code};
use super::{Result, Store, advance_conversation, conversation_id};
use crate::domain::{Channel, ChannelRequest, Status};

/// Where synthetic time starts when the store is empty (2020-09-13).
const EPOCH_MS: i64 = 1_600_000_000_000;

/// Common words (roughly by frequency: earlier ones are drawn more often) and a few
/// non-ASCII ones, so that the FTS index sees a realistic vocabulary.
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "I", "you", "to", "a", "and", "it", "is", "ok", "in", "me", "for", "that", "on",
    "be", "we", "at", "are", "have", "do", "so", "can", "see", "will", "just", "yes", "no",
    "my", "your", "what", "when", "now", "get", "time", "home", "going", "go", "later",
    "tomorrow", "today", "love", "thanks", "good", "night", "morning", "call", "there",
    "here", "back", "still", "not", "know", "like", "how", "was", "with", "this", "but",
    "if", "all", "up", "out", "about", "come", "want", "need", "think", "soon", "sure",
    "sorry", "okay", "lol", "haha", "great", "nice", "work", "office", "meeting", "train",
    "bus", "late", "early", "minutes", "hour", "dinner", "lunch", "coffee", "beer",
    "weekend", "friday", "saturday", "sunday", "monday", "party", "birthday", "mum", "dad",
    "kids", "school", "pick", "dog", "shopping", "milk", "bread", "eggs", "pizza", "movie",
    "tonight", "message", "phone", "battery", "charger", "address", "station", "airport",
    "flight", "delayed", "arrived", "leaving", "waiting", "outside", "parking", "car",
    "keys", "door", "doctor", "appointment", "pharmacy", "meds", "feeling", "better",
    "tired", "sleep", "happy", "congratulations", "remember", "forgot", "bring", "money",
    "pay", "bank", "transfer", "invoice", "package", "delivery", "code", "verification",
    "password", "account", "please", "confirm", "reply", "stop", "offer", "discount",
    "weather", "rain", "sunny", "cold", "hot", "beach", "holiday", "hotel", "booking",
    "ticket", "concert", "football", "match", "score", "won", "lost", "game", "gym", "run",
    "walk", "park", "garden", "kitchen", "cook", "recipe", "chocolate", "cake", "grüße",
    "café", "über", "straße", "naïve", "señor", "merci", "привет", "😊", "👍",
];

/// Fills a store with synthetic data for benchmarks: `messages` messages spread over
/// `conversations` peers (E.164 numbers), realistic text lengths (mostly 20-160 chars of
/// words, some long), mixed directions, statuses and read flags, increasing timestamps;
/// deterministic for a seed; fast (one transaction, prepared statements).
///
/// Timestamps start after the newest message already stored, so it can be called
/// again to grow a store. `conversations` = 0 counts as 1.
pub fn fill_synthetic(
    store: &mut Store,
    messages: u64,
    conversations: u32,
    seed: u64,
) -> Result<()> {
    let conversations = conversations.max(1);
    let mut rng = SplitMix64(seed);
    // The random-order indexes (uuid, dedupe and token digests) touch pages all over
    // the file: a bigger page cache for the fill keeps that in memory.
    let cache_size: i64 = store
        .conn
        .pragma_query_value(None, "cache_size", |row| row.get(0))?;
    store
        .conn
        .pragma_update(None, "cache_size", FILL_CACHE_SIZE)?;
    let filled = fill(store, messages, conversations, &mut rng);
    store.conn.pragma_update(None, "cache_size", cache_size)?;
    filled?;
    info!(messages, conversations, seed, "synthetic messages stored");
    Ok(())
}

/// Page cache during a fill, in KiB (negative: SQLite's unit for a size).
const FILL_CACHE_SIZE: i64 = -64 * 1024;

fn fill(store: &mut Store, messages: u64, conversations: u32, rng: &mut SplitMix64) -> Result<()> {
    let tx = store
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let newest: Option<i64> =
        tx.query_row("SELECT max(last_ts) FROM conversations", [], |row| {
            row.get(0)
        })?;
    let mut timestamp_ms = newest.map_or(EPOCH_MS, |ts| EPOCH_MS.max(ts.saturating_add(1)));
    // The FTS insert trigger makes every INSERT a multi-write statement, whose statement
    // savepoint flushes FTS5's pending terms each time: a one-row segment per message,
    // and most of the fill spent merging them. So the trigger is set aside for the
    // fill and the new bodies indexed in one statement at the end, all in this
    // transaction (DDL is transactional: a failure restores the trigger).
    let trigger: String = tx.query_row(
        "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = 'messages_fts_insert'",
        [],
        |row| row.get(0),
    )?;
    let indexed_up_to: i64 =
        tx.query_row("SELECT coalesce(max(seq), 0) FROM messages", [], |row| {
            row.get(0)
        })?;
    tx.execute_batch("DROP TRIGGER messages_fts_insert")?;
    // Per conversation index: (conversations.id, newest seq, its timestamp, unread added).
    let mut convs: HashMap<u32, (i64, i64, i64, i64)> = HashMap::new();
    {
        let mut insert = tx.prepare(
            "INSERT INTO messages (uuid, conv, outgoing, status, channel, timestamp_ms, \
             read, body, dedupe_hash, token_hash, requested, delivery_report, attempts, \
             sms_ref, error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        let mut text = String::new();
        for _ in 0..messages {
            timestamp_ms += 1 + rng.below(120_000) as i64;
            // Skewed: a few conversations hold most messages, as on a real phone.
            let u = rng.unit();
            let index = ((u * u * f64::from(conversations)) as u32).min(conversations - 1);
            let peer = peer_number(index);
            let entry = match convs.entry(index) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(slot) => slot.insert((conversation_id(&tx, &peer)?, 0, 0, 0)),
            };
            let conv = entry.0;
            random_text(rng, &mut text);
            let channel = if rng.below(10) < 6 {
                Channel::Sms
            } else {
                Channel::Ip
            };
            // Sets the version and variant bits of a v4 id.
            let uuid = uuid::Builder::from_random_bytes(rng.bytes16()).into_uuid();
            if rng.below(2) == 0 {
                let unread = rng.below(50) == 0;
                if unread {
                    entry.3 += 1;
                }
                let dedupe = match channel {
                    Channel::Sms => format!("sms:{peer}:{timestamp_ms}:{:016x}", rng.next()),
                    Channel::Ip => format!("ip:{peer}:{}", Uuid::from_bytes(rng.bytes16())),
                };
                insert.execute(params![
                    uuid.as_bytes(),
                    conv,
                    false,
                    status_code(Status::Received),
                    channel_code(channel),
                    timestamp_ms,
                    !unread,
                    text,
                    key_digest(&dedupe),
                    None::<[u8; 16]>,
                    None::<i64>,
                    None::<bool>,
                    None::<i64>,
                    None::<i64>,
                    None::<&str>,
                ])?;
            } else {
                let status = match rng.below(100) {
                    0..=84 => Status::Delivered,
                    85..=96 => Status::Sent,
                    _ => Status::Failed,
                };
                let token = (rng.below(2) == 0)
                    .then(|| key_digest(&Uuid::from_bytes(rng.bytes16()).to_string()));
                let sms_ref = (channel == Channel::Sms).then(|| rng.below(256) as i64);
                insert.execute(params![
                    uuid.as_bytes(),
                    conv,
                    true,
                    status_code(status),
                    channel_code(channel),
                    timestamp_ms,
                    true,
                    text,
                    None::<[u8; 16]>,
                    token,
                    request_code(ChannelRequest::Auto),
                    channel == Channel::Sms && rng.below(2) == 0,
                    1,
                    sms_ref,
                    (status == Status::Failed).then_some("no network"),
                ])?;
            }
            entry.1 = tx.last_insert_rowid();
            entry.2 = timestamp_ms;
        }
    }
    for &(conv, seq, ts, unread) in convs.values() {
        advance_conversation(&tx, conv, seq, ts, unread)?;
    }
    tx.execute(
        "INSERT INTO messages_fts (rowid, body) SELECT seq, body FROM messages WHERE seq > ?1",
        [indexed_up_to],
    )?;
    tx.execute_batch(&trigger)?;
    tx.commit()?;
    Ok(())
}

/// The E.164 number of synthetic conversation `index` (unique below ten million).
fn peer_number(index: u32) -> String {
    format!("+1555{index:07}")
}

/// Fills `out` with words: 90% 20-160 characters, 7% shorter, 3% long (161-1200).
fn random_text(rng: &mut SplitMix64, out: &mut String) {
    out.clear();
    let target = match rng.below(100) {
        0..=89 => 20 + rng.below(141),
        90..=96 => 2 + rng.below(18),
        _ => 161 + rng.below(1040),
    } as usize;
    while out.len() < target {
        if !out.is_empty() {
            out.push(' ');
        }
        // Squaring favours the front of the list: common words come up most.
        let u = rng.unit();
        let word = WORDS[((u * u * WORDS.len() as f64) as usize).min(WORDS.len() - 1)];
        if rng.below(40) == 0 {
            // Numbers: times, amounts, codes.
            out.push_str(&rng.below(100_000).to_string());
        } else {
            out.push_str(word);
        }
    }
    if rng.below(3) == 0 {
        out.push(['.', '!', '?'][rng.below(3) as usize]);
    }
}

/// SplitMix64: tiny, fast, and the same sequence on every platform and release.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the tiny modulo bias does not matter here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn bytes16(&mut self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.next().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next().to_le_bytes());
        bytes
    }
}
