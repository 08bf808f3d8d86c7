//! The supervision of one runner as a pure state machine: every event (a
//! crash, `Running`, `restart/cmd`, a deadline, the shutdown) is a method
//! that changes the state and returns the [`Action`]s the shell carries
//! out. Nothing here does I/O or reads the clock: `now` and the jitter's
//! random draw are parameters, so the tests run on paused time with no
//! broker.

use tokio::time::Instant;

use crate::config::RestartPolicy;
use crate::protocol::{Status, StatusReport};
use crate::runners::restart::{Decision, RestartTracker};

/// Where a runner stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No task and none due: not started yet, ended cleanly, stopped by the
    /// shutdown, or left to another server.
    Stopped,
    /// A runner task is alive (initializing or running). `restart`: the
    /// supervisor stopped it to start it again once it has ended.
    Live { restart: bool },
    /// Waiting to start again at `deadline`, the `attempt`-th consecutive
    /// restart.
    Backoff { deadline: Instant, attempt: u32 },
    /// The restart policy gave up; a `restart/cmd` revives it.
    Failed,
}

/// What the shell does for a runner, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish this status (retained, if this server serves the runner).
    Publish(StatusReport),
    /// Build a driver and start a runner task; `restart` when it counts as
    /// a restart (a fresh driver is built then). The shell reports back
    /// with [`Slot::launched`] or [`Slot::launch_failed`].
    Launch { restart: bool },
    /// Cancel the live task's stop token.
    Stop,
    /// Answer the commands reaching the runner's mailbox (it failed).
    Refuse,
    /// Stop answering them: the mailbox goes to a runner, or the runner to
    /// another server.
    StopRefusing,
    /// Close the runner's mailbox: it ended for good (or another server
    /// serves it), so its commands are no longer taken here.
    CloseMailbox,
}

/// How a runner task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Clean,
    Crashed { cause: String },
}

/// One runner's supervision state.
#[derive(Debug)]
pub struct Slot {
    policy: RestartPolicy,
    tracker: RestartTracker,
    state: State,
    /// Restarts since the server started.
    restarts: u32,
    /// Starts so far; tells stale reports apart.
    generation: u64,
    /// Which consecutive restart the last one scheduled was.
    attempt: u32,
    /// The cause of the last crash, shown until the runner runs again.
    last_cause: Option<String>,
    /// Said again after the supervisor reconnects to the broker.
    last_status: Option<StatusReport>,
}

impl Slot {
    pub fn new(policy: RestartPolicy) -> Slot {
        Slot {
            policy,
            tracker: RestartTracker::new(),
            state: State::Stopped,
            restarts: 0,
            generation: 0,
            attempt: 0,
            last_cause: None,
            last_status: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a runner task is alive.
    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Live { .. })
    }

    /// When a restart is due, if one is.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Backoff { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// This server has come to own the runner: start it, once the task
    /// stopped when it was lost has ended if it has not yet.
    pub fn on_owned(&mut self) -> Vec<Action> {
        match &mut self.state {
            State::Live { restart } => {
                *restart = true;
                Vec::new()
            }
            _ => vec![Action::Launch { restart: false }],
        }
    }

    /// A runner task started; returns its generation.
    pub fn launched(&mut self, restart: bool) -> (u64, Vec<Action>) {
        self.generation += 1;
        if restart {
            self.restarts += 1;
        }
        self.state = State::Live { restart: false };
        (
            self.generation,
            vec![Action::StopRefusing, self.publish(Status::Initializing)],
        )
    }

    /// The driver could not be built: a crash. A restart is counted, as the
    /// attempt was made.
    pub fn launch_failed(
        &mut self,
        restart: bool,
        cause: String,
        now: Instant,
        random: f64,
    ) -> Vec<Action> {
        if restart {
            self.restarts += 1;
        }
        self.on_crash(cause, now, random)
    }

    /// The live task ended. `serving`: this server still serves the runner.
    pub fn on_ended(
        &mut self,
        ending: Ending,
        serving: bool,
        now: Instant,
        random: f64,
    ) -> Vec<Action> {
        let State::Live { restart } = self.state else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        if ending == Ending::Clean && !restart {
            // A runner that ends for good gives up its mailbox; one stopped
            // by the supervisor left it open, in case it was for a restart.
            actions.push(Action::CloseMailbox);
        }
        self.state = State::Stopped;
        if !serving {
            return actions;
        }
        match ending {
            _ if restart => actions.push(Action::Launch { restart: true }),
            Ending::Clean => actions.push(self.publish(Status::Stopped)),
            Ending::Crashed { cause } => actions.extend(self.on_crash(cause, now, random)),
        }
        actions
    }

    /// `Panicking`, then a restart scheduled or `Failed`.
    fn on_crash(&mut self, cause: String, now: Instant, random: f64) -> Vec<Action> {
        self.last_cause = Some(cause);
        let mut actions = vec![self.publish(Status::Panicking)];
        match self.tracker.crashed(&self.policy, now, random) {
            Decision::Restart { attempt, delay } => {
                self.attempt = attempt;
                // A revived runner whose driver cannot be built backs off
                // like any other: commands wait for the next start.
                actions.push(Action::StopRefusing);
                self.state = State::Backoff {
                    deadline: now + delay,
                    attempt,
                };
                let mut report = self.status(Status::Restarting);
                report.next_restart_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                actions.push(self.record(report));
                if delay.is_zero() {
                    // Started in the same turn, not on a timer: its
                    // statuses leave together.
                    self.state = State::Stopped;
                    actions.push(Action::Launch { restart: true });
                }
            }
            Decision::GiveUp => {
                self.state = State::Failed;
                actions.push(Action::Refuse);
                actions.push(self.publish(Status::Failed));
            }
        }
        actions
    }

    /// Which consecutive restart the last one scheduled was (1 for the
    /// first after a run of `reset_after`).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The runner of `generation` takes commands; `reconnected` when it
    /// says so again after a broker outage. Reports of an earlier start are
    /// stale and ignored.
    pub fn on_running(&mut self, generation: u64, reconnected: bool, now: Instant) -> Vec<Action> {
        if generation != self.generation || !self.is_live() {
            return Vec::new();
        }
        if reconnected {
            // The broker may have lost `Running`: say it again, unless the
            // runner is not running (any more).
            return match self.last_status.clone() {
                Some(mut last) if last.status == Status::Running => {
                    last.pza_id = None;
                    vec![self.record(last)]
                }
                _ => Vec::new(),
            };
        }
        self.tracker.running(now);
        self.last_cause = None;
        vec![self.publish(Status::Running)]
    }

    /// A deadline passed: start the runner again if its restart is due.
    pub fn due(&mut self, now: Instant) -> Vec<Action> {
        match self.state {
            State::Backoff { deadline, .. } if deadline <= now => {
                self.state = State::Stopped;
                vec![Action::Launch { restart: true }]
            }
            _ => Vec::new(),
        }
    }

    /// `restart/cmd`: restart now from the first delay, reviving a `Failed`
    /// runner. The one reply is `Restarting` with the command's `pza_id`
    /// and `next_restart_ms: 0`.
    pub fn on_restart_cmd(&mut self, pza_id: Option<String>) -> Vec<Action> {
        self.tracker.reset();
        let mut report = self.status(Status::Restarting);
        report.pza_id = pza_id;
        report.next_restart_ms = Some(0);
        match &mut self.state {
            State::Live { restart } => {
                *restart = true;
                vec![Action::Stop, self.record(report)]
            }
            _ => {
                self.state = State::Stopped;
                vec![self.record(report), Action::Launch { restart: true }]
            }
        }
    }

    /// Another server serves the runner now: stop it here, silently (its
    /// status topic is the other server's).
    pub fn on_lost(&mut self) -> Vec<Action> {
        match self.state {
            State::Live { .. } => vec![Action::StopRefusing, Action::Stop],
            _ => {
                self.state = State::Stopped;
                vec![Action::StopRefusing]
            }
        }
    }

    /// The shutdown began: a pending restart is dropped. A live task is
    /// stopped by the shutdown token itself and reported by
    /// [`Slot::on_ended_in_shutdown`].
    pub fn on_shutdown(&mut self) -> Vec<Action> {
        match self.state {
            State::Live { .. } | State::Stopped => Vec::new(),
            State::Backoff { .. } | State::Failed => {
                self.state = State::Stopped;
                vec![self.publish(Status::Stopped)]
            }
        }
    }

    /// The live task ended during the shutdown.
    pub fn on_ended_in_shutdown(&mut self) -> Vec<Action> {
        self.state = State::Stopped;
        vec![self.publish(Status::Stopped)]
    }

    /// After the connection came back: the last status, to say again. Not
    /// `Running`: the runner says it again itself (see [`Slot::on_running`])
    /// once it has published its retained state again, so that its state is
    /// on the broker before its `Running`, as at a start.
    pub fn on_reconnected(&mut self) -> Vec<Action> {
        match self.last_status.clone() {
            Some(mut last) if last.status != Status::Running => {
                // Said again, it answers no command.
                last.pza_id = None;
                vec![self.record(last)]
            }
            _ => Vec::new(),
        }
    }

    fn status(&self, status: Status) -> StatusReport {
        let mut report = StatusReport::new(status, self.restarts);
        if matches!(
            status,
            Status::Panicking | Status::Restarting | Status::Failed
        ) {
            report.panic_message = self.last_cause.clone();
        }
        report
    }

    fn publish(&mut self, status: Status) -> Action {
        let report = self.status(status);
        self.record(report)
    }

    fn record(&mut self, report: StatusReport) -> Action {
        self.last_status = Some(report.clone());
        Action::Publish(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::advance;

    const NO_JITTER: f64 = 0.0;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_retries: 2,
            ..crate::runners::restart::test_policy()
        }
    }

    fn statuses(actions: &[Action]) -> Vec<Status> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish(report) => Some(report.status),
                _ => None,
            })
            .collect()
    }

    fn report(actions: &[Action], status: Status) -> StatusReport {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Publish(report) if report.status == status => Some(report.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {status:?} in {actions:?}"))
    }

    fn crash(cause: &str) -> Ending {
        Ending::Crashed {
            cause: cause.into(),
        }
    }

    /// A slot whose runner was started (first start) and is running.
    fn running_slot() -> Slot {
        let mut slot = Slot::new(policy());
        assert_eq!(slot.on_owned(), vec![Action::Launch { restart: false }]);
        let (generation, actions) = slot.launched(false);
        assert_eq!(statuses(&actions), vec![Status::Initializing]);
        assert_eq!(
            statuses(&slot.on_running(generation, false, Instant::now())),
            vec![Status::Running]
        );
        slot
    }

    /// Crashes the live runner, waits out the backoff and starts it again;
    /// returns the new start's generation.
    async fn crash_and_restart(slot: &mut Slot, cause: &str) -> u64 {
        slot.on_ended(crash(cause), true, Instant::now(), NO_JITTER);
        let deadline = slot.deadline().expect("a restart is due");
        tokio::time::sleep_until(deadline).await;
        assert_eq!(
            slot.due(Instant::now()),
            vec![Action::Launch { restart: true }]
        );
        slot.launched(true).0
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_backs_off_then_restarts_at_the_deadline() {
        let mut slot = running_slot();
        let actions = slot.on_ended(crash("boom"), true, Instant::now(), NO_JITTER);
        assert_eq!(
            statuses(&actions),
            vec![Status::Panicking, Status::Restarting]
        );
        let restarting = report(&actions, Status::Restarting);
        assert_eq!(restarting.next_restart_ms, Some(100));
        assert_eq!(restarting.panic_message.as_deref(), Some("boom"));
        let deadline = slot.deadline().expect("a restart is due");
        assert_eq!(deadline, Instant::now() + Duration::from_millis(100));
        advance(Duration::from_millis(99)).await;
        assert!(slot.due(Instant::now()).is_empty(), "not due yet");
        advance(Duration::from_millis(1)).await;
        assert_eq!(
            slot.due(Instant::now()),
            vec![Action::Launch { restart: true }]
        );
        let (_, actions) = slot.launched(true);
        assert_eq!(report(&actions, Status::Initializing).restarts, 1);
    }

    /// With no delay, the restart is launched in the same turn as the
    /// crash's statuses (no timer), so that they leave together.
    #[tokio::test(start_paused = true)]
    async fn a_zero_delay_restarts_in_the_same_turn() {
        let mut slot = Slot::new(RestartPolicy {
            initial_delay: Duration::ZERO,
            ..policy()
        });
        assert_eq!(slot.on_owned(), vec![Action::Launch { restart: false }]);
        let (generation, _) = slot.launched(false);
        slot.on_running(generation, false, Instant::now());
        let actions = slot.on_ended(crash("boom"), true, Instant::now(), NO_JITTER);
        assert_eq!(
            statuses(&actions),
            vec![Status::Panicking, Status::Restarting]
        );
        assert_eq!(
            report(&actions, Status::Restarting).next_restart_ms,
            Some(0)
        );
        assert_eq!(actions.last(), Some(&Action::Launch { restart: true }));
        assert_eq!(slot.deadline(), None, "no timer armed");
        let (_, actions) = slot.launched(true);
        assert_eq!(report(&actions, Status::Initializing).restarts, 1);
        // The policy still counts: with `max_retries: 2`, the third crash
        // in a row gives up.
        slot.on_running(slot.generation, false, Instant::now());
        let actions = slot.on_ended(crash("boom"), true, Instant::now(), NO_JITTER);
        assert_eq!(actions.last(), Some(&Action::Launch { restart: true }));
        slot.launched(true);
        slot.on_running(slot.generation, false, Instant::now());
        let actions = slot.on_ended(crash("boom"), true, Instant::now(), NO_JITTER);
        assert_eq!(statuses(&actions), vec![Status::Panicking, Status::Failed]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_policy_gives_up_and_the_failed_runner_refuses_commands() {
        let mut slot = running_slot();
        for _ in 0..2 {
            crash_and_restart(&mut slot, "boom").await;
        }
        let actions = slot.on_ended(crash("boom"), true, Instant::now(), NO_JITTER);
        assert_eq!(
            actions,
            vec![
                Action::Publish(report(&actions, Status::Panicking)),
                Action::Refuse,
                Action::Publish(report(&actions, Status::Failed)),
            ]
        );
        assert_eq!(slot.state(), State::Failed);
        assert_eq!(slot.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_backoff_drops_the_restart_and_says_stopped() {
        let mut slot = running_slot();
        slot.on_ended(crash("boom"), true, Instant::now(), NO_JITTER);
        assert!(matches!(slot.state(), State::Backoff { attempt: 1, .. }));
        assert_eq!(statuses(&slot.on_shutdown()), vec![Status::Stopped]);
        assert_eq!(slot.state(), State::Stopped);
        advance(Duration::from_secs(10)).await;
        assert!(
            slot.due(Instant::now()).is_empty(),
            "the restart was dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_while_live_waits_for_the_task_then_says_stopped() {
        let mut slot = running_slot();
        assert!(slot.on_shutdown().is_empty(), "the shutdown token stops it");
        assert!(slot.is_live());
        assert_eq!(
            statuses(&slot.on_ended_in_shutdown()),
            vec![Status::Stopped]
        );
        assert_eq!(slot.state(), State::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn restart_cmd_in_backoff_restarts_now_from_the_first_delay() {
        let mut slot = running_slot();
        crash_and_restart(&mut slot, "one").await;
        slot.on_ended(crash("two"), true, Instant::now(), NO_JITTER);
        assert!(matches!(slot.state(), State::Backoff { attempt: 2, .. }));
        let actions = slot.on_restart_cmd(Some("id-1".into()));
        assert_eq!(
            actions,
            vec![
                Action::Publish(report(&actions, Status::Restarting)),
                Action::Launch { restart: true },
            ]
        );
        let reply = report(&actions, Status::Restarting);
        assert_eq!(reply.pza_id.as_deref(), Some("id-1"));
        assert_eq!(reply.next_restart_ms, Some(0));
        assert_eq!(slot.deadline(), None, "the pending deadline is dropped");
        slot.launched(true);
        let actions = slot.on_ended(crash("three"), true, Instant::now(), NO_JITTER);
        assert_eq!(
            report(&actions, Status::Restarting).next_restart_ms,
            Some(100),
            "counting starts again from the first delay"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn restart_cmd_revives_a_failed_runner() {
        let mut slot = Slot::new(RestartPolicy {
            max_retries: 0,
            ..policy()
        });
        slot.on_owned();
        slot.launched(false);
        slot.on_ended(crash("boom"), true, Instant::now(), NO_JITTER);
        assert_eq!(slot.state(), State::Failed);
        let actions = slot.on_restart_cmd(None);
        assert_eq!(actions.last(), Some(&Action::Launch { restart: true }));
        let (_, actions) = slot.launched(true);
        assert_eq!(
            actions.first(),
            Some(&Action::StopRefusing),
            "the mailbox goes back to a runner"
        );
        assert!(slot.is_live());
    }

    #[tokio::test(start_paused = true)]
    async fn restart_cmd_while_live_stops_the_task_and_relaunches_when_it_ends() {
        let mut slot = running_slot();
        let actions = slot.on_restart_cmd(Some("id-2".into()));
        assert_eq!(actions.first(), Some(&Action::Stop));
        assert_eq!(statuses(&actions), vec![Status::Restarting]);
        assert!(!actions.contains(&Action::Launch { restart: true }));
        // The stopped runner ends cleanly; its mailbox stays open for
        // the next one.
        let actions = slot.on_ended(Ending::Clean, true, Instant::now(), NO_JITTER);
        assert_eq!(actions, vec![Action::Launch { restart: true }]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_end_closes_the_link_and_says_stopped() {
        let mut slot = running_slot();
        let actions = slot.on_ended(Ending::Clean, true, Instant::now(), NO_JITTER);
        assert_eq!(actions.first(), Some(&Action::CloseMailbox));
        assert_eq!(statuses(&actions), vec![Status::Stopped]);
        assert_eq!(slot.state(), State::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_generation_reporting_late_is_ignored() {
        let mut slot = running_slot();
        let stale = 1;
        slot.on_restart_cmd(None);
        slot.on_ended(Ending::Clean, true, Instant::now(), NO_JITTER);
        let (generation, _) = slot.launched(true);
        assert_ne!(generation, stale);
        assert!(slot.on_running(stale, false, Instant::now()).is_empty());
        assert!(slot.on_running(stale, true, Instant::now()).is_empty());
        assert_eq!(
            statuses(&slot.on_running(generation, false, Instant::now())),
            vec![Status::Running]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_after_the_task_ended_is_ignored() {
        let mut slot = running_slot();
        slot.on_ended(crash("boom"), true, Instant::now(), NO_JITTER);
        assert!(slot.on_running(1, false, Instant::now()).is_empty());
        assert!(matches!(slot.state(), State::Backoff { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_while_live_stops_the_task_silently() {
        let mut slot = running_slot();
        let actions = slot.on_lost();
        assert!(actions.contains(&Action::Stop));
        assert!(statuses(&actions).is_empty());
        let actions = slot.on_ended(crash("stopped"), false, Instant::now(), NO_JITTER);
        assert!(statuses(&actions).is_empty(), "the status is the owner's");
        assert_eq!(slot.state(), State::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_in_backoff_drops_the_restart() {
        let mut slot = running_slot();
        slot.on_ended(crash("boom"), true, Instant::now(), NO_JITTER);
        assert_eq!(slot.on_lost(), vec![Action::StopRefusing]);
        assert_eq!(slot.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn owned_again_while_the_lost_task_ends_starts_it_after() {
        let mut slot = running_slot();
        slot.on_lost();
        assert!(slot.on_owned().is_empty(), "waits for the task to end");
        let actions = slot.on_ended(Ending::Clean, true, Instant::now(), NO_JITTER);
        assert_eq!(actions, vec![Action::Launch { restart: true }]);
    }

    #[tokio::test(start_paused = true)]
    async fn running_for_reset_after_starts_again_from_the_first_delay() {
        let mut slot = running_slot();
        let generation = crash_and_restart(&mut slot, "one").await;
        slot.on_running(generation, false, Instant::now());
        advance(policy().reset_after).await;
        let actions = slot.on_ended(crash("two"), true, Instant::now(), NO_JITTER);
        assert_eq!(
            report(&actions, Status::Restarting).next_restart_ms,
            Some(100)
        );
        assert!(matches!(slot.state(), State::Backoff { attempt: 1, .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn running_shorter_than_reset_after_keeps_counting() {
        let mut slot = running_slot();
        let generation = crash_and_restart(&mut slot, "one").await;
        slot.on_running(generation, false, Instant::now());
        advance(policy().reset_after - Duration::from_millis(1)).await;
        let actions = slot.on_ended(crash("two"), true, Instant::now(), NO_JITTER);
        assert_eq!(
            report(&actions, Status::Restarting).next_restart_ms,
            Some(200)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_driver_that_cannot_be_built_counts_as_a_crashed_restart() {
        let mut slot = running_slot();
        slot.on_ended(crash("boom"), true, Instant::now(), NO_JITTER);
        advance(Duration::from_secs(1)).await;
        slot.due(Instant::now());
        let actions = slot.launch_failed(true, "no port".into(), Instant::now(), NO_JITTER);
        assert!(actions.contains(&Action::StopRefusing));
        let restarting = report(&actions, Status::Restarting);
        assert_eq!(restarting.restarts, 1);
        assert_eq!(restarting.panic_message.as_deref(), Some("no port"));
        assert_eq!(restarting.next_restart_ms, Some(200));
    }

    #[tokio::test(start_paused = true)]
    async fn after_an_outage_running_is_said_again_by_the_runner_only() {
        let mut slot = running_slot();
        assert!(slot.on_reconnected().is_empty());
        let generation = slot.generation;
        assert_eq!(
            statuses(&slot.on_running(generation, true, Instant::now())),
            vec![Status::Running],
            "once the runner has published its state again"
        );
        let mut failed = running_slot();
        failed.on_restart_cmd(Some("id".into()));
        let actions = failed.on_reconnected();
        let restarting = report(&actions, Status::Restarting);
        assert_eq!(restarting.pza_id, None, "said again, it answers no command");
    }
}
