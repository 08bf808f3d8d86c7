//! The multi-server ownership protocol, without I/O: from the liveness and
//! owner records seen on the broker, decides for each runner whether this
//! server claims it, keeps it, or yields it to another instance.
//!
//! Two servers configured with the same namespace and runner name must not
//! fight over its topics (see [`crate::protocol::ownership`]). Once
//! connected, the supervisor publishes its liveness record and waits for it
//! to come back: by then the broker has delivered every retained record
//! (`synced`). It then claims each runner that no other online instance
//! holds, and starts it when its claim comes back. A runner held by another
//! online instance is not started: the conflict is reported, naming that
//! instance. If the owner releases the runner (clean shutdown) or vanishes
//! (its liveness record is deleted by its last will), the runner is claimed
//! here. Of two claims, the older wins ([`OwnerRecord::wins_over`]).

use std::collections::BTreeMap;

use crate::protocol::ownership::{OwnerRecord, ServerRecord};

/// Whether this server instance serves a runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Not claimed yet: waiting for the broker's retained records.
    Unclaimed,
    /// Claim published; the runner starts when it comes back.
    Pending(OwnerRecord),
    /// This server serves the runner.
    Owned(OwnerRecord),
    /// Another online instance serves it; this one leaves it alone.
    Conflict { owner: String },
}

impl Ownership {
    fn mine(&self) -> Option<&OwnerRecord> {
        match self {
            Ownership::Pending(claim) | Ownership::Owned(claim) => Some(claim),
            _ => None,
        }
    }
}

/// What the shell does for one runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish this new claim (retained) on the runner's owner topic.
    Claim(OwnerRecord),
    /// This instance's claim stands: publish it again.
    Keep(OwnerRecord),
    /// Leave the runner to `owner` (stop it if it runs here); `message`
    /// reports the conflict on `P/error`.
    Yield { owner: String, message: String },
    /// This instance's claim came back: start the runner.
    Start,
}

/// What a liveness record asks of the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Publish this instance's liveness record again.
    Announce,
    /// Carry out a decision on a runner.
    Decide { runner: String, decision: Decision },
}

/// The records seen and this instance's stand on every runner.
#[derive(Debug)]
pub struct Claims {
    /// This instance, as its liveness record tells it.
    me: ServerRecord,
    /// This connection's liveness record came back: every retained record
    /// was delivered before it.
    synced: bool,
    /// Other instances online on this broker and namespace.
    online: BTreeMap<String, ServerRecord>,
    /// The last claim of another instance seen on each runner's owner topic.
    rivals: BTreeMap<String, OwnerRecord>,
    runners: BTreeMap<String, Ownership>,
}

impl Claims {
    pub fn new<'a>(me: ServerRecord, runners: impl IntoIterator<Item = &'a String>) -> Claims {
        Claims {
            me,
            synced: false,
            online: BTreeMap::new(),
            rivals: BTreeMap::new(),
            runners: runners
                .into_iter()
                .map(|name| (name.clone(), Ownership::Unclaimed))
                .collect(),
        }
    }

    /// The liveness record of this instance.
    pub fn liveness_payload(&self) -> Vec<u8> {
        let runners: Vec<&str> = self.runners.keys().map(String::as_str).collect();
        self.me.to_payload(&runners)
    }

    /// Whether this server serves `runner`: only then are its statuses
    /// published here.
    pub fn serves(&self, runner: &str) -> bool {
        matches!(self.runners.get(runner), Some(Ownership::Owned(_)))
    }

    /// The runners this instance has claimed, whose claims it deletes when
    /// it shuts down.
    pub fn claimed(&self) -> impl Iterator<Item = &str> {
        self.runners
            .iter()
            .filter(|(_, o)| o.mine().is_some())
            .map(|(name, _)| name.as_str())
    }

    /// (Re)connected: the liveness record is published again, and claims
    /// wait for it to come back.
    pub fn on_connected(&mut self) {
        self.synced = false;
    }

    /// A liveness record: this instance's own coming back ends the wait
    /// for the retained records; another's tells whether it is online.
    pub fn on_server_record(
        &mut self,
        instance: &str,
        record: Option<ServerRecord>,
        now_ms: u64,
    ) -> Vec<Step> {
        if instance == self.me.instance {
            return match record {
                Some(_) if !self.synced => {
                    self.synced = true;
                    self.reconcile(now_ms)
                }
                Some(_) => Vec::new(),
                // Deleted by someone else: this instance is online.
                None => vec![Step::Announce],
            };
        }
        match record {
            Some(record) => {
                self.online.insert(instance.to_string(), record);
                Vec::new()
            }
            None => {
                if self.online.remove(instance).is_some() {
                    tracing::info!(%instance, "server instance went offline");
                }
                if self.synced {
                    // Runners it held are free now.
                    self.reconcile(now_ms)
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// A record on a runner's owner topic (`None`: deleted).
    pub fn on_owner_record(
        &mut self,
        runner: &str,
        record: Option<OwnerRecord>,
        now_ms: u64,
    ) -> Option<Decision> {
        let ownership = self.runners.get_mut(runner)?;
        match record {
            Some(record) if record.instance == self.me.instance => {
                self.rivals.remove(runner);
                if *ownership == Ownership::Pending(record.clone()) {
                    *ownership = Ownership::Owned(record);
                    Some(Decision::Start)
                } else {
                    None
                }
            }
            Some(record) => {
                self.rivals.insert(runner.to_string(), record);
                self.judge_if_synced(runner, now_ms)
            }
            None => {
                self.rivals.remove(runner);
                self.judge_if_synced(runner, now_ms)
            }
        }
    }

    fn judge_if_synced(&mut self, runner: &str, now_ms: u64) -> Option<Decision> {
        if self.synced {
            self.judge(runner, now_ms)
        } else {
            None
        }
    }

    /// Decides again, from the records seen, what to do with every runner.
    fn reconcile(&mut self, now_ms: u64) -> Vec<Step> {
        let names: Vec<String> = self.runners.keys().cloned().collect();
        names
            .into_iter()
            .filter_map(|runner| {
                let decision = self.judge(&runner, now_ms)?;
                Some(Step::Decide { runner, decision })
            })
            .collect()
    }

    /// The claim of another online instance on `runner`, if any.
    fn rival(&self, runner: &str) -> Option<OwnerRecord> {
        self.rivals
            .get(runner)
            .filter(|r| self.online.contains_key(&r.instance))
            .cloned()
    }

    fn new_claim(&self, now_ms: u64) -> OwnerRecord {
        OwnerRecord {
            instance: self.me.instance.clone(),
            claimed_at_ms: now_ms,
        }
    }

    /// Decides whether this server serves `runner`, and records it.
    fn judge(&mut self, runner: &str, now_ms: u64) -> Option<Decision> {
        let ownership = self.runners.get(runner)?.clone();
        let rival = self.rival(runner);
        match (ownership, rival) {
            (Ownership::Conflict { .. }, None) => {
                tracing::info!(
                    runner,
                    "runner released by the other server instance: claiming it"
                );
                Some(self.claim(runner, self.new_claim(now_ms)))
            }
            (Ownership::Conflict { owner }, Some(rival)) => {
                (owner != rival.instance).then(|| self.yield_to(runner, &rival.instance))
            }
            (Ownership::Unclaimed, rival) => {
                let claim = self.new_claim(now_ms);
                Some(match rival {
                    Some(rival) if rival.wins_over(&claim) => {
                        self.yield_to(runner, &rival.instance)
                    }
                    _ => self.claim(runner, claim),
                })
            }
            (Ownership::Pending(mine) | Ownership::Owned(mine), rival) => Some(match rival {
                Some(rival) if rival.wins_over(&mine) => self.yield_to(runner, &rival.instance),
                Some(rival) => {
                    tracing::warn!(runner, other = %rival.instance, "another server instance claims this runner too; this one's claim is older and stands");
                    Decision::Keep(mine)
                }
                None => Decision::Keep(mine),
            }),
        }
    }

    fn claim(&mut self, runner: &str, claim: OwnerRecord) -> Decision {
        if let Some(ownership) = self.runners.get_mut(runner) {
            *ownership = Ownership::Pending(claim.clone());
        }
        Decision::Claim(claim)
    }

    /// Leaves `runner` to `owner`, with the message reporting it.
    fn yield_to(&mut self, runner: &str, owner: &str) -> Decision {
        let was_owned = matches!(self.runners.get(runner), Some(Ownership::Owned(_)));
        if let Some(ownership) = self.runners.get_mut(runner) {
            *ownership = Ownership::Conflict {
                owner: owner.to_string(),
            };
        }
        let other = self
            .online
            .get(owner)
            .map(ServerRecord::describe)
            .unwrap_or_else(|| format!("instance {owner}"));
        let message = format!(
            "conflict: runner '{runner}' is served by another server, {other}, on this broker and namespace; this server ({}) {}",
            self.me.describe(),
            if was_owned { "stops serving it" } else { "does not start it" },
        );
        Decision::Yield {
            owner: owner.to_string(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNER: &str = "ps";
    const T0: u64 = 1_000;

    fn server(instance: &str) -> ServerRecord {
        ServerRecord {
            instance: instance.into(),
            host: "bench".into(),
            pid: 42,
        }
    }

    fn claim(instance: &str, at: u64) -> OwnerRecord {
        OwnerRecord {
            instance: instance.into(),
            claimed_at_ms: at,
        }
    }

    fn claims() -> Claims {
        Claims::new(server("me"), [&RUNNER.to_string()])
    }

    /// Synced with the broker, with nothing retained: claims the runner.
    fn synced(claims: &mut Claims) -> OwnerRecord {
        let steps = claims.on_server_record("me", Some(server("me")), T0);
        let [Step::Decide {
            decision: Decision::Claim(record),
            ..
        }] = steps.as_slice()
        else {
            panic!("expected one claim, got {steps:?}");
        };
        record.clone()
    }

    #[test]
    fn claims_wait_for_the_own_liveness_record() {
        let mut c = claims();
        assert_eq!(c.on_owner_record(RUNNER, None, T0), None);
        let mine = synced(&mut c);
        assert!(!c.serves(RUNNER), "not before the claim comes back");
        assert_eq!(
            c.on_owner_record(RUNNER, Some(mine), T0),
            Some(Decision::Start)
        );
        assert!(c.serves(RUNNER));
    }

    #[test]
    fn an_older_claim_of_an_online_server_wins() {
        let mut c = claims();
        c.on_server_record("other", Some(server("other")), T0);
        c.on_owner_record(RUNNER, Some(claim("other", T0 - 1)), T0);
        let steps = c.on_server_record("me", Some(server("me")), T0);
        assert!(
            matches!(steps.as_slice(), [Step::Decide { decision: Decision::Yield { owner, message }, .. }] if owner == "other" && message.contains("does not start it")),
            "{steps:?}"
        );
        assert!(!c.serves(RUNNER));
    }

    #[test]
    fn a_claim_of_an_offline_server_is_ignored() {
        let mut c = claims();
        c.on_owner_record(RUNNER, Some(claim("gone", T0 - 1)), T0);
        synced(&mut c);
    }

    #[test]
    fn the_runner_is_claimed_when_its_owner_vanishes() {
        let mut c = claims();
        c.on_server_record("other", Some(server("other")), T0);
        c.on_owner_record(RUNNER, Some(claim("other", T0 - 1)), T0);
        c.on_server_record("me", Some(server("me")), T0);
        let steps = c.on_server_record("other", None, T0 + 5);
        assert_eq!(
            steps,
            vec![Step::Decide {
                runner: RUNNER.into(),
                decision: Decision::Claim(claim("me", T0 + 5)),
            }]
        );
    }

    #[test]
    fn a_conflict_while_owned_stops_serving() {
        let mut c = claims();
        let mine = synced(&mut c);
        c.on_owner_record(RUNNER, Some(mine.clone()), T0);
        c.on_server_record("other", Some(server("other")), T0);
        let decision = c.on_owner_record(RUNNER, Some(claim("other", T0 - 10)), T0);
        assert!(
            matches!(&decision, Some(Decision::Yield { message, .. }) if message.contains("stops serving it")),
            "{decision:?}"
        );
        assert!(!c.serves(RUNNER));
        assert_eq!(c.claimed().count(), 0, "nothing to release");
    }

    #[test]
    fn a_younger_rival_claim_is_answered_by_keeping_ours() {
        let mut c = claims();
        let mine = synced(&mut c);
        c.on_owner_record(RUNNER, Some(mine.clone()), T0);
        c.on_server_record("other", Some(server("other")), T0);
        let decision = c.on_owner_record(RUNNER, Some(claim("other", T0 + 10)), T0 + 10);
        assert_eq!(decision, Some(Decision::Keep(mine)));
        assert!(c.serves(RUNNER));
    }

    #[test]
    fn the_own_record_deleted_by_someone_else_is_announced_again() {
        let mut c = claims();
        synced(&mut c);
        assert_eq!(c.on_server_record("me", None, T0), vec![Step::Announce]);
    }
}
