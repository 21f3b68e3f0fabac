//! The daemon's relay client (`tandem::relay::client`) run alone in a task, driven through
//! its channels as the engine drives it: commands in, events out, each event kept for
//! failure messages.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tandem::domain::RelayState;
use tandem::logind::Sleep;
use tandem::net::ConnectivityWatch;
use tandem::relay::client::{
    ClientConfig, Confirmation, Delivery, Placement, PresenceReport, Refusal, RelayCommand,
    RelayEvent, Revocation, SendAnswer,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::WAIT;

/// A client of the relay at `url` keeping its token in `token_path`, with short backoffs.
pub fn client_config(url: &str, token_path: &Path) -> ClientConfig {
    ClientConfig {
        url: url.to_owned(),
        token_path: token_path.to_owned(),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
    }
}

pub struct RelayClient {
    name: &'static str,
    commands: mpsc::Sender<RelayCommand>,
    events: mpsc::Receiver<RelayEvent>,
    /// Where logind's notices go, for a client started with [`RelayClient::start_sleeping`].
    sleep: Option<mpsc::Sender<Sleep>>,
    task: JoinHandle<()>,
    /// Every event received, for failure messages.
    pub seen: Vec<RelayEvent>,
}

impl RelayClient {
    pub fn start(name: &'static str, config: ClientConfig) -> RelayClient {
        RelayClient::start_with(name, config, None)
    }

    /// A client reading connectivity from the network adapter on `system`, as the daemon
    /// starts them side by side.
    pub fn start_with(
        name: &'static str,
        config: ClientConfig,
        system: Option<zbus::Connection>,
    ) -> RelayClient {
        let net = system.map(tandem::net::spawn);
        RelayClient::spawn(name, None, |commands, events| {
            tandem::relay::client::run(config, commands, events, net)
        })
    }

    pub fn start_tls(
        name: &'static str,
        config: ClientConfig,
        tls: Arc<rustls::ClientConfig>,
    ) -> RelayClient {
        RelayClient::spawn(name, None, |commands, events| {
            tandem::relay::client::run_with_tls(config, tls, commands, events, None)
        })
    }

    /// A client told of sleep and resume (see [`RelayClient::sleep`]).
    pub fn start_sleeping(
        name: &'static str,
        config: ClientConfig,
        net: Option<ConnectivityWatch>,
    ) -> RelayClient {
        let (sleep, sleep_rx) = mpsc::channel(4);
        RelayClient::spawn(name, Some(sleep), |commands, events| {
            tandem::relay::client::run_with_sleep(config, commands, events, net, sleep_rx)
        })
    }

    fn spawn<F>(
        name: &'static str,
        sleep: Option<mpsc::Sender<Sleep>>,
        run: impl FnOnce(mpsc::Receiver<RelayCommand>, mpsc::Sender<RelayEvent>) -> F,
    ) -> RelayClient
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (commands, commands_rx) = mpsc::channel(16);
        let (events_tx, events) = mpsc::channel(16);
        let task = tokio::spawn(run(commands_rx, events_tx));
        RelayClient {
            name,
            commands,
            events,
            sleep,
            task,
            seen: Vec::new(),
        }
    }

    pub async fn cmd(&self, command: RelayCommand) {
        self.commands.send(command).await.expect("the client runs");
    }

    /// The own number becomes `number`.
    pub async fn own_number(&self, number: &str) {
        self.cmd(RelayCommand::OwnNumber(Some(number.to_owned())))
            .await;
    }

    pub async fn send(&self, id: &str, to: &str, text: &str) {
        self.cmd(RelayCommand::Send {
            id: id.into(),
            to: to.into(),
            text: text.into(),
            ts: 1_700_000_000_000,
        })
        .await;
    }

    pub async fn ack(&self, from: &str, id: &str) {
        self.cmd(RelayCommand::Ack {
            from: from.into(),
            id: id.into(),
        })
        .await;
    }

    pub async fn revoke(&self, id: &str) {
        self.cmd(RelayCommand::Revoke { id: id.into() }).await;
    }

    pub async fn subscribe(&self, numbers: &[&str]) {
        let numbers = numbers.iter().map(|&n| n.into()).collect();
        self.cmd(RelayCommand::Subscribe { numbers }).await;
    }

    pub async fn typing(&self, to: &str, active: bool) {
        let to = to.into();
        self.cmd(RelayCommand::Typing { to, active }).await;
    }

    /// The next event, whatever it is.
    pub async fn next(&mut self) -> RelayEvent {
        let event = tokio::time::timeout(WAIT, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no event in time; seen {:?}", self.name, self.seen))
            .unwrap_or_else(|| panic!("{}: the client stopped", self.name));
        self.seen.push(event.clone());
        event
    }

    /// Waits for the first event `pick` accepts, skipping others.
    pub async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&RelayEvent) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => panic!("{}: the client stopped while waiting for {what}", self.name),
                Err(_) => panic!("{}: no {what} in time; seen {:?}", self.name, self.seen),
            };
            self.seen.push(event.clone());
            if let Some(value) = pick(&event) {
                return value;
            }
        }
    }

    /// Waits for the first event `want` holds of, skipping others.
    pub async fn until(&mut self, what: &str, want: impl Fn(&RelayEvent) -> bool) {
        self.expect(what, |e| want(e).then_some(())).await;
    }

    /// Waits for the first event `is` holds of, skipping others; that event.
    pub async fn first(&mut self, what: &str, is: impl Fn(&RelayEvent) -> bool) -> RelayEvent {
        self.expect(what, |e| is(e).then(|| e.clone())).await
    }

    /// Asserts that no event `bad` accepts comes within `wait` (others are skipped).
    pub async fn never(&mut self, wait: Duration, what: &str, bad: impl Fn(&RelayEvent) -> bool) {
        let deadline = Instant::now() + wait;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            self.seen.push(event.clone());
            assert!(!bad(&event), "{}: unexpected {what}: {event:?}", self.name);
        }
    }

    pub async fn state(&mut self, state: RelayState) {
        self.until(&format!("state {state:?}"), |e| {
            *e == RelayEvent::State(state)
        })
        .await;
    }

    /// Waits for `Online`, then `LoggedIn`; its `queued` count.
    pub async fn logged_in(&mut self) -> u32 {
        self.state(RelayState::Online).await;
        self.expect("LoggedIn", |e| match e {
            RelayEvent::LoggedIn { queued } => Some(*queued),
            _ => None,
        })
        .await
    }

    pub async fn send_answer(&mut self, id: &str) -> SendAnswer {
        self.expect(&format!("the answer to send {id}"), |e| match e {
            RelayEvent::SendAnswer { id: got, answer } if got == id => Some(answer.clone()),
            _ => None,
        })
        .await
    }

    pub async fn revoke_answer(&mut self, id: &str) -> Option<Revocation> {
        self.expect(&format!("the answer to revoke {id}"), |e| match e {
            RelayEvent::RevokeAnswer { id: got, outcome } if got == id => Some(*outcome),
            _ => None,
        })
        .await
    }

    /// Expects the answer to send `id` to be an acceptance, whatever its placement.
    pub async fn accepted(&mut self, id: &str) {
        let answer = self.send_answer(id).await;
        assert!(
            matches!(answer, SendAnswer::Accepted { .. }),
            "{}: send {id} answered {answer:?}",
            self.name
        );
    }

    /// Expects the answer to send `id` to be an acceptance; where the message is, and
    /// whether it was a duplicate.
    pub async fn placed(&mut self, id: &str) -> (Placement, bool) {
        match self.send_answer(id).await {
            SendAnswer::Accepted { state, duplicate } => (state, duplicate),
            other => panic!("{}: send {id} answered {other:?}", self.name),
        }
    }

    /// Waits for the receipt of `id`; to whom, and its outcome.
    pub async fn receipt(&mut self, id: &str) -> (String, Delivery) {
        self.expect(&format!("Receipt {id}"), |e| match e {
            RelayEvent::Receipt {
                id: got,
                to,
                outcome,
            } if got == id => Some((to.to_string(), *outcome)),
            _ => None,
        })
        .await
    }

    /// Waits for the first event of `expected`'s kind, which must be `expected`.
    pub async fn next_like(&mut self, expected: RelayEvent) {
        let kind = std::mem::discriminant(&expected);
        let what = format!("{expected:?}");
        let got = self
            .first(&what, |e| std::mem::discriminant(e) == kind)
            .await;
        assert_eq!(got, expected, "{}", self.name);
    }

    /// Expects the answer to send `id` to be a refusal; its reason.
    pub async fn refused(&mut self, id: &str) -> Refusal {
        match self.send_answer(id).await {
            SendAnswer::Refused { reason, .. } => reason,
            other => panic!("{}: send {id} answered {other:?}", self.name),
        }
    }

    /// Waits for the relay's `code-sent`; the number the code went to.
    pub async fn awaiting_code(&mut self) -> String {
        self.expect("AwaitingCode", |e| match e {
            RelayEvent::AwaitingCode { number } => Some(number.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the delivery of `id`; the number it came from.
    pub async fn delivered(&mut self, id: &str) -> String {
        self.expect(&format!("Deliver {id}"), |e| match e {
            RelayEvent::Deliver { from, id: got, .. } if got == id => Some(from.to_string()),
            _ => None,
        })
        .await
    }

    /// Waits for the confirmation of our ack of `id`; its outcome.
    pub async fn confirmed(&mut self, id: &str) -> Confirmation {
        self.expect(&format!("Confirm {id}"), |e| match e {
            RelayEvent::Confirm {
                id: got, outcome, ..
            } if got == id => Some(*outcome),
            _ => None,
        })
        .await
    }

    /// Waits for a presence snapshot.
    pub async fn snapshot(&mut self) -> Vec<PresenceReport> {
        self.expect("Snapshot", |e| match e {
            RelayEvent::Snapshot(entries) => Some(entries.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for a presence change (`what` names it in a failure).
    pub async fn presence(&mut self, what: &str) -> PresenceReport {
        self.expect(what, |e| match e {
            RelayEvent::Presence(entry) => Some(entry.clone()),
            _ => None,
        })
        .await
    }

    /// Whether an event was seen so far that `is` holds of.
    pub fn saw(&self, is: impl Fn(&RelayEvent) -> bool) -> bool {
        self.seen.iter().any(is)
    }

    /// How many `Connecting` states were seen so far: the attempts to dial.
    pub fn attempts(&self) -> usize {
        let connecting = RelayEvent::State(RelayState::Connecting);
        self.seen.iter().filter(|e| **e == connecting).count()
    }

    /// Tells it the system prepares for sleep; waits for its answer (the session closed).
    pub async fn sleep(&self) {
        let (closed, answer) = oneshot::channel();
        self.tell(Sleep::Preparing { closed }).await;
        tokio::time::timeout(WAIT, answer)
            .await
            .expect("the client answers in time")
            .expect("the client answers");
    }

    /// Tells it the system resumed.
    pub async fn resume(&self) {
        self.tell(Sleep::Resumed).await;
    }

    async fn tell(&self, notice: Sleep) {
        let sleep = self.sleep.as_ref().expect("a client told of sleep");
        sleep.send(notice).await.expect("the client runs");
    }

    /// No one tells it of sleep any more (logind's task ended).
    pub fn deaf_to_sleep(&mut self) {
        self.sleep = None;
    }

    /// Closes the command channel (and the sleep notices') and waits for the task to end.
    pub async fn stop(self) {
        let RelayClient {
            commands,
            sleep,
            task,
            ..
        } = self;
        drop((commands, sleep));
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the client stops when its commands close")
            .expect("the client task does not panic");
    }
}

/// A client for `number` on `url`, logged in.
pub async fn online(name: &'static str, url: &str, token: &Path, number: &str) -> RelayClient {
    let mut client = RelayClient::start(name, client_config(url, token));
    client.own_number(number).await;
    client.logged_in().await;
    client
}
