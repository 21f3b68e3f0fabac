//! hub::access: registration (codes, their tries and limits), verification and login,
//! with the replacement of an older session of the same number.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::super::quota::{Bucket, Rate};
use super::super::secret;
use super::super::storage::Storage;
use super::super::{RelayConfig, Verify, clip, excerpt};
use super::core::{CodeJob, ConnId, Core, HubError, Link, Now, Out, Res, err, ms, not_e164};
use crate::relay::protocol::{ErrorCode, ErrorFrame, ServerFrame, is_e164};

/// `retry_after_ms` of a code request refused because every SMS command slot and
/// queue place is taken.
const SMS_BUSY_RETRY: Duration = Duration::from_secs(10);

/// How often, at most, the hub warns that the codes' total limit refuses requests, or
/// logs that one sender is over its quota.
pub(super) const LIMIT_WARN_EVERY: Duration = Duration::from_secs(60);

/// The limits on registration codes beyond those of each number: SMS commands at once,
/// codes per address and in total.
pub(super) struct CodeLimits {
    /// Running and waiting SMS commands.
    pub(super) pending: usize,
    pub(super) per_address: Option<Rate>,
    pub(super) by_address: HashMap<IpAddr, Bucket>,
    /// The total limit and its bucket.
    total: Option<(Rate, Bucket)>,
    /// When the total limit last made the hub warn.
    warned: Option<Instant>,
}

impl CodeLimits {
    pub(super) fn new(config: &RelayConfig, now: Instant) -> CodeLimits {
        let hour = Duration::from_secs(3600);
        CodeLimits {
            pending: 0,
            per_address: Rate::per(config.codes_per_address_per_hour.into(), hour),
            by_address: HashMap::new(),
            total: Rate::per(config.codes_per_hour.into(), hour)
                .map(|rate| (rate, Bucket::full(rate, now))),
            warned: None,
        }
    }
}

/// A `rate-limited` answer to `register`, to try again after `wait`.
fn limited(message: &str, wait: Duration) -> ErrorFrame {
    let mut error = err(ErrorCode::RateLimited, message, "register");
    error.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
    error
}

impl<S: Storage, L: Link> Core<S, L> {
    pub(super) fn register(&mut self, conn: ConnId, number: String) -> Res {
        if !is_e164(&number) {
            let message = not_e164(&number);
            self.fail(conn, err(ErrorCode::InvalidNumber, message, "register"));
            return Ok(());
        }
        let command = match &self.config.verify {
            Verify::None => return self.register_unverified(conn, number),
            Verify::SmsCommand(command) => command.clone(),
        };
        if self.conns.get(&conn).is_some_and(|c| c.sms_running) {
            let message = "a code is being sent on this connection";
            self.fail(conn, limited(message, Duration::from_secs(1)));
            return Ok(());
        }
        let now = self.now.ms;
        if let Some(code) = self.store.code(&number)? {
            let ready = code.sent_ms + ms(self.config.code_resend);
            if now < ready {
                let wait = Duration::from_millis(u64::try_from(ready - now).unwrap_or(0));
                self.fail(
                    conn,
                    limited("a code was sent to this number recently", wait),
                );
                return Ok(());
            }
        }
        if let Some(error) = self.code_refusal(conn) {
            self.fail(conn, error);
            return Ok(());
        }
        let code = secret::new_code()?;
        let expires_ms = now + ms(self.config.code_ttl);
        self.store
            .put_code(&number, &secret::code_hash(&number, &code), now, expires_ms)?;
        self.charge_code(conn);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sms_running = true;
        }
        self.codes.pending += 1;
        info!(%number, conn, pending = self.codes.pending, "sending a registration code");
        self.link.send_code(CodeJob {
            conn,
            command,
            number,
            code,
            expires_ms,
        });
        Ok(())
    }

    /// `register` on a relay that verifies nothing: a token at once, unless the number
    /// already holds one.
    fn register_unverified(&mut self, conn: ConnId, number: String) -> Res {
        let token = secret::new_token()?;
        let hash = secret::token_hash(&token);
        if self.store.create_account(&number, &hash, self.now.ms)? {
            warn!(%number, "registered WITHOUT verification (--verify none)");
            self.send(conn, ServerFrame::Registered { number, token });
        } else {
            let message = "this number already holds a token on another device, and \
                           this relay cannot verify numbers (--verify none)";
            self.fail(conn, err(ErrorCode::NumberTaken, message, "register"));
        }
        Ok(())
    }

    /// Why a code may not be sent now for `conn`, beyond its number's limits: every SMS
    /// command slot and queue place taken, or the limit of its address or the total one
    /// reached. Checks only; [`Core::charge_code`] counts a code that is sent.
    fn code_refusal(&mut self, conn: ConnId) -> Option<ErrorFrame> {
        let room = self.config.sms_concurrency + self.config.sms_queue;
        if self.codes.pending >= room {
            let pending = self.codes.pending;
            debug!(conn, pending, "code request refused: SMS commands busy");
            let message = "the relay is sending many codes; try again shortly";
            return Some(limited(message, SMS_BUSY_RETRY));
        }
        let now = self.now.at;
        let addr = self.conns.get(&conn)?.addr;
        if let Some(rate) = self.codes.per_address
            && let Some(bucket) = self.codes.by_address.get_mut(&addr)
        {
            let wait = bucket.wait(rate, now, 1);
            if !wait.is_zero() {
                info!(%addr, conn, "code request refused: too many from this address");
                let message = "too many codes were requested from this address";
                return Some(limited(message, wait));
            }
        }
        if let Some((rate, bucket)) = &mut self.codes.total {
            let wait = bucket.wait(*rate, now, 1);
            if !wait.is_zero() {
                let quiet = self
                    .codes
                    .warned
                    .is_some_and(|at| now.duration_since(at) < LIMIT_WARN_EVERY);
                if !quiet {
                    self.codes.warned = Some(now);
                    warn!(
                        per_hour = self.config.codes_per_hour,
                        "the relay's limit of codes per hour refuses code requests"
                    );
                }
                let message = "the relay has sent as many codes as it may for now";
                return Some(limited(message, wait));
            }
        }
        None
    }

    /// Counts a code about to be sent for `conn` against its address and the total.
    fn charge_code(&mut self, conn: ConnId) {
        let now = self.now.at;
        if let (Some(rate), Some(c)) = (self.codes.per_address, self.conns.get(&conn)) {
            self.codes
                .by_address
                .entry(c.addr)
                .or_insert_with(|| Bucket::full(rate, now))
                .take(rate, now, 1);
        }
        if let Some((rate, bucket)) = &mut self.codes.total {
            bucket.take(*rate, now, 1);
        }
    }

    /// The SMS command of a [`CodeJob`] finished: `Err` holds why it failed.
    pub(super) fn sms_done(
        &mut self,
        conn: ConnId,
        number: String,
        expires_ms: i64,
        result: Result<(), String>,
        now: Now,
    ) {
        self.now = now;
        self.codes.pending = self.codes.pending.saturating_sub(1);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sms_running = false;
        }
        match result {
            Ok(()) => {
                // The code's life began when it was made; it may have waited for a slot.
                let expires_in_ms = u64::try_from(expires_ms - now.ms).unwrap_or(0);
                let frame = ServerFrame::CodeSent {
                    number,
                    expires_in_ms,
                };
                self.send(conn, frame);
            }
            Err(cause) => {
                // The command's stderr is kept whole in the error: one escaped line.
                let cause = clip(&cause, 800);
                error!(%number, %cause, "cannot send the registration code");
                // A code nobody received must not hold the number's rate limit.
                if let Err(err) = self.store.delete_code(&number) {
                    error!(%number, cause = %err, "cannot delete an unsent code");
                }
                let message = "the relay could not send the code SMS";
                self.fail(conn, err(ErrorCode::SmsFailed, message, "register"));
            }
        }
    }

    pub(super) fn verify(&mut self, conn: ConnId, number: String, code: String) -> Res {
        if let Some(refusal) = self.check_code(&number, &code)? {
            self.fail(conn, refusal);
            return Ok(());
        }
        let token = secret::new_token()?;
        self.store
            .set_account(&number, &secret::token_hash(&token), self.now.ms)?;
        info!(%number, conn, "number verified; any earlier device token is void");
        if let Some(&old) = self.online.get(&number) {
            let message = "this number was registered on another device";
            self.fail(old, ErrorFrame::new(ErrorCode::Replaced, message));
        }
        self.send(conn, ServerFrame::Registered { number, token });
        Ok(())
    }

    /// Why `code` does not prove `number` (counting a wrong try), or `None` if it does.
    fn check_code(&mut self, number: &str, code: &str) -> Result<Option<ErrorFrame>, HubError> {
        let refuse = |code, message: &str| Some(err(code, message, "verify"));
        if !is_e164(number) {
            return Ok(refuse(ErrorCode::InvalidNumber, &not_e164(number)));
        }
        if self.config.verify == Verify::None {
            let message = "this relay sends no codes (--verify none)";
            return Ok(refuse(ErrorCode::NoCode, message));
        }
        let Some(pending) = self.store.code(number)? else {
            return Ok(refuse(
                ErrorCode::NoCode,
                "no code is pending for this number",
            ));
        };
        if self.now.ms >= pending.expires_ms {
            let message = "the code expired; ask for a new one";
            return Ok(refuse(ErrorCode::CodeExpired, message));
        }
        let max = self.config.code_attempts;
        let too_many = "too many wrong tries; ask for a new code";
        if pending.attempts >= max {
            return Ok(refuse(ErrorCode::TooManyAttempts, too_many));
        }
        if secret::same(&secret::code_hash(number, code), &pending.code_hash) {
            return Ok(None);
        }
        let attempts = self.store.count_attempt(number)?;
        warn!(%number, attempts, "wrong registration code");
        if attempts >= max {
            return Ok(refuse(ErrorCode::TooManyAttempts, too_many));
        }
        let mut error = err(ErrorCode::CodeInvalid, "wrong code", "verify");
        error.attempts_left = Some(max - attempts);
        Ok(Some(error))
    }

    pub(super) fn login(&mut self, conn: ConnId, number: String, token: String) -> Res {
        let known = if is_e164(&number) {
            self.store.token_hash(&number)?
        } else {
            None
        };
        let valid = known.is_some_and(|hash| secret::same(&hash, &secret::token_hash(&token)));
        if !valid {
            // Logged before it is known to be a number: only as an excerpt.
            let number = excerpt(&number);
            warn!(%number, conn, "login refused");
            let message = "unknown number or wrong token";
            self.fail(conn, err(ErrorCode::AuthFailed, message, "login"));
            return Ok(());
        }
        let queued = self.store.pending_count(&number)?;
        let old = self.online.insert(number.clone(), conn);
        let mut typing_to = None;
        if let Some(old) = old.filter(|&old| old != conn) {
            typing_to = self
                .conns
                .get(&old)
                .and_then(|c| c.typing.as_ref())
                .map(|(to, _)| to.clone());
            // `online` already points to the new connection: no offline blip.
            let message = "logged in again from another connection";
            self.fail(old, ErrorFrame::new(ErrorCode::Replaced, message));
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            self.online.remove(&number);
            return Ok(());
        };
        c.number = Some(number.clone());
        self.push(conn, Out::LoggedIn);
        info!(%number, conn, queued, "online");
        let frame = ServerFrame::LoggedIn {
            number: number.clone(),
            queued,
        };
        self.send(conn, frame);
        self.fill_window(conn)?;
        self.send_owed(conn)?;
        match (old, typing_to) {
            // Already online on the connection it replaces: only the typing state ended.
            (Some(_), Some(to)) => self.push_to_number(&to, &number),
            (Some(_), None) => {}
            (None, _) => self.broadcast(&number),
        }
        Ok(())
    }
}
