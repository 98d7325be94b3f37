//! Panic injection (issue 14): every combinator and primitive, run once per
//! call into user code with that call panicking — child `poll` and `Drop`,
//! waker `clone`/`wake`/`wake_by_ref`/`drop`, pool managers, batch
//! functions and progress callbacks, retry operations, predicates and hooks,
//! watch hooks and timers — checking SPEC §1.13–1.15 after each run: every
//! child dropped exactly once and never freed undropped or moved while
//! pinned, no lost wake-up, permits and grants and pool slots all back, the
//! next waiter served, no hang, and the thing either still working or
//! refusing further use with a clear panic, as documented.
//!
//! The harness is `common/faults.rs`; each test is one scenario, explored at
//! every k (see `explore`). A failure lists, per k, the call that panicked
//! and the invariant that broke.

#[macro_use]
mod common;

use awaitkit::{
    AcquireError, OwnedSemaphorePermit, Panicked, PollSemaphore, ReturnWhen, Semaphore, WatchExt,
    as_completed, gather, gather_settled, process_batch, task_group, try_gather, try_wait, wait,
    wait_any,
};
use common::faults::*;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Which child (if any) the injected panic was in, and where ("poll",
/// "drop", "wake"). A panic in a child's own (wrapping) waker counts as the
/// child's: a `clone` (inside its poll) as "poll", a `wake` as "wake" (the
/// child's wake is lost: it stays pending), a `drop` as "drop".
fn faulted_child(ctx: &Ctx, n: usize) -> Option<(usize, String)> {
    (0..n).find_map(|i| {
        if let Some(what) = ctx.fault_in(&format!("child {i}'s waker")) {
            let kind = match what.as_str() {
                "clone" => "poll",
                "drop" => "drop",
                _ => "wake",
            };
            return Some((i, kind.to_owned()));
        }
        ctx.fault_in(&format!("child {i}")).map(|what| (i, what))
    })
}

/// Whether a panic payload is the injected one.
fn is_injected(p: Panicked) -> bool {
    p.into_payload().is::<Injected>()
}

/// Requires the injected panic not to have unwound out of a poll (for
/// combinators that capture their children's panics).
fn require_captured(ctx: &Ctx, what: &str) {
    if let (Some(f), Some(step)) = (ctx.fired(), ctx.escaped()) {
        if step.starts_with("poll") && f.site.starts_with("child") {
            ctx.fail(format!(
                "{what}: the panic in {} unwound out of `{step}` (documented: captured as the \
                 child's outcome)",
                f.site
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// gather, try_gather
// ---------------------------------------------------------------------------

#[test]
fn gather_completes() {
    explore("gather_completes", |ctx| {
        let (children, triggers) = ctx.parked_n(3, |i| i);
        let mut run =
            Run::new(ctx, "gather", OnPanic::Poisons, gather(children)).with_triggers(triggers);
        run.play("P F1 P W P F0 F2 P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("gather's output", out, vec![0, 1, 2])
        });
    });
}

#[test]
fn gather_self_waking_children() {
    explore("gather_self_waking_children", |ctx| {
        let children = vec![
            ctx.child("child 0", Mode::Yield(1), 0),
            ctx.child("child 1", Mode::Ready, 1),
            ctx.child("child 2", Mode::Yield(2), 2),
        ];
        let mut run = Run::new(ctx, "gather", OnPanic::Poisons, gather(children));
        run.play("P P P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("gather's output", out, vec![0, 1, 2])
        });
    });
}

#[test]
fn gather_cancelled() {
    explore("gather_cancelled", |ctx| {
        let (children, triggers) = ctx.parked_n(4, |i| i);
        let mut run =
            Run::new(ctx, "gather", OnPanic::Poisons, gather(children)).with_triggers(triggers);
        run.play("P F1 P X F0 F2");
        run.finish(false, |ctx, _| ctx.fail("a cancelled gather completed"));
    });
}

#[test]
fn try_gather_all_ok() {
    explore("try_gather_all_ok", |ctx| {
        let (children, triggers) = ctx.parked_n(3, Ok::<usize, usize>);
        let mut run = Run::new(ctx, "try_gather", OnPanic::Poisons, try_gather(children))
            .with_triggers(triggers);
        run.play("P F2 P F0 F1 P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("try_gather's output", out, Ok(vec![0, 1, 2]));
        });
    });
}

#[test]
fn try_gather_fail_fast() {
    explore("try_gather_fail_fast", |ctx| {
        let (children, triggers) = ctx.parked_n(4, |i| {
            if i == 1 {
                Err(i)
            } else {
                Ok::<usize, usize>(i)
            }
        });
        let ids: Vec<usize> = children.iter().map(Tracked::id).collect();
        let mut run = Run::new(ctx, "try_gather", OnPanic::Poisons, try_gather(children))
            .with_triggers(triggers);
        run.play("P F1 P F0");
        run.finish(true, |ctx, out| {
            ctx.check_eq("try_gather's output", out, Err(1));
            for i in [0, 2, 3] {
                ctx.check(ctx.book.drops(ids[i]) == 1, || {
                    format!("fail-fast: child {i} was not dropped before the error was returned")
                });
            }
        });
    });
}

#[test]
fn try_gather_cancelled() {
    explore("try_gather_cancelled", |ctx| {
        let (children, triggers) = ctx.parked_n(3, Ok::<usize, usize>);
        let mut run = Run::new(ctx, "try_gather", OnPanic::Poisons, try_gather(children))
            .with_triggers(triggers);
        run.play("P F0 P X");
        run.finish(false, |ctx, _| ctx.fail("a cancelled try_gather completed"));
    });
}

// ---------------------------------------------------------------------------
// gather!, try_gather!
// ---------------------------------------------------------------------------

#[test]
fn gather_macro_completes() {
    explore("gather_macro_completes", |ctx| {
        let (a, ta) = ctx.parked("child 0", 0_usize);
        let (b, tb) = ctx.parked("child 1", String::from("one"));
        let (c, tc) = ctx.parked("child 2", (2_u8,));
        let fut = awaitkit::gather!(a, b, c);
        let mut run =
            Run::new(ctx, "gather!", OnPanic::Poisons, fut).with_triggers(vec![ta, tb, tc]);
        run.play("P F2 P W P F0 F1 P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("gather!'s output", out, (0, "one".to_owned(), (2,)));
        });
    });
}

#[test]
fn gather_macro_cancelled() {
    explore("gather_macro_cancelled", |ctx| {
        let (a, ta) = ctx.parked("child 0", 0_usize);
        let (b, tb) = ctx.parked("child 1", 1_u32);
        let (c, tc) = ctx.parked("child 2", 2_u64);
        let fut = awaitkit::gather!(a, b, c);
        let mut run =
            Run::new(ctx, "gather!", OnPanic::Poisons, fut).with_triggers(vec![ta, tb, tc]);
        run.play("P F1 P X F0");
        run.finish(false, |ctx, _| ctx.fail("a cancelled gather! completed"));
    });
}

#[test]
fn try_gather_macro_fail_fast() {
    explore("try_gather_macro_fail_fast", |ctx| {
        let (a, ta) = ctx.parked("child 0", Ok::<u8, usize>(0));
        let (b, tb) = ctx.parked("child 1", Err::<String, usize>(1));
        let (c, tc) = ctx.parked("child 2", Ok::<(), usize>(()));
        let ids = [a.id(), b.id(), c.id()];
        let fut = awaitkit::try_gather!(a, b, c);
        let mut run =
            Run::new(ctx, "try_gather!", OnPanic::Poisons, fut).with_triggers(vec![ta, tb, tc]);
        run.play("P F1 P F0");
        run.finish(true, |ctx, out| {
            ctx.check_eq("try_gather!'s output", out, Err(1));
            for i in [0, 2] {
                ctx.check(ctx.book.drops(ids[i]) == 1, || {
                    format!("fail-fast: child {i} was not dropped before the error was returned")
                });
            }
        });
    });
}

#[test]
fn try_gather_macro_all_ok() {
    explore("try_gather_macro_all_ok", |ctx| {
        let (a, ta) = ctx.parked("child 0", Ok::<u8, usize>(0));
        let (b, tb) = ctx.parked("child 1", Ok::<u16, usize>(1));
        let fut = awaitkit::try_gather!(a, b);
        let mut run =
            Run::new(ctx, "try_gather!", OnPanic::Poisons, fut).with_triggers(vec![ta, tb]);
        run.play("P F1 P F0 P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("try_gather!'s output", out, Ok((0, 1)))
        });
    });
}

// ---------------------------------------------------------------------------
// gather_settled
// ---------------------------------------------------------------------------

/// Outcome `i` is `Ok(i)`, or (for the child whose poll or destructor
/// panicked) a `Panicked` carrying the injected payload.
fn check_settled(ctx: &Ctx, out: Vec<Result<usize, Panicked>>, n: usize) {
    ctx.check_eq("gather_settled's number of outcomes", out.len(), n);
    let faulted = faulted_child(ctx, n).map(|(i, _)| i);
    for (i, r) in out.into_iter().enumerate() {
        match r {
            Ok(v) if v == i && faulted != Some(i) => {}
            Err(p) if faulted == Some(i) => ctx.check(is_injected(p), || {
                format!("gather_settled's outcome {i}: a panic that is not the injected one")
            }),
            Ok(v) => ctx.fail(format!(
                "gather_settled's outcome {i}: Ok({v}), expected {}",
                if faulted == Some(i) {
                    "the captured panic".to_owned()
                } else {
                    format!("Ok({i})")
                }
            )),
            Err(_) => ctx.fail(format!(
                "gather_settled's outcome {i}: a panic that is not the injected one, or one \
                 recorded for the wrong child"
            )),
        }
    }
}

#[test]
fn gather_settled_completes() {
    explore("gather_settled_completes", |ctx| {
        let (children, triggers) = ctx.parked_n(3, |i| i);
        let mut run = Run::new(
            ctx,
            "gather_settled",
            OnPanic::Poisons,
            gather_settled(children),
        )
        .with_triggers(triggers);
        run.play("P F1 P F0 F2 P");
        require_captured(ctx, "gather_settled");
        run.finish(
            !ctx.escaped().is_some_and(|s| s.starts_with("poll")),
            |ctx, out| {
                check_settled(ctx, out, 3);
            },
        );
    });
}

#[test]
fn gather_settled_cancelled() {
    explore("gather_settled_cancelled", |ctx| {
        let (children, triggers) = ctx.parked_n(3, |i| i);
        let mut run = Run::new(
            ctx,
            "gather_settled",
            OnPanic::Poisons,
            gather_settled(children),
        )
        .with_triggers(triggers);
        run.play("P F1 P X");
        require_captured(ctx, "gather_settled");
        run.finish(false, |ctx, _| {
            ctx.fail("a cancelled gather_settled completed")
        });
    });
}

// ---------------------------------------------------------------------------
// as_completed / AsCompleted
// ---------------------------------------------------------------------------

/// The outputs a stream over children `0..n` must yield: all of them but
/// the child whose poll or destructor panicked (documented: one that
/// panicked while polled stays in the set, polled again only if it wakes;
/// one that panicked while dropped is gone).
fn check_yielded(ctx: &Ctx, name: &str, items: &[Option<usize>], n: usize, len_after: usize) {
    let faulted = faulted_child(ctx, n);
    let mut got: Vec<usize> = items.iter().flatten().copied().collect();
    got.sort_unstable();
    let want: Vec<usize> = (0..n)
        .filter(|i| faulted.as_ref().is_none_or(|(f, _)| f != i))
        .collect();
    ctx.check(got == want, || {
        format!("{name} yielded {got:?}, expected {want:?} (items in order: {items:?})")
    });
    let stays = usize::from(faulted.is_some_and(|(_, what)| what != "drop"));
    ctx.check_eq(&format!("{name}'s len() at the end"), len_after, stays);
    let ended = items.last() == Some(&None);
    ctx.check(ended == (stays == 0), || {
        format!("{name}: ended: {ended}, but {stays} child(ren) stayed in the set")
    });
}

#[test]
fn as_completed_drains_and_grows() {
    explore("as_completed_drains_and_grows", |ctx| {
        let (children, mut triggers) = ctx.parked_n(3, |i| i);
        let (late, late_trigger) = ctx.parked("child 3", 3);
        triggers.push(late_trigger);
        let mut run = Run::stream(ctx, "as_completed", NextOf(as_completed(children)))
            .with_triggers(triggers);
        run.play("P F1 P P");
        if let Some(set) = run.fut_mut() {
            let index = set.0.push(late);
            ctx.check_eq("index of the pushed child", index, 3);
        }
        run.play("P F3 F0 P P W P F2 P P P");
        let len = run.fut_mut().map_or(0, |set| set.0.len());
        check_yielded(ctx, "as_completed", &run.items, 4, len);
        run.finish(false, |_, _| {});
    });
}

#[test]
fn as_completed_dropped_while_pending() {
    explore("as_completed_dropped_while_pending", |ctx| {
        let (children, triggers) = ctx.parked_n(4, |i| i);
        let mut set = awaitkit::AsCompleted::new();
        for child in children {
            set.push(child);
        }
        let mut run = Run::stream(ctx, "AsCompleted", NextOf(set)).with_triggers(triggers);
        run.play("P F2 P P X F0");
        run.finish(false, |_, _| {});
    });
}

// ---------------------------------------------------------------------------
// wait_any, wait
// ---------------------------------------------------------------------------

#[test]
fn wait_any_then_drop_the_rest() {
    explore("wait_any_then_drop_the_rest", |ctx| {
        let (children, triggers) = ctx.parked_n(3, |i| i);
        let mut run =
            Run::new(ctx, "wait_any", OnPanic::Poisons, wait_any(children)).with_triggers(triggers);
        run.play("P F1 P");
        run.finish(true, |ctx, out| match out {
            Some((index, value, rest)) => {
                ctx.check_eq("wait_any's (index, output)", (index, value), (1, 1));
                ctx.check_eq("unfinished children handed back", rest.len(), 2);
                let _ = ctx.drop_step("drop the rest", rest);
            }
            None => ctx.fail("wait_any returned None for 3 children"),
        });
    });
}

#[test]
fn wait_any_then_drive_the_rest() {
    explore("wait_any_then_drive_the_rest", |ctx| {
        let (children, triggers) = ctx.parked_n(3, |i| i);
        let mut run = Run::new(ctx, "wait_any", OnPanic::Poisons, wait_any(children))
            .with_triggers(triggers.clone());
        run.play("P F2 P");
        run.finish(true, |ctx, out| {
            let Some((index, value, rest)) = out else {
                return ctx.fail("wait_any returned None for 3 children");
            };
            ctx.check_eq("wait_any's (index, output)", (index, value), (2, 2));
            let mut rest =
                Run::stream(ctx, "the rest of wait_any", NextOf(rest)).with_triggers(triggers);
            rest.play("P F0 P P F1 P P");
            let mut items = vec![Some(2)];
            items.append(&mut rest.items);
            let len = rest.fut_mut().map_or(0, |set| set.0.len());
            check_yielded(ctx, "wait_any + the rest", &items, 3, len);
            rest.finish(false, |_, _| {});
        });
    });
}

fn wait_scenario(ctx: &Ctx, when: ReturnWhen) {
    let (children, triggers) = ctx.parked_n(3, |i| i);
    let mut run =
        Run::new(ctx, "wait", OnPanic::Poisons, wait(children, when)).with_triggers(triggers);
    match when {
        ReturnWhen::FirstCompleted => run.play("P F2 P"),
        _ => run.play("P F2 P F0 P F1 P"),
    }
    run.finish(true, |ctx, out| {
        let mut done: Vec<(usize, usize)> = out.done.clone();
        done.sort_unstable();
        let (want_done, want_pending) = match when {
            ReturnWhen::FirstCompleted => (vec![(2, 2)], 2),
            _ => (vec![(0, 0), (1, 1), (2, 2)], 0),
        };
        ctx.check_eq("wait's done", done, want_done);
        ctx.check_eq("wait's pending", out.pending.len(), want_pending);
        ctx.check(!out.timed_out, || "wait timed out without a timeout".into());
        let _ = ctx.drop_step("drop the pending set", out.pending);
    });
}

#[test]
fn wait_first_completed() {
    explore("wait_first_completed", |ctx| {
        wait_scenario(ctx, ReturnWhen::FirstCompleted);
    });
}

#[test]
fn wait_all_completed() {
    explore("wait_all_completed", |ctx| {
        wait_scenario(ctx, ReturnWhen::AllCompleted)
    });
}

#[test]
fn wait_first_error() {
    explore("wait_first_error", |ctx| {
        let (children, triggers) = ctx.parked_n(3, |i| {
            if i == 1 {
                Err(i)
            } else {
                Ok::<usize, usize>(i)
            }
        });
        let mut run = Run::new(
            ctx,
            "try_wait",
            OnPanic::Poisons,
            try_wait(children, ReturnWhen::FirstError),
        )
        .with_triggers(triggers);
        run.play("P F0 P F1 P");
        run.finish(true, |ctx, out| {
            let mut done = out.done.clone();
            done.sort_unstable();
            ctx.check_eq("try_wait's done", done, vec![(0, Ok(0)), (1, Err(1))]);
            ctx.check_eq("try_wait's pending", out.pending.len(), 1);
            let _ = ctx.drop_step("drop the pending set", out.pending);
        });
    });
}

// ---------------------------------------------------------------------------
// task_group
// ---------------------------------------------------------------------------

type Res = Result<usize, usize>;

fn group_scenario(ctx: &Ctx, failing: Option<usize>) {
    let (tasks, triggers) = ctx.parked_n(3, |i| if Some(i) == failing { Err(i) } else { Ok(i) });
    let group = task_group(move |scope| {
        let handles: Vec<_> = tasks.into_iter().map(|t| scope.spawn(t)).collect();
        ctx.track("body", async move {
            let mut sum = 0;
            for handle in handles {
                sum += handle.await.expect("nothing aborts these tasks")?;
            }
            Ok::<usize, usize>(sum)
        })
    });
    let mut run = Run::new(ctx, "task_group", OnPanic::Poisons, group).with_triggers(triggers);
    run.play("P F1 P F0 P F2 P P");
    run.finish(true, |ctx, out: Res| {
        let want = match failing {
            Some(i) => Err(i),
            None => Ok(3),
        };
        ctx.check_eq("task_group's output", out, want);
    });
}

#[test]
fn task_group_completes() {
    explore("task_group_completes", |ctx| group_scenario(ctx, None));
}

#[test]
fn task_group_first_error_cancels_the_rest() {
    explore("task_group_first_error_cancels_the_rest", |ctx| {
        group_scenario(ctx, Some(1));
    });
}

/// Polls a task handle: it must never panic. A handle whose task was
/// cancelled (its group failed — here only because the injected panic hit
/// the task or the group) resolves to `TaskCancelled`.
fn poll_handle<T: PartialEq + std::fmt::Debug>(
    ctx: &Ctx,
    w: &mut Waiter<'_, awaitkit::TaskHandle<'_, T, usize>>,
) {
    w.poll_accepting(|_| false);
    if let Some(Err(cancelled)) = &w.output {
        ctx.check(ctx.fired().is_some() && !cancelled.is_aborted(), || {
            format!("a task was cancelled with no panic injected: {cancelled:?}")
        });
    }
}

#[test]
fn task_group_handle_awaited_outside() {
    explore("task_group_handle_awaited_outside", |ctx| {
        let (task, trigger) = ctx.parked("child 0", Ok::<usize, usize>(5));
        let (late, late_trigger) = ctx.parked("child 1", Ok::<usize, usize>(6));
        let mut scope_out = None;
        let group = task_group(|scope| {
            let handle = scope.spawn(task);
            scope_out = Some(scope.clone());
            ctx.track("body", async move {
                handle.await.expect("the body is dropped with its tasks")
            })
        });
        let scope = scope_out.expect("the body closure ran");
        let handle = ctx
            .step("spawn from outside the group", || scope.spawn(late))
            .done();
        let mut run = Run::new(ctx, "task_group", OnPanic::Poisons, group)
            .with_triggers(vec![trigger, late_trigger]);
        let mut outside = handle.map(|h| Waiter::new(ctx, "handle awaited outside", h));
        run.play("P");
        if let Some(w) = outside.as_mut() {
            poll_handle(ctx, w);
            w.rewaker();
            poll_handle(ctx, w);
        }
        run.play("F1 P F0 P P");
        if let Some(w) = outside.as_mut() {
            poll_handle(ctx, w);
            if run.output.is_some() {
                ctx.check(w.output == Some(Ok(Ok(6))), || {
                    "the handle awaited outside did not get its task's output".into()
                });
            }
        }
        drop(outside);
        drop(scope);
        run.finish(true, |ctx, out| {
            ctx.check_eq("task_group's output", out, Ok(5))
        });
    });
}

// ---------------------------------------------------------------------------
// process_batch
// ---------------------------------------------------------------------------

/// The batch function: hands out pre-built children (each a call of the
/// plan); the progress callback is another.
fn batch_parts<O: 'static, G: Fn(usize) -> O>(
    ctx: &Ctx,
    n: usize,
    out: G,
) -> (impl FnMut(usize) -> Child<O> + use<O, G>, Vec<Trigger>) {
    let (children, triggers) = ctx.parked_n(n, out);
    let mut slots: Vec<Option<Child<O>>> = children.into_iter().map(Some).collect();
    let plan = ctx.plan.clone();
    let f = move |i: usize| {
        plan.hit(|| format!("batch function f({i})"));
        slots[i].take().expect("each item is started once")
    };
    (f, triggers)
}

#[test]
fn process_batch_sliding_with_progress() {
    explore("process_batch_sliding_with_progress", |ctx| {
        let (f, triggers) = batch_parts(ctx, 4, |i| i);
        let plan = ctx.plan.clone();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let batch = process_batch(0..4, 2, f).on_progress(move |p| {
            plan.hit(|| format!("progress callback ({} done)", p.done));
            log.lock().unwrap().push(p.done);
        });
        let mut run =
            Run::new(ctx, "process_batch", OnPanic::Poisons, batch).with_triggers(triggers);
        run.play("P F1 P P F0 P P F3 F2 P P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("process_batch's output", out, vec![0, 1, 2, 3]);
            ctx.check_eq(
                "progress reports",
                seen.lock().unwrap().clone(),
                vec![1, 2, 3, 4],
            );
        });
    });
}

#[test]
fn process_batch_fixed_batches() {
    explore("process_batch_fixed_batches", |ctx| {
        let (f, triggers) = batch_parts(ctx, 4, |i| i);
        let plan = ctx.plan.clone();
        let batch = process_batch(0..4, 2, f)
            .fixed_batches()
            .on_progress(move |p| plan.hit(|| format!("progress callback ({} done)", p.done)));
        let mut run =
            Run::new(ctx, "process_batch (fixed)", OnPanic::Poisons, batch).with_triggers(triggers);
        run.play("P F1 P F0 P P F2 P F3 P P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("process_batch's output", out, vec![0, 1, 2, 3]);
        });
    });
}

#[test]
fn process_batch_fail_fast() {
    explore("process_batch_fail_fast", |ctx| {
        let (f, triggers) = batch_parts(ctx, 4, |i| if i == 1 { Err(i) } else { Ok(i) });
        let batch = process_batch(0..4, 3, f).fail_fast();
        let mut run = Run::new(ctx, "process_batch (fail fast)", OnPanic::Poisons, batch)
            .with_triggers(triggers);
        run.play("P F0 P P F1 P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("process_batch's output", out, Err(1))
        });
    });
}

#[test]
fn process_batch_cancelled() {
    explore("process_batch_cancelled", |ctx| {
        let (f, triggers) = batch_parts(ctx, 5, |i| i);
        let batch = process_batch(0..5, 3, f);
        let mut run =
            Run::new(ctx, "process_batch", OnPanic::Poisons, batch).with_triggers(triggers);
        run.play("P F1 P P X F0");
        run.finish(false, |ctx, _| ctx.fail("a cancelled batch completed"));
    });
}

// ---------------------------------------------------------------------------
// watch
// ---------------------------------------------------------------------------

#[test]
fn watch_with_a_slow_poll_hook() {
    explore("watch_with_a_slow_poll_hook", |ctx| {
        let (child, trigger) = ctx.parked("child 0", 7_usize);
        let plan = ctx.plan.clone();
        let watched = child
            .watch("watched")
            .threshold(Duration::ZERO)
            .on_slow_poll(move |slow| plan.hit(|| format!("slow-poll hook (poll {})", slow.poll)));
        let mut run = Run::new(ctx, "Watch", OnPanic::Continues, Box::pin(watched))
            .with_triggers(vec![trigger]);
        run.play("P N0 P F0 P");
        run.finish(true, |ctx, out| ctx.check_eq("Watch's output", out, 7));
    });
}

#[test]
fn watch_report_under_gather() {
    explore("watch_report_under_gather", |ctx| {
        let plan = ctx.plan.clone();
        let report = awaitkit::watch::Report::new()
            .threshold(Duration::ZERO)
            .on_slow_poll(move |slow| {
                plan.hit(|| format!("report hook ({:?} poll {})", slow.index, slow.poll));
            });
        let (children, triggers) = ctx.parked_n(3, |i| i);
        let watched: Vec<_> = children
            .into_iter()
            .enumerate()
            .map(|(i, c)| report.watch(format!("c{i}"), c))
            .collect();
        let mut run = Run::new(
            ctx,
            "gather of watched children",
            OnPanic::Poisons,
            gather(watched),
        )
        .with_triggers(triggers);
        run.play("P F0 P F2 F1 P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("gather's output", out, vec![0, 1, 2])
        });
        // Every watched child was dropped: none may still be reported running.
        for child in report.children() {
            ctx.check(child.outcome != awaitkit::watch::Outcome::Running, || {
                format!(
                    "report: child {} still Running after it was dropped",
                    child.index
                )
            });
        }
    });
}

// ---------------------------------------------------------------------------
// Semaphore
// ---------------------------------------------------------------------------

/// A waiter of a primitive, whatever its future.
trait Drive {
    fn poll(&mut self) -> Option<bool>;
    fn is_pending(&self) -> bool;
    fn release(&mut self);
    fn finish(&mut self);
    fn name(&self) -> &str;
}

impl<F: Future + Unpin> Drive for Waiter<'_, F> {
    fn poll(&mut self) -> Option<bool> {
        Waiter::poll(self)
    }
    fn is_pending(&self) -> bool {
        Waiter::is_pending(self)
    }
    fn release(&mut self) {
        if let Some(out) = self.take() {
            let what = format!("release {}'s output", self.name);
            let _ = self.ctx().drop_step(&what, out);
        }
    }
    fn finish(&mut self) {
        self.drop_all();
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// After the script: every waiter still waiting is served in turn (each
/// release waking the next), then nothing is held or queued any more.
fn drain(ctx: &Ctx, waiters: &mut [&mut dyn Drive]) {
    for _ in 0..=waiters.len() {
        for w in waiters.iter_mut() {
            if w.is_pending() {
                w.poll();
            }
            w.release();
        }
    }
    for w in waiters.iter_mut() {
        ctx.check(!w.is_pending(), || {
            format!(
                "{} was never served: the primitive is wedged, or a wake-up was lost",
                w.name()
            )
        });
        w.finish();
    }
}

/// The semaphore is whole again: every permit back, nobody queued, and a
/// fresh acquire of all of them succeeds.
fn check_semaphore(ctx: &Ctx, sem: &Semaphore, capacity: usize) {
    let stats = sem.stats();
    ctx.check_eq(
        "semaphore: available permits at the end",
        sem.available_permits(),
        capacity,
    );
    ctx.check_eq("semaphore: waiters at the end", stats.waiters, 0);
    ctx.check_eq("semaphore: permits in use at the end", stats.in_use, 0);
    if !sem.is_closed() {
        ctx.check(sem.try_acquire_many(capacity).is_ok(), || {
            "semaphore: a fresh try_acquire_many(capacity) failed".into()
        });
    }
}

/// A waiter that completed must have its permit (the semaphore is open and
/// the request fits).
fn check_granted<P, F>(ctx: &Ctx, w: &Waiter<'_, F>)
where
    F: Future<Output = Result<P, AcquireError>> + Unpin,
{
    if let Some(Err(e)) = &w.output {
        ctx.fail(format!("{} failed: {e}", w.name));
    }
}

/// An acquire polled through `PollSemaphore`, as a future.
struct PollAcquire(PollSemaphore);

impl Future for PollAcquire {
    type Output = Option<OwnedSemaphorePermit>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_acquire(cx)
    }
}

#[test]
fn semaphore_hand_off_in_fifo_order() {
    explore("semaphore_hand_off_in_fifo_order", |ctx| {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().expect("a free permit");
        let mut a = Waiter::new(ctx, "waiter A (acquire)", sem.acquire());
        let mut b = Waiter::new(ctx, "waiter B (acquire_many(1))", sem.acquire_many(1));
        let mut c = Waiter::new(ctx, "waiter C (acquire_owned)", sem.clone().acquire_owned());
        let mut d = Waiter::new(
            ctx,
            "waiter D (PollSemaphore)",
            PollAcquire(PollSemaphore::new(sem.clone())),
        );
        a.poll();
        b.poll();
        c.poll();
        d.poll();
        let _ = ctx.drop_step("release the held permit", held);
        a.poll();
        b.rewaker();
        b.poll();
        a.release();
        b.poll();
        c.poll();
        b.release();
        c.poll();
        c.release();
        d.poll();
        d.release();
        drain(ctx, &mut [&mut a, &mut b, &mut c, &mut d]);
        check_semaphore(ctx, &sem, 1);
    });
}

#[test]
fn semaphore_add_permits_wakes_every_granted_waiter() {
    explore("semaphore_add_permits_wakes_every_granted_waiter", |ctx| {
        let sem = Semaphore::new(1);
        let held = sem.try_acquire().expect("a free permit");
        let mut waiters: Vec<_> = (0..3)
            .map(|i| Waiter::new(ctx, format!("waiter {i}"), sem.acquire()))
            .collect();
        for w in &mut waiters {
            w.poll();
        }
        // Two waiters granted at once, woken after the lock is released.
        let _ = ctx.step("add_permits(2)", || sem.add_permits(2));
        for w in &mut waiters {
            w.poll();
        }
        let _ = ctx.drop_step("release the held permit", held);
        for w in &mut waiters {
            w.poll();
            check_granted(ctx, w);
        }
        let mut refs: Vec<&mut dyn Drive> =
            waiters.iter_mut().map(|w| w as &mut dyn Drive).collect();
        drain(ctx, &mut refs);
        drop(waiters);
        check_semaphore(ctx, &sem, 3);
    });
}

#[test]
fn semaphore_release_of_many_wakes_every_granted_waiter() {
    explore(
        "semaphore_release_of_many_wakes_every_granted_waiter",
        |ctx| {
            let sem = Semaphore::new(3);
            let held = sem.try_acquire_many(3).expect("free permits");
            let mut waiters: Vec<_> = (0..3)
                .map(|i| Waiter::new(ctx, format!("waiter {i}"), sem.acquire()))
                .collect();
            for w in &mut waiters {
                w.poll();
            }
            let _ = ctx.drop_step("release 3 permits at once", held);
            for w in &mut waiters {
                w.poll();
                check_granted(ctx, w);
            }
            let mut refs: Vec<&mut dyn Drive> =
                waiters.iter_mut().map(|w| w as &mut dyn Drive).collect();
            drain(ctx, &mut refs);
            drop(waiters);
            check_semaphore(ctx, &sem, 3);
        },
    );
}

#[test]
fn semaphore_close_fails_every_waiter() {
    explore("semaphore_close_fails_every_waiter", |ctx| {
        let sem = Semaphore::new(1);
        let held = sem.try_acquire().expect("a free permit");
        let mut waiters: Vec<_> = (0..3)
            .map(|i| Waiter::new(ctx, format!("waiter {i}"), sem.acquire()))
            .collect();
        for w in &mut waiters {
            w.poll();
        }
        let _ = ctx.step("close()", || sem.close());
        for w in &mut waiters {
            w.poll();
            if let Some(out) = &w.output {
                ctx.check(matches!(out, Err(e) if e.is_closed()), || {
                    format!("{} got a permit from a closed semaphore", w.name)
                });
            }
        }
        let mut refs: Vec<&mut dyn Drive> =
            waiters.iter_mut().map(|w| w as &mut dyn Drive).collect();
        drain(ctx, &mut refs);
        drop(waiters);
        drop(held);
        ctx.check(sem.is_closed(), || "the semaphore is not closed".into());
        let mut late = Waiter::new(ctx, "an acquire after close", sem.acquire());
        late.poll();
        ctx.check(
            matches!(&late.output, Some(Err(e)) if e.is_closed()),
            || "an acquire after close did not fail at once".into(),
        );
        drop(late);
        check_semaphore(ctx, &sem, 1);
    });
}

#[test]
fn semaphore_cancel_hands_partial_permits_on() {
    explore("semaphore_cancel_hands_partial_permits_on", |ctx| {
        let sem = Semaphore::new(2);
        let held = sem.try_acquire().expect("a free permit");
        let mut big = Waiter::new(ctx, "waiter A (acquire_many(2))", sem.acquire_many(2));
        let mut small = Waiter::new(ctx, "waiter B (acquire)", sem.acquire());
        let mut third = Waiter::new(ctx, "waiter C (acquire)", sem.acquire());
        big.poll();
        small.poll();
        third.poll();
        big.finish();
        small.poll();
        small.release();
        third.poll();
        drop(held);
        drain(ctx, &mut [&mut big, &mut small, &mut third]);
        check_semaphore(ctx, &sem, 2);
    });
}

#[test]
fn semaphore_limit_under_gather() {
    explore("semaphore_limit_under_gather", |ctx| {
        let sem = Semaphore::new(1);
        let (children, triggers) = ctx.parked_n(3, |i| i);
        let limited: Vec<_> = children.into_iter().map(|c| sem.limit(c)).collect();
        let mut run = Run::new(ctx, "gather of limits", OnPanic::Poisons, gather(limited))
            .with_triggers(triggers);
        run.play("P F0 P F1 P F2 P");
        run.finish(true, |ctx, out: Vec<Result<usize, AcquireError>>| {
            ctx.check_eq("outputs", out, vec![Ok(0), Ok(1), Ok(2)]);
        });
        check_semaphore(ctx, &sem, 1);
    });
}

#[test]
fn semaphore_limit_cancelled() {
    explore("semaphore_limit_cancelled", |ctx| {
        let sem = Semaphore::new(1);
        let (children, triggers) = ctx.parked_n(3, |i| i);
        let limited: Vec<_> = children.into_iter().map(|c| sem.limit(c)).collect();
        let mut run = Run::new(ctx, "gather of limits", OnPanic::Poisons, gather(limited))
            .with_triggers(triggers);
        run.play("P F0 P X");
        run.finish(false, |ctx, _| ctx.fail("a cancelled gather completed"));
        check_semaphore(ctx, &sem, 1);
    });
}

/// A waker whose every event calls back into the semaphore (which takes its
/// lock): a semaphore that clones, wakes or drops wakers under its lock
/// deadlocks here (a hang) or panics.
#[test]
fn semaphore_wakers_that_call_back_in() {
    explore("semaphore_wakers_that_call_back_in", |ctx| {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().expect("a free permit");
        let mut waiters: Vec<_> = (0..3)
            .map(|i| {
                let back = sem.clone();
                let probe = ctx.reentrant_probe(format!("re-entrant waker {i}"), move |_| {
                    let _ = back.stats();
                    let _ = back.try_acquire();
                });
                Waiter::with_probe(
                    ctx,
                    format!("waiter {i}"),
                    probe,
                    sem.clone().acquire_owned(),
                )
            })
            .collect();
        for w in &mut waiters {
            w.poll();
        }
        waiters[1].rewaker();
        waiters[1].poll();
        let _ = ctx.drop_step("release the held permit", held);
        waiters[2].finish();
        let mut refs: Vec<&mut dyn Drive> =
            waiters.iter_mut().map(|w| w as &mut dyn Drive).collect();
        drain(ctx, &mut refs);
        drop(waiters);
        check_semaphore(ctx, &sem, 1);
    });
}

// ---------------------------------------------------------------------------
// Time: timeouts, deadlines, rate limits, pools, retries, batch pacing — all
// on the fault-injecting timer (a `ManualClock` underneath), whose `now`,
// `sleep_until`, `reset` and sleeps' polls and drops are calls of the plan.
// ---------------------------------------------------------------------------

#[cfg(feature = "test-util")]
mod timed {
    use super::*;
    use awaitkit::pool::{Manager, PoolError};
    use awaitkit::rate_limiter::Quota;
    use awaitkit::time::Timer;
    use awaitkit::{Backoff, KeyedRateLimiter, Pool, RateLimiter, RetryPolicy, timeout};
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MS: Duration = Duration::from_millis(1);

    /// Every waiter still waiting is served as the clock moves on (each poll
    /// checking that it was woken first), then nothing is left waiting.
    fn drain_with_clock(ctx: &Ctx, waiters: &mut [&mut dyn Drive], tick: Duration) {
        for _ in 0..8 {
            if waiters.iter().all(|w| !w.is_pending()) {
                break;
            }
            let _ = ctx.advance(tick);
            for w in waiters.iter_mut() {
                if w.is_pending() {
                    w.poll();
                }
                w.release();
            }
        }
        drain(ctx, waiters);
    }

    // -- timeout -----------------------------------------------------------

    #[test]
    fn timeout_inner_wins() {
        explore("timeout_inner_wins", |ctx| {
            let (child, trigger) = ctx.parked("child 0", 3_usize);
            let fut = Box::pin(timeout(1000 * MS, child).with_timer(ctx.timer()));
            let mut run =
                Run::new(ctx, "timeout", OnPanic::Continues, fut).with_triggers(vec![trigger]);
            run.play("P A500 P F0 P");
            run.finish(true, |ctx, out| {
                ctx.check_eq("timeout's output", out, Ok(3))
            });
        });
    }

    #[test]
    fn timeout_elapses_and_drops_the_inner_future() {
        explore("timeout_elapses_and_drops_the_inner_future", |ctx| {
            let (child, trigger) = ctx.parked("child 0", 3_usize);
            let id = child.id();
            let fut = Box::pin(timeout(1000 * MS, child).with_timer(ctx.timer()));
            let mut run =
                Run::new(ctx, "timeout", OnPanic::Continues, fut).with_triggers(vec![trigger]);
            run.play("P A500 P A500 E P");
            run.finish(true, |ctx, out| {
                ctx.check(out.is_err(), || {
                    format!("timeout's output: {out:?}, expected Elapsed")
                });
                ctx.check_eq(
                    "drops of the inner future when the timeout fired",
                    ctx.book.drops(id),
                    1,
                );
            });
        });
    }

    #[test]
    fn timeout_reset() {
        explore("timeout_reset", |ctx| {
            let (child, trigger) = ctx.parked("child 0", 3_usize);
            let clock = ctx.timer().clock;
            let fut = Box::pin(timeout(1000 * MS, child).with_timer(ctx.timer()));
            let mut run =
                Run::new(ctx, "timeout", OnPanic::Continues, fut).with_triggers(vec![trigger]);
            run.play("P");
            let at = clock.now() + 200 * MS;
            let mut panicked_but_moved = false;
            let mut moved = true;
            if let Some(fut) = run.fut_mut() {
                if let Step::Injected = ctx.step("reset the deadline", || fut.as_mut().reset(at)) {
                    // The timer panicked inside `reset`: the deadline the
                    // timeout reports must be the one it keeps.
                    moved = fut.deadline() == Some(at);
                    panicked_but_moved = moved;
                }
            }
            if moved {
                run.play("A200");
                if panicked_but_moved {
                    run.expect_woken(
                        "`reset` panicked in the timer after the timeout had taken the new \
                         deadline (its deadline() reports it), and the clock passed it",
                    );
                } else {
                    run.play("E");
                }
                run.play("P");
            } else {
                run.play("A1000 E P");
            }
            run.finish(true, |ctx, out| {
                ctx.check(out.is_err(), || {
                    format!("timeout's output: {out:?}, expected Elapsed")
                });
            });
        });
    }

    // -- deadlines of wait and as_completed --------------------------------

    #[test]
    fn wait_with_timeout() {
        explore("wait_with_timeout", |ctx| {
            let (children, triggers) = ctx.parked_n(3, |i| i);
            let fut = wait(children, ReturnWhen::AllCompleted)
                .with_timeout(1000 * MS)
                .with_timer(ctx.timer());
            let mut run =
                Run::new(ctx, "wait (timeout)", OnPanic::Poisons, fut).with_triggers(triggers);
            run.play("P F1 P A1000 E P");
            run.finish(true, |ctx, out| {
                ctx.check_eq("wait's done", out.done.clone(), vec![(1, 1)]);
                ctx.check_eq("wait's pending", out.pending.len(), 2);
                ctx.check(out.timed_out, || "wait did not time out".into());
                let _ = ctx.drop_step("drop the pending set", out.pending);
            });
        });
    }

    #[test]
    fn as_completed_with_timeout() {
        explore("as_completed_with_timeout", |ctx| {
            let (children, triggers) = ctx.parked_n(3, |i| i);
            let stream = as_completed(children)
                .with_timeout(1000 * MS)
                .with_timer(ctx.timer());
            let mut run =
                Run::stream(ctx, "as_completed (timeout)", NextOf(stream)).with_triggers(triggers);
            run.play("P F0 P P A1000 E P P");
            let items = run.take_items();
            let mut shape = Vec::new();
            let mut rest = Vec::new();
            for item in items {
                match item {
                    Some(Ok(v)) => shape.push(format!("Ok({v})")),
                    Some(Err(timed_out)) => {
                        shape.push(format!("TimedOut({})", timed_out.pending.len()));
                        rest.push(timed_out.pending);
                    }
                    None => shape.push("None".into()),
                }
            }
            let faulted = faulted_child(ctx, 3);
            if faulted.is_none() {
                ctx.check_eq(
                    "as_completed (timeout)'s items",
                    shape,
                    vec![
                        "Ok(0)".to_owned(),
                        "TimedOut(2)".to_owned(),
                        "None".to_owned(),
                    ],
                );
            }
            let _ = ctx.drop_step("drop the unfinished set", rest);
            run.finish(false, |_, _| {});
        });
    }

    // -- semaphore acquire timeout ------------------------------------------

    #[test]
    fn semaphore_acquire_timeout() {
        explore("semaphore_acquire_timeout", |ctx| {
            let sem = Semaphore::new(1);
            let held = sem.try_acquire().expect("a free permit");
            let mut a = Waiter::new(
                ctx,
                "waiter A (acquire_timeout)",
                sem.acquire_timeout(1000 * MS).with_timer(ctx.timer()),
            );
            let mut b = Waiter::new(ctx, "waiter B (acquire)", sem.acquire());
            a.poll();
            b.poll();
            let _ = ctx.advance(1000 * MS);
            a.poll();
            if let Some(out) = &a.output {
                ctx.check(out.is_err(), || {
                    "acquire_timeout got a permit nobody released".into()
                });
            }
            let _ = ctx.drop_step("release the held permit", held);
            b.poll();
            drain_with_clock(ctx, &mut [&mut a, &mut b], 1000 * MS);
            check_semaphore(ctx, &sem, 1);
        });
    }

    // -- the manual clock itself -------------------------------------------

    /// Two sleepers due at the same instant: a panic in the first one's
    /// waker must not keep the second asleep.
    #[test]
    fn manual_clock_wakes_every_due_sleeper() {
        explore("manual_clock_wakes_every_due_sleeper", |ctx| {
            let timer = ctx.timer();
            let mut sleepers: Vec<_> = (0..3)
                .map(|i| {
                    let sleep =
                        timeout(1000 * MS, std::future::pending::<()>()).with_timer(timer.clone());
                    Waiter::new(ctx, format!("sleeper {i}"), sleep)
                })
                .collect();
            for s in &mut sleepers {
                s.poll();
            }
            let _ = ctx.advance(1000 * MS);
            for s in &mut sleepers {
                s.poll();
            }
            let mut refs: Vec<&mut dyn Drive> =
                sleepers.iter_mut().map(|w| w as &mut dyn Drive).collect();
            drain_with_clock(ctx, &mut refs, 1000 * MS);
        });
    }

    // -- RateLimiter ---------------------------------------------------------

    /// Checks that the limiter is whole: nobody waiting, and after an idle
    /// period exactly `burst` immediate calls pass and the next is limited.
    fn check_limiter<T: Timer>(ctx: &Ctx, limiter: &RateLimiter<T>, burst: usize) {
        ctx.check_eq("rate limiter: waiting at the end", limiter.waiting(), 0);
        let _ = ctx.advance(10_000 * MS);
        let mut passed = 0;
        for i in 0..burst {
            match ctx.step("try_acquire after an idle period", || limiter.try_acquire()) {
                Step::Done(Ok(())) => passed += 1,
                Step::Done(Err(e)) => ctx.fail(format!(
                    "rate limiter: call {i} of a fresh burst of {burst} was refused: {e}"
                )),
                Step::Injected | Step::Failed(_) => {}
            }
        }
        if passed == burst {
            if let Step::Done(Ok(())) =
                ctx.step("try_acquire past the burst", || limiter.try_acquire())
            {
                ctx.fail("rate limiter: more calls than the quota passed");
            }
        }
    }

    fn rate_scenario(ctx: &Ctx, quota: Quota, burst: usize) {
        let timer = ctx.timer();
        let Some(limiter) = ctx
            .step("RateLimiter::with_timer", || {
                RateLimiter::with_quota(quota).with_timer(timer)
            })
            .done()
        else {
            return;
        };
        for _ in 0..burst {
            let _ = ctx.step("try_acquire", || limiter.try_acquire());
        }
        let mut a = Waiter::new(ctx, "waiter A (acquire)", limiter.acquire());
        let mut b = Waiter::new(
            ctx,
            "waiter B (acquire_n(2))",
            limiter.acquire_n(2.min(burst)),
        );
        let mut c = Waiter::new(ctx, "waiter C (acquire)", limiter.acquire());
        let mut d = Waiter::new(ctx, "waiter D (acquire, cancelled)", limiter.acquire());
        a.poll();
        b.poll();
        c.poll();
        d.poll();
        d.finish();
        let _ = ctx.advance(1000 * MS);
        a.poll();
        b.rewaker();
        b.poll();
        c.poll();
        let _ = ctx.advance(1000 * MS);
        b.poll();
        c.poll();
        drain_with_clock(ctx, &mut [&mut a, &mut b, &mut c, &mut d], 1000 * MS);
        check_limiter(ctx, &limiter, burst);
    }

    #[test]
    fn rate_limiter_window() {
        explore("rate_limiter_window", |ctx| {
            rate_scenario(ctx, Quota::window(2, 1000 * MS).expect("a valid quota"), 2);
        });
    }

    #[test]
    fn rate_limiter_gcra() {
        explore("rate_limiter_gcra", |ctx| {
            rate_scenario(ctx, Quota::gcra(2, 1000 * MS, 2).expect("a valid quota"), 2);
        });
    }

    /// Waiters whose wakers call back into the limiter (which takes its
    /// lock) on every event: a limiter that clones, wakes or drops a waker
    /// under its lock deadlocks here.
    #[test]
    fn rate_limiter_wakers_that_call_back_in() {
        explore("rate_limiter_wakers_that_call_back_in", |ctx| {
            let timer = ctx.timer();
            let quota = Quota::window(1, 1000 * MS).expect("a valid quota");
            let Some(limiter) = ctx
                .step("RateLimiter::with_timer", || {
                    Arc::new(RateLimiter::with_quota(quota).with_timer(timer))
                })
                .done()
            else {
                return;
            };
            let _ = ctx.step("try_acquire", || limiter.try_acquire());
            let mut waiters: Vec<_> = (0..3)
                .map(|i| {
                    let back = limiter.clone();
                    let probe = ctx.reentrant_probe(format!("re-entrant waker {i}"), move |_| {
                        let _ = back.waiting();
                        let _ = back.try_acquire();
                    });
                    Waiter::with_probe(ctx, format!("waiter {i}"), probe, limiter.acquire())
                })
                .collect();
            for w in &mut waiters {
                w.poll();
            }
            waiters[1].rewaker();
            waiters[1].poll();
            waiters[2].finish();
            let mut refs: Vec<&mut dyn Drive> =
                waiters.iter_mut().map(|w| w as &mut dyn Drive).collect();
            drain_with_clock(ctx, &mut refs, 1000 * MS);
            drop(waiters);
            ctx.check_eq("rate limiter: waiting at the end", limiter.waiting(), 0);
        });
    }

    #[test]
    fn keyed_rate_limiter() {
        explore("keyed_rate_limiter", |ctx| {
            let limiter =
                KeyedRateLimiter::with_quota(Quota::window(1, 1000 * MS).expect("a valid quota"))
                    .with_timer(ctx.timer());
            let _ = ctx.step("try_acquire(a)", || limiter.try_acquire("a"));
            let mut a = Waiter::make(ctx, "waiter on key a", || limiter.acquire("a"));
            let mut a2 = Waiter::make(ctx, "second waiter on key a", || limiter.acquire("a"));
            let mut b = Waiter::make(ctx, "waiter on key b", || limiter.acquire("b"));
            a.poll();
            a2.poll();
            b.poll();
            let _ = ctx.advance(1000 * MS);
            a.poll();
            a2.poll();
            drain_with_clock(ctx, &mut [&mut a, &mut a2, &mut b], 1000 * MS);
            let _ = ctx.advance(10_000 * MS);
            if let Step::Injected = ctx.step("evict idle keys", || limiter.evict_idle()) {
                // It panicked in the timer: it must still work.
                let _ = ctx.step("evict idle keys again", || limiter.evict_idle());
            }
            ctx.check_eq("keys left after evicting idle ones", limiter.len(), 0);
            for key in ["a", "b", "c"] {
                if let Step::Done(Err(e)) =
                    ctx.step("fresh try_acquire", || limiter.try_acquire(key))
                {
                    ctx.fail(format!(
                        "keyed limiter: a fresh call on key {key} was refused: {e}"
                    ));
                }
            }
        });
    }

    /// A quota change grants the queued waiters at once; their wakers call
    /// back into the keyed limiter (its map lock) on every event.
    #[test]
    fn keyed_rate_limiter_set_quota_with_wakers_that_call_back_in() {
        explore(
            "keyed_rate_limiter_set_quota_with_wakers_that_call_back_in",
            |ctx| {
                let limiter = Arc::new(
                    KeyedRateLimiter::with_quota(
                        Quota::window(1, 1000 * MS).expect("a valid quota"),
                    )
                    .with_timer(ctx.timer()),
                );
                let _ = ctx.step("try_acquire(a)", || limiter.try_acquire("a"));
                let mut waiters: Vec<_> = (0..3)
                    .map(|i| {
                        let back = limiter.clone();
                        let probe =
                            ctx.reentrant_probe(format!("re-entrant waker {i}"), move |_| {
                                let _ = back.len();
                                let _ = back.try_acquire("z");
                            });
                        let name = format!("waiter {i} on key a");
                        let mut w =
                            Waiter::make_with_probe(ctx, name, probe, || limiter.acquire("a"));
                        w.poll();
                        w
                    })
                    .collect();
                let wider = Quota::window(4, 1000 * MS).expect("a valid quota");
                if let Step::Done(Err(e)) =
                    ctx.step("set_quota(4 per second)", || limiter.set_quota(wider))
                {
                    ctx.fail(format!("set_quota failed: {e}"));
                }
                for w in &mut waiters {
                    w.poll();
                }
                let mut refs: Vec<&mut dyn Drive> =
                    waiters.iter_mut().map(|w| w as &mut dyn Drive).collect();
                drain_with_clock(ctx, &mut refs, 1000 * MS);
                drop(waiters);
                let _ = ctx.advance(10_000 * MS);
                if let Step::Injected = ctx.step("evict idle keys", || limiter.evict_idle()) {
                    // It panicked in the timer: it must still work.
                    let _ = ctx.step("evict idle keys again", || limiter.evict_idle());
                }
                ctx.check_eq("keys left after evicting idle ones", limiter.len(), 0);
            },
        );
    }

    // -- Pool ----------------------------------------------------------------

    /// A pooled object whose destructor is user code.
    struct Obj {
        id: usize,
        plan: Plan,
        live: Arc<AtomicUsize>,
    }

    impl Drop for Obj {
        fn drop(&mut self) {
            self.live.fetch_sub(1, Ordering::SeqCst);
            self.plan.hit(|| format!("object #{} drop", self.id));
        }
    }

    /// A manager whose `create` and `recycle` (and their futures) are user
    /// code; the `fail_create`-th create and the `fail_recycle`-th recycle
    /// fail (0: never).
    struct FaultManager {
        tracker: Tracker,
        made: AtomicUsize,
        recycled: AtomicUsize,
        live: Arc<AtomicUsize>,
        fail_create: usize,
        fail_recycle: usize,
    }

    impl Manager for FaultManager {
        type Object = Obj;
        type Error = usize;

        fn create(&self) -> impl Future<Output = Result<Obj, usize>> + Send {
            let n = self.made.fetch_add(1, Ordering::SeqCst) + 1;
            self.tracker.plan.hit(|| format!("Manager::create #{n}"));
            let out = if n == self.fail_create {
                Err(n)
            } else {
                self.live.fetch_add(1, Ordering::SeqCst);
                Ok(Obj {
                    id: n,
                    plan: self.tracker.plan.clone(),
                    live: self.live.clone(),
                })
            };
            self.tracker
                .child(format!("create #{n} future"), Mode::Yield(1), out)
        }

        fn recycle(&self, object: &mut Obj) -> impl Future<Output = Result<(), usize>> + Send {
            let n = self.recycled.fetch_add(1, Ordering::SeqCst) + 1;
            self.tracker
                .plan
                .hit(|| format!("Manager::recycle #{n} (object #{})", object.id));
            let out = if n == self.fail_recycle {
                Err(n)
            } else {
                Ok(())
            };
            self.tracker
                .child(format!("recycle #{n} future"), Mode::Ready, out)
        }
    }

    fn manager(
        ctx: &Ctx,
        fail_create: usize,
        fail_recycle: usize,
    ) -> (FaultManager, Arc<AtomicUsize>) {
        let live = Arc::new(AtomicUsize::new(0));
        (
            FaultManager {
                tracker: ctx.tracker(),
                made: AtomicUsize::new(0),
                recycled: AtomicUsize::new(0),
                live: live.clone(),
                fail_create,
                fail_recycle,
            },
            live,
        )
    }

    /// The pool is whole: nothing in use or waiting, every object it counts
    /// is alive (and none it dropped is), and a fresh get succeeds.
    fn check_pool<T: Timer + Clone + Send + Sync + 'static>(
        ctx: &Ctx,
        pool: &Pool<FaultManager, T>,
        live: &AtomicUsize,
    ) {
        let status = pool.status();
        ctx.check_eq("pool: in use at the end", status.in_use, 0);
        ctx.check_eq("pool: waiting at the end", status.waiting, 0);
        ctx.check_eq(
            "pool: objects alive vs. the pool's size",
            live.load(Ordering::SeqCst),
            status.size,
        );
        // A fresh get succeeds (a second one if the injected panic hit the
        // first).
        for attempt in 0..2 {
            let mut fresh = Waiter::new(ctx, format!("fresh get {attempt}"), pool.get());
            for _ in 0..4 {
                fresh.poll();
            }
            if fresh.is_hurt() {
                continue;
            }
            ctx.check(matches!(fresh.output, Some(Ok(_))), || {
                format!(
                    "pool: a fresh get did not succeed: {}",
                    match &fresh.output {
                        Some(Err(e)) => format!("{e:?}"),
                        Some(Ok(_)) => "ok".into(),
                        None => "still pending".into(),
                    }
                )
            });
            break;
        }
    }

    impl std::fmt::Debug for Obj {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "object #{}", self.id)
        }
    }

    fn pool_scenario(ctx: &Ctx, fail_create: usize, fail_recycle: usize) {
        let (manager, live) = manager(ctx, fail_create, fail_recycle);
        let pool = Pool::builder(manager)
            .max_size(1)
            .with_timer(ctx.timer())
            .build()
            .expect("a valid pool");
        let mut g1 = Waiter::new(ctx, "get 1", pool.get());
        let mut g2 = Waiter::new(ctx, "get 2", pool.get());
        let mut g3 = Waiter::new(ctx, "get 3", pool.get());
        g1.poll();
        g2.poll();
        g1.poll();
        g1.poll();
        g3.poll();
        g1.release();
        g2.poll();
        g2.poll();
        g2.poll();
        g3.rewaker();
        g3.poll();
        g2.release();
        g3.poll();
        g3.poll();
        drain(ctx, &mut [&mut g1, &mut g2, &mut g3]);
        check_pool(ctx, &pool, &live);
        let _ = ctx.drop_step("drop the pool", pool);
    }

    #[test]
    fn pool_hand_off() {
        explore("pool_hand_off", |ctx| pool_scenario(ctx, 0, 0));
    }

    #[test]
    fn pool_create_fails() {
        explore("pool_create_fails", |ctx| pool_scenario(ctx, 1, 0));
    }

    #[test]
    fn pool_recycle_fails() {
        explore("pool_recycle_fails", |ctx| pool_scenario(ctx, 0, 1));
    }

    #[test]
    fn pool_wait_timeout() {
        explore("pool_wait_timeout", |ctx| {
            let (manager, live) = manager(ctx, 0, 0);
            let pool = Pool::builder(manager)
                .max_size(1)
                .wait_timeout(1000 * MS)
                .with_timer(ctx.timer())
                .build()
                .expect("a valid pool");
            let mut g1 = Waiter::new(ctx, "get 1", pool.get());
            let mut g2 = Waiter::new(ctx, "get 2 (times out)", pool.get());
            g1.poll();
            g1.poll();
            g2.poll();
            let _ = ctx.advance(1000 * MS);
            g2.poll();
            // Get 1 holds the only object (unless the fault took it away):
            // get 2 times out.
            if let (Some(Ok(_)), Some(out)) = (&g1.output, &g2.output) {
                ctx.check(matches!(out, Err(PoolError::Timeout)), || {
                    format!("get 2: {:?}, expected a timeout", out.as_ref().map(|_| ()))
                });
            }
            g1.release();
            drain(ctx, &mut [&mut g1, &mut g2]);
            check_pool(ctx, &pool, &live);
            let _ = ctx.drop_step("drop the pool", pool);
        });
    }

    // -- process_batch with pauses and a rate limit ------------------------

    #[test]
    fn process_batch_paced() {
        explore("process_batch_paced", |ctx| {
            let timer = ctx.timer();
            let quota = Quota::window(3, 1000 * MS).expect("a valid quota");
            let Some(limiter) = ctx
                .step("RateLimiter::with_timer", || {
                    RateLimiter::with_quota(quota).with_timer(timer)
                })
                .done()
            else {
                return;
            };
            let (f, triggers) = batch_parts(ctx, 4, |i| i);
            let plan = ctx.plan.clone();
            let batch = process_batch(0..4, 2, f)
                .pause_between(100 * MS)
                .with_timer(ctx.timer())
                .rate_limit(&limiter)
                .on_progress(move |p| plan.hit(|| format!("progress callback ({} done)", p.done)));
            let mut run = Run::new(ctx, "process_batch (paced)", OnPanic::Poisons, batch)
                .with_triggers(triggers);
            run.play("P F0 F1 P P A100 E P P A1000 E P P F2 F3 P P");
            run.finish(true, |ctx, out| {
                ctx.check_eq("process_batch's output", out, vec![0, 1, 2, 3]);
            });
            ctx.check_eq("rate limiter: waiting at the end", limiter.waiting(), 0);
        });
    }

    // -- retry ---------------------------------------------------------------

    fn retry_scenario(ctx: &Ctx, attempt_timeout: bool) {
        let first = if attempt_timeout { Ok(1) } else { Err(1) };
        let (a1, t1) = ctx.parked("attempt 1", first);
        let (a2, t2) = ctx.parked("attempt 2", Ok::<usize, usize>(7));
        let mut attempts = VecDeque::from([a1, a2]);
        let tracker = ctx.tracker();
        let operation = move || {
            tracker.plan.hit(|| "retry operation".into());
            attempts
                .pop_front()
                .unwrap_or_else(|| tracker.child("extra attempt", Mode::Never, Err(99)))
        };
        let (p1, p2) = (ctx.plan.clone(), ctx.plan.clone());
        let mut policy = RetryPolicy::new(3).backoff(Backoff::exponential(100 * MS, 1000 * MS));
        if attempt_timeout {
            policy = policy.attempt_timeout(500 * MS);
        }
        let retry = policy
            .retry(operation)
            .retry_if(move |e: &usize| {
                p1.hit(|| format!("retry_if predicate (error {e})"));
                true
            })
            .on_retry(move |ev| p2.hit(|| format!("on_retry hook (attempt {})", ev.attempt)))
            .with_timer(ctx.timer())
            .jitter_seed(7);
        let mut run = Run::new(ctx, "retry", OnPanic::Poisons, retry).with_triggers(vec![t1, t2]);
        if attempt_timeout {
            run.play("P A500 E P A1000 E P F1 P");
        } else {
            run.play("P F0 P A1000 E P F1 P");
        }
        run.finish(true, |ctx, out| {
            ctx.check(matches!(out, Ok(7)), || {
                format!("retry's output: {out:?}, expected Ok(7)")
            });
        });
    }

    #[test]
    fn retry_after_an_error() {
        explore("retry_after_an_error", |ctx| retry_scenario(ctx, false));
    }

    #[test]
    fn retry_after_an_attempt_timeout() {
        explore("retry_after_an_attempt_timeout", |ctx| {
            retry_scenario(ctx, true)
        });
    }
}

// ---------------------------------------------------------------------------
// The default timer's helper thread
// ---------------------------------------------------------------------------

/// The default timer (futures-timer) keeps time on one helper thread shared
/// by the whole process, and wakes sleepers' wakers on it. SPEC §1.13: user
/// code never kills a shared thread — after a waker panicked there, every
/// other timeout in the process must still fire. Run in a child process
/// (this test binary again), since a dead timer thread would hang every
/// later timer in this one.
#[test]
fn default_timer_thread_survives_a_panicking_waker() {
    const CHILD: &str = "AWAITKIT_PI_TIMER_CHILD";
    if std::env::var_os(CHILD).is_some() {
        timer_thread_child();
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "default_timer_thread_survives_a_panicking_waker",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary as a child process");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = stderr
        .lines()
        .find(|l| l.starts_with("timer-thread:"))
        .unwrap_or("timer-thread: the child reported nothing");
    assert!(
        output.status.success() && report.ends_with("ok"),
        "default timer: after a waker panicked on its helper thread, {report} \
         (child process: {:?})",
        output.status,
    );
}

/// A waker whose wake panics (with the injected payload: quiet).
struct PanickingWake;

impl std::task::Wake for PanickingWake {
    fn wake(self: Arc<Self>) {
        std::panic::panic_any(Injected {
            k: 1,
            site: "a waker woken by the timer thread".into(),
        });
    }
}

fn timer_thread_child() {
    let _quiet = QuietHook::install();
    // A timeout polled once with the panicking waker: its sleep's wake
    // runs on the helper thread, and panics there.
    let waker = std::task::Waker::from(Arc::new(PanickingWake));
    let mut doomed = Box::pin(awaitkit::timeout(
        Duration::from_millis(1),
        std::future::pending::<()>(),
    ));
    assert!(
        doomed
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    std::thread::sleep(Duration::from_millis(100));
    // Another timeout, on a plain executor: it must fire.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = std::panic::catch_unwind(|| {
            futures::executor::block_on(awaitkit::timeout(
                Duration::from_millis(20),
                std::future::pending::<()>(),
            ))
        });
        let _ = tx.send(out.map_err(|p| message_of(&*p)));
    });
    let report = match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(Err(_elapsed))) => "timer-thread: ok".to_owned(),
        Ok(Ok(Ok(()))) => "timer-thread: a pending future completed".to_owned(),
        Ok(Err(msg)) => format!("timer-thread: a later timeout panicked: {msg}"),
        Err(_) => "timer-thread: a later 20 ms timeout never fired (hang: the helper thread is \
                   dead)"
            .to_owned(),
    };
    eprintln!("{report}");
    drop(doomed);
    if !report.ends_with("ok") {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Children behind wrapping wakers
// ---------------------------------------------------------------------------

/// Each child polled through `Substitute`: the waker the child stores (and
/// that the test later wakes) is a probe forwarding to the combinator's
/// per-child waker, so the child's own waker is user code too.
#[test]
fn gather_children_behind_wrapping_wakers() {
    explore("gather_children_behind_wrapping_wakers", |ctx| {
        let (children, triggers) = ctx.parked_n(3, |i| i);
        let wrapped: Vec<_> = children
            .into_iter()
            .enumerate()
            .map(|(i, c)| Substitute::new(ctx, format!("child {i}'s waker"), c))
            .collect();
        let mut run =
            Run::new(ctx, "gather", OnPanic::Poisons, gather(wrapped)).with_triggers(triggers);
        run.play("P N1 P F1 P F0 F2 P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("gather's output", out, vec![0, 1, 2])
        });
    });
}

#[test]
fn as_completed_children_behind_wrapping_wakers() {
    explore("as_completed_children_behind_wrapping_wakers", |ctx| {
        let (children, triggers) = ctx.parked_n(3, |i| i);
        let wrapped: Vec<_> = children
            .into_iter()
            .enumerate()
            .map(|(i, c)| Substitute::new(ctx, format!("child {i}'s waker"), c))
            .collect();
        let mut run =
            Run::stream(ctx, "as_completed", NextOf(as_completed(wrapped))).with_triggers(triggers);
        run.play("P F1 P P F2 F0 P P P");
        let len = run.fut_mut().map_or(0, |set| set.0.len());
        let items = run.take_items();
        check_yielded(ctx, "as_completed", &items, 3, len);
        run.finish(false, |_, _| {});
    });
}
