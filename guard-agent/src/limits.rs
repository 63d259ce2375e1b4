//! Default paths and kernel limits: plain constants every module may use, so that no module
//! has to depend on another's implementation just to learn a path or a size (this keeps the
//! module graph free of cycles).

use std::time::Duration;

/// The admin socket (`pending`, `approve`, `deny`, `status`, `reload`, registration).
pub const ADMIN_SOCKET: &str = "/run/guard/agent.sock";
/// The stated-reasons socket, open to watched processes.
pub const REASON_SOCKET: &str = "/run/guard/reason.sock";
/// Set in the environment of `run --daemon` commands; clients use it before the default.
pub const REASON_SOCKET_ENV: &str = "GUARD_REASON_SOCKET";
pub const DEFAULT_CONFIG: &str = "/etc/guard/agent.toml";
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/guard/audit.jsonl";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/guard";
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Extra time the kernel gives a hold past the agent's own timeout before denying by itself:
/// the agent is the one that decides; the kernel only covers for an agent that is gone.
pub const KERNEL_GRACE: Duration = Duration::from_secs(10);

/// The most tasks one tree may hold (the default of `--max-tree-tasks`), and the most all
/// trees together may reserve: WATCHED's capacity less a margin for the roots and adopted
/// tasks userspace adds (those hold no reservation).
pub const MAX_TREE_TASKS: u64 = guard_common::WATCHED_CAPACITY as u64 - 512;

/// Policy slots in the kernel (guard-common's, as a policy id).
pub const MAX_POLICIES: u8 = guard_common::MAX_POLICIES as u8;
