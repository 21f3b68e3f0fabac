//! Synthetic history for benchmarks and size measurements: deterministic,
//! realistic-looking messages, written through the store's bulk import
//! ([`Store::import`]). Benchmark and test tooling only; the daemon never calls it.

use uuid::Uuid;

use crate::domain::{Channel, Direction, Status};
use crate::store::{ImportedMessage, Result, Store};

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
pub fn fill(store: &mut Store, messages: u64, conversations: u32, seed: u64) -> Result<()> {
    let newest = store.newest_activity_ms()?;
    let start = newest.map_or(EPOCH_MS, |ts| EPOCH_MS.max(ts.saturating_add(1)));
    let history = Synthetic {
        rng: SplitMix64(seed),
        left: messages,
        conversations: conversations.max(1),
        timestamp_ms: start,
    };
    store.import(history)?;
    Ok(())
}

/// The generator: an iterator of messages in arrival order.
struct Synthetic {
    rng: SplitMix64,
    left: u64,
    conversations: u32,
    timestamp_ms: i64,
}

impl Iterator for Synthetic {
    type Item = ImportedMessage;

    fn next(&mut self) -> Option<ImportedMessage> {
        self.left = self.left.checked_sub(1)?;
        let rng = &mut self.rng;
        self.timestamp_ms += 1 + rng.below(120_000) as i64;
        let timestamp_ms = self.timestamp_ms;
        // Skewed: a few conversations hold most messages, as on a real phone.
        let u = rng.unit();
        let conversations = self.conversations;
        let index = ((u * u * f64::from(conversations)) as u32).min(conversations - 1);
        let peer = peer_number(index);
        let mut text = String::new();
        random_text(rng, &mut text);
        let channel = if rng.below(10) < 6 {
            Channel::Sms
        } else {
            Channel::Ip
        };
        // Sets the version and variant bits of a v4 id.
        let id = uuid::Builder::from_random_bytes(rng.bytes16()).into_uuid();
        let mut message = ImportedMessage {
            id,
            peer,
            direction: Direction::Incoming,
            status: Status::Received,
            channel,
            timestamp_ms,
            read: true,
            text,
            dedupe_key: None,
            token: None,
            delivery_report: false,
            sms_ref: None,
            error: None,
        };
        if rng.below(2) == 0 {
            message.read = rng.below(50) != 0;
            let peer = &message.peer;
            message.dedupe_key = Some(match channel {
                Channel::Sms => format!("sms:{peer}:{timestamp_ms}:{:016x}", rng.next()),
                Channel::Ip => format!("ip:{peer}:{}", Uuid::from_bytes(rng.bytes16())),
            });
        } else {
            message.direction = Direction::Outgoing;
            message.status = match rng.below(100) {
                0..=84 => Status::Delivered,
                85..=96 => Status::Sent,
                _ => Status::Failed,
            };
            message.token =
                (rng.below(2) == 0).then(|| Uuid::from_bytes(rng.bytes16()).to_string());
            message.sms_ref = (channel == Channel::Sms).then(|| rng.below(256) as i64);
            message.delivery_report = channel == Channel::Sms && rng.below(2) == 0;
            message.error = (message.status == Status::Failed).then(|| "no network".to_owned());
        }
        Some(message)
    }
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
