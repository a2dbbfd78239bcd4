//! `serlua repl`: evaluate Lua against one SIP message, in the script's
//! environment, with every primitive running for real inside a sandbox
//! copy of the core (DESIGN.md: the REPL's dry run is one more adapter
//! around the sans-IO core).
//!
//! Two ways to get the message:
//! - **offline** (`serlua repl SCRIPT --msg FILE` or `--trace FILE
//!   --index N`): the script is loaded in a proxy instance of its own, with
//!   empty in-memory tables (a throwaway database: the script's `db_url` is
//!   never opened) and no sockets;
//! - **live** (`serlua repl --attach [CTL] --match EXPR [--hold]`): a
//!   running proxy evaluates the filter on the messages its workers
//!   receive and hands the first match to a session that runs *inside the
//!   proxy*, over a sandbox copy of its live state ([`attach`]).
//!
//! Either way the session is a [`session::Session`]: the message as it
//! arrived (the top Via gets `received`/`rport` as the worker would give
//! it, RFC 3261 §18.2.1, RFC 3581), a Lua VM with the script loaded over a
//! sandbox `Env`, and a report of what each evaluation did.
//!
//! # What a dry run guarantees
//!
//! The sandbox is a [`crate::core::Shared::dry_copy`]: primitives act on it,
//! never on the proxy.
//! - **Sending**: nothing is sent. Replies (`sl_send_reply`, the challenge
//!   of `www_challenge`, `save()`'s 200) and relayed requests (`t_relay`,
//!   `forward`) are captured and reported with their destination and
//!   transport. DNS names in a Request-URI are resolved (a lookup, not a
//!   SIP send).
//! - **Transactions**: `t_relay()` creates its transaction in the
//!   sandbox's own, initially empty table; its timers never run (no
//!   retransmission, no 408). A dry run therefore does not see the proxy's
//!   live transactions (a CANCEL finds no INVITE to cancel).
//! - **Registrations**: `save()` writes the binding into a private copy of
//!   the location table (taken when the session starts or `:reset`s) and
//!   reports the binding it saved or removed; the live table and the
//!   database are never written. A later `lookup()` in the same session
//!   sees it, as it would after a real save.
//! - **Authentication**: nonces check out (same secret), but the nonce
//!   count of a `qop=auth` response is only compared, not recorded, so the
//!   real request authenticates after its dry run.
//! - **Media relay**: no port is opened and no relay command that changes
//!   state is sent. `force_rtp_proxy()`/`use_media_proxy()` rewrite the
//!   SDP as the relay would: for a call the live relay already has, with
//!   the relay addresses it holds (a re-INVITE keeps its ports); for a new
//!   call, with the embedded relay's advertised address and *placeholder*
//!   ports counted from the start of `rtp_ports` (the report says so: the
//!   real ports are allocated only when the message is routed for real).
//!   With a remote (ng) relay, whose address only it knows, a new call's
//!   SDP is left as it is and the report names the relay that would be
//!   asked. `unforce_rtp_proxy()`/`end_media_session()` report the session
//!   they would end and leave it running. Existing sessions are read with
//!   the relay's read-only `query`.
//! - **Tables read**: subscribers, domains and trusted peers are the live
//!   ones as they were when the session started.
//! - **Lua state**: the script is loaded afresh in the session's own VM
//!   from its file, so globals a running script keeps in its workers'
//!   VMs are not seen, and the session's globals never reach them.
//! - **Statistics**: the proxy's counters do not count the session.
//!
//! The message itself is a copy: edits (`msg.ruri = …`, `rewritehost`,
//! `fix_nated_contact`, an SDP rewrite) are shown by `:show` and `:diff`
//! and never reach the real message. With `--hold` the real message waits
//! (its retransmissions are absorbed) until `:release` routes the
//! *original* through the real script for real, or until the deadline, the
//! session's end, or a CANCEL of it (then the INVITE and the CANCEL are
//! routed in that order).

pub mod attach;
pub mod cli;
pub mod dryrelay;
pub mod luaval;
pub mod session;
pub mod trace;
