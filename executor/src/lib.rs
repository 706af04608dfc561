//! The thread-per-core runtime. It knows no protocol.
//!
//! - [`cores`]: CPU lists such as `0-3,6` for `--worker-cores`.
//! - [`listener`]: SO_REUSEPORT listeners, one per source per worker core, bound up front so
//!   that a port held by another process is a startup error rather than silent sharing.
//! - [`control`]: the control core's thread, which runs global periodic jobs.
//! - [`memory`]: the allocator's settings, so that freed memory goes back to the kernel.
//! - [`placement`]: which core serves a new connection (the one whose CPU has room), and the
//!   channels that hand a connection from the core that accepted it to that one.
//! - [`fd_handoff`]: hands listening sockets to a new instance over a unix socket.
//! - [`shutdown`]: a per-core signal that tells connection tasks to finish and close.
//! - [`runtime`]: starts one pinned glommio executor per worker CPU and runs the per-core
//!   factory it is given; [`runtime::wait_for_signal`] blocks the main thread on SIGTERM/SIGINT.
//!
//! Start at [`runtime::Workers::start`].

pub mod control;
pub mod cores;
pub mod fd_handoff;
pub mod io;
pub mod listener;
pub mod memory;
pub mod placement;
pub mod rt;
pub mod runtime;
pub mod shutdown;

pub use control::ControlHandle;
pub use runtime::{RuntimeConfig, WorkerCommands, WorkerContext, WorkerFactory, Workers};
pub use shutdown::{AcceptGate, AcceptState, Shutdown, ShutdownHandle, ShutdownKind};
