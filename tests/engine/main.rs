//! The combinators over children (gather, as_completed, wait, batch, task
//! groups, the `gather!` tuple, ...) and the keyed rate limiter's compact
//! state: the code with `unsafe` blocks. One test binary (one build of
//! `common`, one link); each file is a module named as it was. CI's
//! AddressSanitizer run runs this binary whole.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod as_completed;
mod as_completed_staggered_stream_review;
mod auto_traits;
mod batch;
mod batch_stream;
mod clear_forget_adversarial;
mod coop_budget;
mod deadlines;
mod engine_torture;
mod engine_unwind;
mod errors;
mod first_ok;
mod fused;
mod gather;
mod gather_macro;
mod gather_settled;
mod gather_small;
mod keyed_bound;
mod keyed_first_poll;
mod keyed_model;
mod keyed_stamps;
mod moved_task;
mod panic_safety;
mod review_coop;
mod review_engine_cursor;
mod review_engine_drops;
mod review_keyed;
mod review_keyed3;
mod review_keyedmem;
mod review_one_word;
mod review_timer3;
mod review_tup;
mod review_tuple;
mod staggered_race;
mod task_abort;
mod task_abort_review;
mod task_abort_review3;
mod task_group;
mod try_gather;
mod wait;
mod wait_any;
