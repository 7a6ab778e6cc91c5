//! The policy driven alone: inputs at chosen times, actions checked. Spawns are answered with
//! made-up PIDs (100, 101, …) as the driver would answer them.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal::{self, SIGHUP, SIGINT, SIGKILL, SIGTERM, SIGUSR1};
use nix::unistd::Pid;
use secrecy::{ExposeSecret, SecretString};

use super::{Action, Input, Policy, backoff};
use crate::audit::{Event, ReloadOutcome, Trigger};
use crate::failure::BackendFailure;
use crate::manifest::run::{OnChange, Ready, Restart, RestartOnExit, RunConfig};
use crate::resolve::{Outcome, Resolution, ResolvedVar};
use crate::secret::{EnvName, SecretError};

fn pid(n: i32) -> Pid {
    Pid::from_raw(n)
}

fn var(value: &str) -> ResolvedVar {
    ResolvedVar {
        name: EnvName::parse("TOKEN").unwrap(),
        backend: "files".into(),
        path: "token".into(),
        version: None,
        about: None,
        lease: None,
        outcome: Outcome::Value(SecretString::from(value)),
    }
}

/// A resolve that found `value`.
fn found(value: &str) -> Resolution {
    Resolution {
        vars: vec![var(value)],
        backend_failures: Vec::new(),
        issued: Vec::new(),
    }
}

/// A value of the issued credential `tag`.
fn leased_var(value: &str, tag: u64) -> ResolvedVar {
    ResolvedVar {
        lease: Some(tag),
        ..var(value)
    }
}

/// A resolve whose value belongs to the issued credential `tag`.
fn issued(value: &str, tag: u64) -> Resolution {
    Resolution {
        vars: vec![leased_var(value, tag)],
        ..found(value)
    }
}

fn released(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Release(tags) => Some(tags.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// A resolve whose backend could not be reached.
fn outage() -> Resolution {
    let error = SecretError::unavailable("connection refused");
    let mut v = var("");
    v.outcome = Outcome::Failed(error.clone());
    Resolution {
        vars: vec![v],
        backend_failures: vec![BackendFailure {
            backend: "files".into(),
            error,
            vars: vec![EnvName::parse("TOKEN").unwrap()],
        }],
        issued: Vec::new(),
    }
}

/// A policy with its first child (PID 100) started at t = 0, and a clock.
struct Sim {
    policy: Policy,
    t0: Instant,
    now: Instant,
    next_pid: i32,
}

impl Sim {
    fn new(run: RunConfig) -> Sim {
        Sim::starting(run, vec![var("v1")])
    }

    /// Its first child (PID 100) started at t = 0 with `values`.
    fn starting(run: RunConfig, values: Vec<ResolvedVar>) -> Sim {
        let t0 = Instant::now();
        let mut sim = Sim {
            policy: Policy::new(run, values, false, t0, |d| d, |d| d / 2, false),
            t0,
            now: t0,
            next_pid: 100,
        };
        sim.feed(Input::Spawned(pid(100)));
        sim.next_pid = 101;
        sim
    }

    fn with(change: impl FnOnce(&mut RunConfig)) -> Sim {
        let mut run = RunConfig::default();
        change(&mut run);
        Sim::new(run)
    }

    /// Its first child (PID 100) holds the issued credential 1.
    fn leased(change: impl FnOnce(&mut RunConfig)) -> Sim {
        let mut run = RunConfig::default();
        change(&mut run);
        Sim::starting(run, vec![leased_var("u1", 1)])
    }

    /// Moves the clock to `secs` after the start, firing every deadline on the way.
    fn at(&mut self, secs: f64) -> Vec<Action> {
        let until = self.t0 + Duration::from_secs_f64(secs);
        let mut out = Vec::new();
        while let Some(due) = self.policy.next_deadline().filter(|d| *d <= until) {
            self.now = due.max(self.now);
            out.extend(self.feed(Input::Tick));
        }
        self.now = until.max(self.now);
        out
    }

    /// One input now; a spawn is answered at once, as the driver does.
    fn feed(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            for action in self.policy.handle(input, self.now) {
                if action == Action::Spawn {
                    inputs.push(Input::Spawned(pid(self.next_pid)));
                    self.next_pid += 1;
                }
                out.push(action);
            }
        }
        out
    }

    fn value(&self) -> String {
        self.policy.values()[0]
            .value()
            .map(|v| v.expose_secret().to_owned())
            .unwrap_or_default()
    }
}

fn resolves(actions: &[Action]) -> usize {
    actions.iter().filter(|a| **a == Action::Resolve).count()
}

fn sent(actions: &[Action]) -> Vec<(i32, Signal)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { pid, signal } | Action::Forward { pid, signal } => {
                Some((pid.as_raw(), *signal))
            }
            _ => None,
        })
        .collect()
}

fn events(actions: &[Action]) -> Vec<&Event> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Audit(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn spawns(actions: &[Action]) -> usize {
    actions.iter().filter(|a| **a == Action::Spawn).count()
}

#[test]
fn reload_signals_coalesce_before_and_during_a_reload() {
    let mut sim = Sim::new(RunConfig::default());
    // Three signals at once: one reload.
    let mut out = Vec::new();
    for _ in 0..3 {
        out.extend(sim.feed(Input::Signal(SIGHUP)));
    }
    assert_eq!(resolves(&out), 1, "{out:?}");
    // Two more while it runs: one more reload, once the first is done and a second has passed.
    sim.at(0.2);
    assert_eq!(resolves(&sim.feed(Input::Signal(SIGHUP))), 0);
    assert_eq!(resolves(&sim.feed(Input::Signal(SIGHUP))), 0);
    let done = sim.feed(Input::Resolved(found("v1")));
    assert_eq!(
        resolves(&done),
        0,
        "a reload right after the last: {done:?}"
    );
    assert!(events(&done).contains(&&Event::Reload {
        trigger: Trigger::Signal,
        outcome: ReloadOutcome::Unchanged
    }));
    assert_eq!(resolves(&sim.at(1.1)), 0, "before the 1 s gap ends");
    assert_eq!(resolves(&sim.at(1.3)), 1);
    assert_eq!(resolves(&sim.feed(Input::Resolved(found("v1")))), 0);
    assert_eq!(resolves(&sim.at(60.0)), 0, "nothing more was asked");
}

#[test]
fn each_on_change_policy_applies_a_changed_value() {
    struct Case {
        on_change: OnChange,
        /// Signals sent right after the changed resolve.
        sent: Vec<(i32, Signal)>,
        spawns: usize,
    }
    let cases = [
        Case {
            on_change: OnChange::Restart,
            sent: vec![(100, SIGTERM)],
            spawns: 0,
        },
        Case {
            on_change: OnChange::Signal,
            sent: vec![(100, SIGUSR1)],
            spawns: 0,
        },
        Case {
            // No readiness check: the new child is taken at once and the old one stopped.
            on_change: OnChange::Overlap,
            sent: vec![(100, SIGTERM)],
            spawns: 1,
        },
    ];
    for case in cases {
        let mut sim = Sim::with(|r| {
            r.on_change = case.on_change;
            r.child_signal = SIGUSR1;
        });
        sim.feed(Input::Signal(SIGHUP));
        let out = sim.feed(Input::Resolved(found("v2")));
        let what = format!("{:?}: {out:?}", case.on_change);
        assert_eq!(sent(&out), case.sent, "{what}");
        assert_eq!(spawns(&out), case.spawns, "{what}");
        assert_eq!(sim.value(), "v2", "{what}");
        assert!(
            events(&out).contains(&&Event::Reload {
                trigger: Trigger::Signal,
                outcome: ReloadOutcome::Changed(vec!["TOKEN".into()])
            }),
            "{what}"
        );
        match case.on_change {
            OnChange::Restart => {
                // The new child starts only once the old one has ended.
                let out = sim.feed(Input::Exited {
                    pid: pid(100),
                    code: 143,
                });
                assert_eq!(spawns(&out), 1, "{out:?}");
                assert!(events(&out).contains(&&Event::Restart {
                    old_pid: 100,
                    pid: 101
                }));
                assert_eq!(sim.policy.child(), Some(pid(101)));
            }
            OnChange::Signal => assert_eq!(sim.policy.child(), Some(pid(100))),
            OnChange::Overlap => {
                assert_eq!(sim.policy.child(), Some(pid(101)));
                let out = sim.feed(Input::Exited {
                    pid: pid(100),
                    code: 143,
                });
                assert!(events(&out).contains(&&Event::Overlap {
                    old_pid: 100,
                    pid: 101
                }));
            }
        }
        assert_eq!(sim.policy.exit_code(), None, "{what}");
    }
}

#[test]
fn an_unchanged_value_restarts_only_with_restart_always() {
    for (restart, restarted) in [(Restart::OnChange, false), (Restart::Always, true)] {
        let mut sim = Sim::with(|r| r.restart = restart);
        sim.feed(Input::Signal(SIGHUP));
        let out = sim.feed(Input::Resolved(found("v1")));
        assert_eq!(!sent(&out).is_empty(), restarted, "{restart:?}: {out:?}");
    }
}

#[test]
fn restarts_are_spaced_by_min_restart_interval() {
    let mut sim = Sim::with(|r| r.min_restart_interval = Duration::from_secs(5));
    sim.feed(Input::Signal(SIGHUP));
    sim.feed(Input::Resolved(found("v2")));
    sim.feed(Input::Exited {
        pid: pid(100),
        code: 143,
    });
    // The restart ended at t = 0: a reload asked at 1 s waits until 5 s.
    sim.at(1.0);
    assert_eq!(resolves(&sim.feed(Input::Signal(SIGHUP))), 0);
    assert_eq!(resolves(&sim.at(4.9)), 0);
    assert_eq!(resolves(&sim.at(5.1)), 1);
}

#[test]
fn overlap_keeps_the_old_child_when_the_new_one_is_not_ready() {
    let mut sim = Sim::with(|r| {
        r.on_change = OnChange::Overlap;
        r.ready = Some(Ready {
            tcp: Some("127.0.0.1:1".into()),
            cmd: None,
            notify: false,
            timeout: Duration::from_secs(2),
        });
    });
    sim.feed(Input::Signal(SIGHUP));
    let out = sim.feed(Input::Resolved(found("v2")));
    assert!(out.contains(&Action::Probe(pid(101))), "{out:?}");
    assert_eq!(
        sim.value(),
        "v2",
        "the new child is started with the new value"
    );
    // Not ready, again and again, until the timeout: the new child is stopped.
    let mut stopped = sent(&sim.feed(Input::Probed {
        pid: pid(101),
        ready: false,
    }));
    for step in 1..=30 {
        let out = sim.at(f64::from(step) * 0.1);
        if out.contains(&Action::Probe(pid(101))) {
            stopped.extend(sent(&sim.feed(Input::Probed {
                pid: pid(101),
                ready: false,
            })));
        }
        stopped.extend(sent(&out));
    }
    assert_eq!(stopped, vec![(101, SIGTERM)]);
    assert_eq!(sim.policy.child(), Some(pid(100)), "the old child stays");
    assert_eq!(
        sim.value(),
        "v1",
        "and its values are the current ones again"
    );
    let out = sim.feed(Input::Exited {
        pid: pid(101),
        code: 143,
    });
    assert!(events(&out).contains(&&Event::OverlapFailed {
        pid: 101,
        code: 143
    }));
    assert_eq!(sim.policy.exit_code(), None);
}

#[test]
fn overlap_takes_the_new_child_once_it_is_ready() {
    let mut sim = Sim::with(|r| {
        r.on_change = OnChange::Overlap;
        r.ready = Some(Ready {
            tcp: Some("127.0.0.1:1".into()),
            cmd: None,
            notify: false,
            timeout: Duration::from_secs(30),
        });
    });
    sim.feed(Input::Signal(SIGHUP));
    sim.feed(Input::Resolved(found("v2")));
    sim.feed(Input::Probed {
        pid: pid(101),
        ready: false,
    });
    assert_eq!(
        sim.policy.child(),
        Some(pid(100)),
        "not ready: the old one serves"
    );
    let out = sim.at(0.2);
    assert!(
        out.contains(&Action::Probe(pid(101))),
        "probed again: {out:?}"
    );
    let out = sim.feed(Input::Probed {
        pid: pid(101),
        ready: true,
    });
    assert_eq!(sent(&out), vec![(100, SIGTERM)]);
    assert_eq!(sim.policy.child(), Some(pid(101)));
}

#[test]
fn overlap_keeps_the_old_child_when_the_new_one_dies() {
    let mut sim = Sim::with(|r| {
        r.on_change = OnChange::Overlap;
        r.ready = Some(Ready {
            tcp: Some("127.0.0.1:1".into()),
            cmd: None,
            notify: false,
            timeout: Duration::from_secs(30),
        });
    });
    sim.feed(Input::Signal(SIGHUP));
    sim.feed(Input::Resolved(found("v2")));
    let out = sim.feed(Input::Exited {
        pid: pid(101),
        code: 1,
    });
    assert!(events(&out).contains(&&Event::OverlapFailed { pid: 101, code: 1 }));
    assert!(sent(&out).is_empty(), "nothing to stop: {out:?}");
    assert_eq!(sim.policy.child(), Some(pid(100)));
    assert_eq!(sim.value(), "v1");
}

#[test]
fn a_child_that_ignores_the_stop_signal_is_killed_after_stop_timeout() {
    let mut sim = Sim::with(|r| r.stop_timeout = Duration::from_secs(3));
    sim.feed(Input::Signal(SIGHUP));
    assert_eq!(
        sent(&sim.feed(Input::Resolved(found("v2")))),
        vec![(100, SIGTERM)]
    );
    assert!(sent(&sim.at(2.9)).is_empty());
    assert_eq!(sent(&sim.at(3.1)), vec![(100, SIGKILL)]);
    let out = sim.feed(Input::Exited {
        pid: pid(100),
        code: 137,
    });
    assert_eq!(
        spawns(&out),
        1,
        "the new child starts after the kill: {out:?}"
    );
}

#[test]
fn stopping_during_a_reload_forwards_at_once_and_restarts_nothing() {
    let mut sim = Sim::new(RunConfig::default());
    assert_eq!(resolves(&sim.feed(Input::Signal(SIGHUP))), 1);
    let out = sim.feed(Input::Signal(SIGTERM));
    assert_eq!(sent(&out), vec![(100, SIGTERM)]);
    // The values changed, but secret-run is stopping.
    let out = sim.feed(Input::Resolved(found("v2")));
    assert!(sent(&out).is_empty() && spawns(&out) == 0, "{out:?}");
    assert_eq!(sim.policy.exit_code(), None, "the child has not ended yet");
    // A reload signal now goes to the child like any other.
    assert_eq!(sent(&sim.feed(Input::Signal(SIGHUP))), vec![(100, SIGHUP)]);
    sim.feed(Input::Exited {
        pid: pid(100),
        code: 143,
    });
    assert_eq!(sim.policy.exit_code(), Some(143));
}

#[test]
fn stopping_during_a_restart_waits_for_the_old_child_and_starts_no_new_one() {
    let mut sim = Sim::new(RunConfig::default());
    sim.feed(Input::Signal(SIGHUP));
    sim.feed(Input::Resolved(found("v2")));
    assert_eq!(sent(&sim.feed(Input::Signal(SIGINT))), vec![(100, SIGINT)]);
    let out = sim.feed(Input::Exited {
        pid: pid(100),
        code: 130,
    });
    assert_eq!(spawns(&out), 0, "{out:?}");
    assert_eq!(sim.policy.exit_code(), Some(130));
}

#[test]
fn a_failed_child_restarts_with_growing_pauses() {
    let mut sim = Sim::with(|r| r.restart_on_exit = RestartOnExit::OnFailure);
    let mut child = 100;
    let mut t = 0.0;
    for expected in [1, 2, 4, 8, 16, 30, 30] {
        sim.feed(Input::Exited {
            pid: pid(child),
            code: 1,
        });
        assert_eq!(sim.policy.exit_code(), None);
        let pause = f64::from(expected);
        assert_eq!(
            resolves(&sim.at(t + pause - 0.1)),
            0,
            "no restart before {expected} s"
        );
        assert_eq!(
            resolves(&sim.at(t + pause + 0.1)),
            1,
            "restart at {expected} s"
        );
        let out = sim.feed(Input::Resolved(found("v1")));
        assert_eq!(spawns(&out), 1, "{out:?}");
        child = sim.policy.child().unwrap().as_raw();
        t += pause + 0.1;
    }
    // A child that ran a healthy while starts the count over.
    t += 61.0;
    sim.at(t);
    sim.feed(Input::Exited {
        pid: pid(child),
        code: 1,
    });
    assert_eq!(resolves(&sim.at(t + 1.1)), 1);
    assert_eq!(backoff(1), Duration::from_secs(1));
}

#[test]
fn a_restart_during_an_outage_serves_stale_values_only_within_max_stale() {
    let mut sim = Sim::with(|r| {
        r.restart_on_exit = RestartOnExit::OnFailure;
        r.max_stale = Duration::from_secs(60);
    });
    sim.feed(Input::Exited {
        pid: pid(100),
        code: 1,
    });
    sim.at(1.1);
    let out = sim.feed(Input::Resolved(outage()));
    assert_eq!(spawns(&out), 1, "values 1 s old serve: {out:?}");
    assert!(
        events(&out)
            .iter()
            .any(|e| matches!(e, Event::StaleServe { age_s: 1, .. }))
    );
    assert_eq!(sim.value(), "v1");
    // Much later, the same: now the values are too old.
    sim.at(120.0);
    let child = sim.policy.child().unwrap();
    sim.feed(Input::Exited {
        pid: child,
        code: 1,
    });
    assert_eq!(resolves(&sim.at(121.2)), 1);
    let out = sim.feed(Input::Resolved(outage()));
    assert_eq!(spawns(&out), 0, "{out:?}");
    assert!(
        events(&out)
            .iter()
            .any(|e| matches!(e, Event::StaleRefused { .. }))
    );
    assert_eq!(sim.policy.exit_code(), None, "it tries again");
    assert_eq!(resolves(&sim.at(126.0)), 1, "after a longer pause");
    let out = sim.feed(Input::Resolved(found("v3")));
    assert_eq!(spawns(&out), 1);
    assert_eq!(sim.value(), "v3");
}

#[test]
fn a_stop_signal_between_a_crash_and_its_restart_ends_the_run() {
    let mut sim = Sim::with(|r| r.restart_on_exit = RestartOnExit::OnFailure);
    sim.feed(Input::Exited {
        pid: pid(100),
        code: 3,
    });
    let out = sim.feed(Input::Signal(SIGTERM));
    assert!(sent(&out).is_empty(), "{out:?}");
    assert_eq!(sim.policy.exit_code(), Some(3));
}

#[test]
fn a_reload_that_fails_keeps_the_child_and_its_values() {
    let mut sim = Sim::new(RunConfig::default());
    sim.feed(Input::Signal(SIGHUP));
    let out = sim.feed(Input::Resolved(outage()));
    assert!(sent(&out).is_empty() && spawns(&out) == 0, "{out:?}");
    assert!(events(&out).iter().any(|e| matches!(
        e,
        Event::Reload {
            outcome: ReloadOutcome::Failed { .. },
            ..
        }
    )));
    assert_eq!(sim.value(), "v1");
}

#[test]
fn watch_asks_for_a_reload_at_each_period() {
    let mut sim = Sim::with(|r| r.watch = Some(Duration::from_secs(10)));
    assert_eq!(resolves(&sim.at(9.9)), 0);
    assert_eq!(resolves(&sim.at(10.1)), 1);
    let out = sim.feed(Input::Resolved(found("v1")));
    assert!(events(&out).contains(&&Event::Reload {
        trigger: Trigger::Watch,
        outcome: ReloadOutcome::Unchanged
    }));
    assert_eq!(resolves(&sim.at(20.1)), 1);
}

#[test]
fn a_clean_exit_ends_the_run_with_the_childs_code() {
    for (restart_on_exit, code, ends) in [
        (RestartOnExit::Never, 0, true),
        (RestartOnExit::Never, 7, true),
        (RestartOnExit::OnFailure, 0, true),
        (RestartOnExit::OnFailure, 7, false),
    ] {
        let mut sim = Sim::with(|r| r.restart_on_exit = restart_on_exit);
        sim.feed(Input::Exited {
            pid: pid(100),
            code,
        });
        assert_eq!(
            sim.policy.exit_code(),
            ends.then_some(code),
            "{restart_on_exit:?} {code}"
        );
    }
}

fn notify_run(on_change: OnChange) -> RunConfig {
    RunConfig {
        on_change,
        ready: Some(Ready {
            tcp: None,
            cmd: None,
            notify: true,
            timeout: Duration::from_secs(5),
        }),
        ..RunConfig::default()
    }
}

#[test]
fn with_notify_the_new_child_is_taken_on_its_own_ready_and_never_probed() {
    let mut sim = Sim::new(notify_run(OnChange::Overlap));
    sim.feed(Input::Signal(SIGHUP));
    let out = sim.feed(Input::Resolved(found("v2")));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Probe(_))),
        "{out:?}"
    );
    let out = sim.at(4.0);
    assert!(
        !out.iter().any(|a| matches!(a, Action::Probe(_))),
        "{out:?}"
    );
    // READY=1 from the old child means nothing for the new one.
    assert!(sent(&sim.feed(Input::Notified { pid: pid(100) })).is_empty());
    let out = sim.feed(Input::Notified { pid: pid(101) });
    assert_eq!(sent(&out), vec![(100, SIGTERM)]);
    assert_eq!(sim.policy.child(), Some(pid(101)));
}

#[test]
fn with_notify_a_silent_new_child_is_stopped_at_the_timeout() {
    let mut sim = Sim::new(notify_run(OnChange::Overlap));
    sim.feed(Input::Signal(SIGHUP));
    sim.feed(Input::Resolved(found("v2")));
    assert!(sent(&sim.at(4.9)).is_empty());
    assert_eq!(sent(&sim.at(5.1)), vec![(101, SIGTERM)]);
    assert_eq!(sim.value(), "v1");
}

fn tells(actions: &[Action]) -> Vec<&super::Tell> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Tell(t) => Some(t),
            _ => None,
        })
        .collect()
}

#[test]
fn the_service_manager_hears_ready_reloading_ready_and_stopping() {
    use super::Tell;
    for (ready, first_ready_at_once) in [(None, true), (Some(true), false), (Some(false), false)] {
        let run = RunConfig {
            ready: ready.map(|notify| Ready {
                tcp: (!notify).then(|| "127.0.0.1:1".to_owned()),
                cmd: None,
                notify,
                timeout: Duration::from_secs(5),
            }),
            ..RunConfig::default()
        };
        let t0 = Instant::now();
        let mut policy = Policy::new(run, vec![var("v1")], false, t0, |d| d, |d| d, true);
        let out = policy.handle(Input::Spawned(pid(100)), t0);
        let what = format!("{ready:?}: {out:?}");
        assert_eq!(
            tells(&out) == [&Tell::Ready { pid: 100 }],
            first_ready_at_once,
            "{what}"
        );
        match ready {
            Some(true) => {
                let out = policy.handle(Input::Notified { pid: pid(100) }, t0);
                assert_eq!(tells(&out), [&Tell::Ready { pid: 100 }], "{what}");
            }
            Some(false) => {
                assert!(out.contains(&Action::Probe(pid(100))), "{what}");
                let out = policy.handle(
                    Input::Probed {
                        pid: pid(100),
                        ready: true,
                    },
                    t0,
                );
                assert_eq!(tells(&out), [&Tell::Ready { pid: 100 }], "{what}");
            }
            None => {}
        }
        let out = policy.handle(Input::Signal(SIGHUP), t0);
        assert_eq!(tells(&out), [&Tell::Reloading], "{what}");
        let out = policy.handle(Input::Resolved(found("v1")), t0);
        assert_eq!(tells(&out), [&Tell::Ready { pid: 100 }], "{what}");
        let out = policy.handle(Input::Signal(SIGTERM), t0);
        assert_eq!(tells(&out), [&Tell::Stopping], "{what}");
    }
    // Without a manager, nothing is told.
    let mut sim = Sim::new(RunConfig::default());
    assert!(tells(&sim.feed(Input::Signal(SIGHUP))).is_empty());
}

fn ready_in_30s() -> Option<Ready> {
    Some(Ready {
        tcp: Some("127.0.0.1:1".into()),
        cmd: None,
        notify: false,
        timeout: Duration::from_secs(30),
    })
}

#[test]
fn an_expiring_credential_is_replaced_by_overlap_and_released_once_the_old_child_is_gone() {
    let mut sim = Sim::leased(|r| {
        r.on_change = OnChange::Overlap;
        r.ready = ready_in_30s();
    });
    let out = sim.feed(Input::Expiring(1));
    assert_eq!(resolves(&out), 1, "{out:?}");
    let out = sim.feed(Input::Resolved(issued("u2", 2)));
    assert!(events(&out).contains(&&Event::Reload {
        trigger: Trigger::Lease,
        outcome: ReloadOutcome::Changed(vec!["TOKEN".into()])
    }));
    assert_eq!(spawns(&out), 1);
    assert!(released(&out).is_empty(), "both children run: {out:?}");
    let out = sim.feed(Input::Probed {
        pid: pid(101),
        ready: true,
    });
    assert_eq!(sent(&out), vec![(100, SIGTERM)]);
    assert!(
        released(&out).is_empty(),
        "the old child still runs: {out:?}"
    );
    let out = sim.feed(Input::Exited {
        pid: pid(100),
        code: 143,
    });
    assert_eq!(released(&out), vec![1]);
    // At the end, the new one is the driver's to revoke, not released before.
    let out = sim.feed(Input::Signal(SIGTERM));
    let out2 = sim.feed(Input::Exited {
        pid: pid(101),
        code: 143,
    });
    assert!(released(&out).is_empty() && !released(&out2).contains(&1));
    assert_eq!(sim.policy.exit_code(), Some(143));
}

#[test]
fn a_new_credential_whose_child_is_not_taken_is_released_and_the_old_one_kept() {
    let mut sim = Sim::leased(|r| {
        r.on_change = OnChange::Overlap;
        r.ready = ready_in_30s();
    });
    sim.feed(Input::Expiring(1));
    sim.feed(Input::Resolved(issued("u2", 2)));
    let out = sim.feed(Input::Exited {
        pid: pid(101),
        code: 1,
    });
    assert_eq!(released(&out), vec![2]);
    assert_eq!(sim.value(), "u1");
    assert_eq!(sim.policy.child(), Some(pid(100)));
}

#[test]
fn restart_releases_the_old_credential_when_the_old_child_has_ended() {
    let mut sim = Sim::leased(|_| {});
    sim.feed(Input::Expiring(1));
    let out = sim.feed(Input::Resolved(issued("u2", 2)));
    assert_eq!(sent(&out), vec![(100, SIGTERM)]);
    assert!(released(&out).is_empty());
    let out = sim.feed(Input::Exited {
        pid: pid(100),
        code: 143,
    });
    assert_eq!(released(&out), vec![1]);
    assert_eq!(spawns(&out), 1);
}

#[test]
fn signal_releases_the_old_credential_after_stop_timeout() {
    let mut sim = Sim::leased(|r| {
        r.on_change = OnChange::Signal;
        r.stop_timeout = Duration::from_secs(5);
    });
    sim.feed(Input::Expiring(1));
    let out = sim.feed(Input::Resolved(issued("u2", 2)));
    assert_eq!(sent(&out), vec![(100, SIGHUP)]);
    assert!(released(&out).is_empty());
    assert!(released(&sim.at(4.9)).is_empty());
    assert_eq!(released(&sim.at(5.1)), vec![1]);
}

#[test]
fn a_reload_that_keeps_the_credential_changes_nothing_and_releases_nothing() {
    let mut sim = Sim::leased(|r| r.watch = Some(Duration::from_secs(10)));
    let out = sim.at(10.0);
    assert_eq!(resolves(&out), 1);
    let out = sim.feed(Input::Resolved(issued("u1", 1)));
    assert!(released(&out).is_empty(), "{out:?}");
    assert!(sent(&out).is_empty());
}

#[test]
fn a_failed_replacement_keeps_the_child_and_what_the_resolve_issued_is_released() {
    let mut sim = Sim::leased(|_| {});
    sim.feed(Input::Expiring(1));
    // One credential was issued, another secret failed: the new one is of no use.
    let mut partial = outage();
    partial.vars.push(ResolvedVar {
        name: EnvName::parse("DB").unwrap(),
        ..leased_var("u2", 2)
    });
    let out = sim.feed(Input::Resolved(partial));
    assert_eq!(released(&out), vec![2]);
    assert!(sent(&out).is_empty());
    assert_eq!(sim.value(), "u1");
    // Asked again (the keeper repeats it), the replacement is tried again.
    sim.at(2.0);
    assert_eq!(resolves(&sim.feed(Input::Expiring(1))), 1);
}

#[test]
fn an_expiring_credential_nobody_uses_any_more_asks_for_nothing() {
    let mut sim = Sim::leased(|_| {});
    assert_eq!(resolves(&sim.feed(Input::Expiring(7))), 0);
}

#[test]
fn a_reload_signal_refreshes_what_backends_keep_and_a_watch_tick_does_not() {
    let mut sim = Sim::with(|r| r.watch = Some(Duration::from_secs(10)));
    let out = sim.at(10.0);
    assert_eq!(resolves(&out), 1);
    assert!(!out.contains(&Action::Refresh), "{out:?}");
    sim.feed(Input::Resolved(found("v1")));
    sim.at(12.0);
    let out = sim.feed(Input::Signal(SIGHUP));
    assert_eq!(resolves(&out), 1);
    assert!(out.contains(&Action::Refresh), "{out:?}");
}

#[test]
fn restart_spread_applies_new_values_after_a_delay_within_the_window() {
    let mut sim = Sim::leased(|r| r.restart_spread = Some(Duration::from_secs(10)));
    sim.feed(Input::Signal(SIGHUP));
    let out = sim.feed(Input::Resolved(issued("u2", 2)));
    assert!(
        events(&out).contains(&&Event::SpreadWait { delay_ms: 5000 }),
        "{out:?}"
    );
    assert!(sent(&out).is_empty(), "nothing applied yet: {out:?}");
    assert!(
        released(&out).is_empty(),
        "the waiting values are kept: {out:?}"
    );
    assert!(sent(&sim.at(4.9)).is_empty());
    assert_eq!(sent(&sim.at(5.1)), vec![(100, SIGTERM)]);
    let out = sim.feed(Input::Exited {
        pid: pid(100),
        code: 143,
    });
    assert_eq!(spawns(&out), 1);
    assert_eq!(released(&out), vec![1]);
    assert_eq!(sim.value(), "u2");
}

#[test]
fn restart_spread_does_not_delay_replacing_an_expiring_credential() {
    let mut sim = Sim::leased(|r| r.restart_spread = Some(Duration::from_secs(10)));
    sim.feed(Input::Expiring(1));
    let out = sim.feed(Input::Resolved(issued("u2", 2)));
    assert_eq!(sent(&out), vec![(100, SIGTERM)]);
}

/// `max_concurrent_restarts = { n = 1, vault = "vault", path = "locks/app" }`.
fn one_slot() -> crate::manifest::run::RestartSlots {
    crate::manifest::run::RestartSlots {
        n: 1,
        vault: "vault".into(),
        path: "locks/app".into(),
        ttl: Duration::from_secs(120),
    }
}

#[test]
fn max_concurrent_restarts_waits_for_a_slot_and_gives_it_back_after_the_hand_over() {
    let mut sim = Sim::with(|r| {
        r.max_concurrent_restarts = Some(one_slot());
    });
    sim.feed(Input::Signal(SIGHUP));
    let out = sim.feed(Input::Resolved(found("v2")));
    assert!(out.contains(&Action::Acquire), "{out:?}");
    assert!(sent(&out).is_empty(), "no restart without a slot: {out:?}");
    // All slots taken: the child keeps its values; asked again 1 s + a random part of 4 s
    // later (half of it here).
    let out = sim.feed(Input::Acquired(false));
    assert!(events(&out).contains(&&Event::Slot { what: "slot-wait" }));
    assert!(!sim.at(2.9).contains(&Action::Acquire));
    assert!(sim.at(3.1).contains(&Action::Acquire));
    assert_eq!(sim.value(), "v1");
    // A slot: the restart goes ahead, and the slot is given back once the new child runs.
    let out = sim.feed(Input::Acquired(true));
    assert_eq!(sent(&out), vec![(100, SIGTERM)]);
    assert!(!out.contains(&Action::ReleaseSlot));
    let out = sim.feed(Input::Exited {
        pid: pid(100),
        code: 143,
    });
    assert_eq!(spawns(&out), 1);
    assert!(out.contains(&Action::ReleaseSlot), "{out:?}");
    assert!(events(&out).contains(&&Event::Slot {
        what: "slot-released"
    }));
    assert_eq!(sim.value(), "v2");
}

fn cmd_ready() -> Ready {
    Ready {
        tcp: None,
        cmd: Some(vec!["true".into()]),
        notify: false,
        timeout: Duration::from_secs(2),
    }
}

/// A restart that took a slot; the new child (PID 101) has just started.
fn restarted_holding_a_slot() -> Sim {
    let mut sim = Sim::with(|r| {
        r.ready = Some(cmd_ready());
        r.max_concurrent_restarts = Some(one_slot());
    });
    sim.feed(Input::Signal(SIGHUP));
    sim.feed(Input::Resolved(found("v2")));
    assert_eq!(sent(&sim.feed(Input::Acquired(true))), vec![(100, SIGTERM)]);
    let out = sim.feed(Input::Exited {
        pid: pid(100),
        code: 143,
    });
    assert_eq!(spawns(&out), 1);
    assert!(out.contains(&Action::Probe(pid(101))), "{out:?}");
    assert!(
        !out.contains(&Action::ReleaseSlot),
        "not ready yet: {out:?}"
    );
    sim
}

#[test]
fn with_ready_a_restart_holds_its_slot_until_the_new_child_is_ready() {
    let mut sim = restarted_holding_a_slot();
    let out = sim.feed(Input::Probed {
        pid: pid(101),
        ready: false,
    });
    assert!(!out.contains(&Action::ReleaseSlot), "{out:?}");
    assert!(sim.at(0.2).contains(&Action::Probe(pid(101))));
    let out = sim.feed(Input::Probed {
        pid: pid(101),
        ready: true,
    });
    assert!(
        events(&out).contains(&&Event::Ready { pid: 101 }),
        "{out:?}"
    );
    assert!(out.contains(&Action::ReleaseSlot), "{out:?}");
    assert_eq!(sim.policy.child(), Some(pid(101)));
}

#[test]
fn a_restarted_child_never_ready_keeps_running_and_gives_the_slot_back_at_the_timeout() {
    let mut sim = restarted_holding_a_slot();
    sim.feed(Input::Probed {
        pid: pid(101),
        ready: false,
    });
    let (mut released, mut told) = (false, false);
    for step in 1..=25 {
        let out = sim.at(f64::from(step) * 0.1);
        assert!(
            sent(&out).is_empty(),
            "the new child is not stopped: {out:?}"
        );
        released |= out.contains(&Action::ReleaseSlot);
        told |= events(&out).contains(&&Event::NotReady { pid: 101 });
        if out.contains(&Action::Probe(pid(101))) {
            sim.feed(Input::Probed {
                pid: pid(101),
                ready: false,
            });
        }
    }
    assert!(released, "the slot is given back at ready.timeout");
    assert!(told, "audited not-ready");
    assert_eq!(sim.policy.child(), Some(pid(101)));
}

#[test]
fn a_restarted_child_that_fails_before_it_is_ready_ends_the_hand_over() {
    let mut sim = restarted_holding_a_slot();
    let out = sim.feed(Input::Exited {
        pid: pid(101),
        code: 3,
    });
    assert!(out.contains(&Action::ReleaseSlot), "{out:?}");
    assert_eq!(sim.policy.exit_code(), Some(3));
}
