/// Everything Trace2 said about one git process, assembled from its events by ``Trace2ProcessAssembler``.
///
/// Times are nanoseconds since the Unix epoch on the wall clock. In brief mode (`GIT_TRACE2_EVENT_BRIEF`) most
/// events carry no `time`; their times are then estimated from `t_abs`, durations (`t_rel`) and the last known time.
public struct GitProcess: Sendable, Equatable {
    /// How the process's record ended.
    public enum Ending: Sendable, Equatable {
        /// `atexit`: the normal last event.
        case atexit
        /// `exit` seen, then the stream ended before `atexit`.
        case exit
        /// `signal`: killed (SIGPIPE when its reader went away).
        case signal
        /// The stream ended, or the collector gave up waiting, before any exit event.
        case incomplete(String)
    }

    /// A `region_enter`/`region_leave` pair.
    public struct Region: Sendable, Equatable {
        /// Trace2 `category` (`pack-objects`, `index`, …).
        public var category: String
        /// Trace2 `label` (`write-pack-file`, …).
        public var label: String
        /// `msg`, when the region carries one.
        public var message: String?
        /// The thread the region ran on.
        public var thread: String
        /// Trace2's `nesting` (1 = outermost).
        public var nesting: Int
        /// When `region_enter` happened.
        public var startUnixNano: UInt64
        /// When `region_leave` happened (the process end for an unclosed region).
        public var endUnixNano: UInt64
        /// The enclosing region on the same thread (index into ``GitProcess/regions``).
        public var parent: Int?
        /// True when the process ended with this region still open.
        public var unclosed: Bool
    }

    /// A thread other than `main` (`thread_start`/`thread_exit`).
    public struct Thread: Sendable, Equatable {
        /// The thread name (`th01:preload_thread`).
        public var name: String
        /// Its first event (`thread_start` or any event on it).
        public var startUnixNano: UInt64
        /// `thread_exit`, else the process end.
        public var endUnixNano: UInt64
        /// True when `thread_exit` was seen.
        public var exited: Bool
    }

    /// A child process the process started (`child_start`, then `child_exit` or `child_ready`).
    public struct Child: Sendable, Equatable {
        /// `child_id`, unique within the process.
        public var childID: Int64
        /// `child_class`: `?`, `transport/file`, `hook`, `editor`, ….
        public var childClass: String
        /// Whether the child ran through a shell (its pid is then the shell's).
        public var useShell: Bool
        /// The child's argv as git gave it.
        public var argv: [String]
        /// `hook_name` for hooks.
        public var hookName: String?
        /// `child_start` time.
        public var startUnixNano: UInt64
        /// `child_exit`/`child_ready` time, nil while it runs.
        public var endUnixNano: UInt64?
        /// From `child_exit`/`child_ready`: the pid `waitpid` saw (for a shell child: the shell's).
        public var pid: Int32?
        /// `child_exit.code`.
        public var exitCode: Int64?
        /// `child_ready`'s state for a background child.
        public var ready: String?
    }

    /// An `exec` (and its `exec_result` if the exec failed).
    public struct Exec: Sendable, Equatable {
        /// `exec_id`.
        public var execID: Int64
        /// `exe`: the program git tried to exec.
        public var exe: String?
        /// Its argv.
        public var argv: [String]
        /// When git called exec.
        public var timeUnixNano: UInt64
        /// errno from a failed exec.
        public var failureCode: Int64?
    }

    /// A `data` or `data_json` value.
    public struct Datum: Sendable, Equatable {
        /// Trace2 `category`.
        public var category: String
        /// Trace2 `key`.
        public var key: String
        /// The value as text (JSON text for `data_json`).
        public var value: String
        /// The integer, when a `data` value is an integer (or a decimal string).
        public var intValue: Int64?
        /// True for `data_json`.
        public var isJSON: Bool
        /// The thread that wrote it.
        public var thread: String
        /// When it was written.
        public var timeUnixNano: UInt64
        /// The innermost open region on the datum's thread when it was written.
        public var region: Int?
    }

    /// A `timer`/`th_timer` summary or a `counter`/`th_counter` value.
    public struct Metric: Sendable, Equatable {
        /// Trace2 `category`.
        public var category: String
        /// Timer or counter name.
        public var name: String
        /// The thread for `th_*` events, nil for process-wide ones.
        public var thread: String?
        /// Timers: total seconds; counters: nil.
        public var totalSeconds: Double?
        /// Timers: the shortest interval.
        public var minSeconds: Double?
        /// Timers: the longest interval.
        public var maxSeconds: Double?
        /// Timers: intervals; counters: the count.
        public var count: Int64
    }

    /// An `error` event.
    public struct ErrorMessage: Sendable, Equatable {
        /// The formatted message (`msg`).
        public var message: String
        /// The format string (`fmt`), for grouping.
        public var format: String?
        /// When it was reported.
        public var timeUnixNano: UInt64
    }

    /// The session id.
    public var sid: Trace2SessionID
    /// The pid from the sid.
    public var pid: Int32?
    /// `version.exe`: the git version.
    public var gitVersion: String?
    /// `start.argv`.
    public var argv: [String] = []
    /// `cmd_name.name` (`upload-pack`, `pack-objects`, `_run_dashed_`, …).
    public var commandName: String?
    /// `cmd_name.hierarchy` (`clone/upload-pack/pack-objects`).
    public var hierarchy: String?
    /// `cmd_mode` names in order.
    public var modes: [String] = []
    /// `alias.alias`: the alias that was expanded, if any.
    public var aliasName: String?
    /// `alias.argv`: its expansion.
    public var aliasArgv: [String] = []
    /// `def_repo.worktree`.
    public var worktree: String?
    /// `cmd_path.path`.
    public var commandPath: String?
    /// `cmd_ancestry.ancestry`.
    public var ancestry: [String] = []
    /// `def_param` values (config settings, `GIT_TRACE2_ENV_VARS` variables such as `CORRELATION_ID`).
    public var parameters: [String: String] = [:]
    /// Start of the process (its sid's time, or its first event).
    public var startUnixNano: UInt64
    /// `atexit`/`exit`/`signal` time, or the last event for an incomplete record.
    public var endUnixNano: UInt64
    /// `exit`/`atexit` code.
    public var exitCode: Int64?
    /// `signal.signo`.
    public var signal: Int64?
    /// How the record ended.
    public var ending: Ending = .incomplete("no exit event")
    /// Regions in `region_enter` order.
    public var regions: [Region] = []
    /// Threads other than `main`.
    public var threads: [Thread] = []
    /// Children in `child_start` order.
    public var children: [Child] = []
    /// `exec` events.
    public var execs: [Exec] = []
    /// `data`/`data_json` values.
    public var data: [Datum] = []
    /// `timer`/`th_timer` summaries.
    public var timers: [Metric] = []
    /// `counter`/`th_counter` values.
    public var counters: [Metric] = []
    /// `error` events.
    public var errors: [ErrorMessage] = []
    /// Events received for this process.
    public var eventCount = 0
    /// Events not kept because the per-process limits were reached.
    public var droppedEvents = 0

    /// A process known only by its sid and first time.
    public init(sid: String, startUnixNano: UInt64) {
        self.sid = Trace2SessionID(sid)
        self.pid = self.sid.pid
        self.startUnixNano = startUnixNano
        self.endUnixNano = startUnixNano
    }

    /// The short stable span name: `git <cmd_name>` (else from argv).
    public var spanName: String {
        if let name = commandName, !name.hasPrefix("_") { return "git " + name }
        if let sub = Self.subcommand(in: argv) { return "git " + sub }
        return "git"
    }

    /// The value of `CORRELATION_ID` from `def_param` (set through `GIT_TRACE2_ENV_VARS=CORRELATION_ID`).
    public var correlationIDParameter: String? {
        parameters["CORRELATION_ID"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The repository paths this process names: `--git-dir`, the path argument of `upload-pack`, `receive-pack`,
    /// `upload-archive`, and `def_repo`'s worktree. Normalised without trailing `/`.
    public var repositoryPaths: [String] {
        var paths: [String] = []
        var index = 1
        while index < argv.count {
            let arg = argv[index]
            if arg == "--git-dir", index + 1 < argv.count {
                paths.append(argv[index + 1])
                index += 2
                continue
            }
            if arg.hasPrefix("--git-dir=") {
                paths.append(String(arg.dropFirst("--git-dir=".count)))
            } else if Self.optionsWithValue.contains(arg) {
                index += 1
            } else if !arg.hasPrefix("-") {
                break
            }
            index += 1
        }
        let transport: Set<String> = ["upload-pack", "receive-pack", "upload-archive"]
        let command = commandName.flatMap { $0.hasPrefix("_") ? nil : $0 } ?? Self.subcommand(in: argv)
        if let command, transport.contains(command), argv.count > 1, let last = argv.last, !last.hasPrefix("-") {
            paths.append(last)
        }
        if let worktree { paths.append(worktree) }
        var seen: Set<String> = []
        return paths.map(Self.normalise).filter { !$0.isEmpty && seen.insert($0).inserted }
    }

    /// Global git options whose value is the next argument.
    static let optionsWithValue: Set<String> = ["-C", "-c", "--work-tree", "--namespace", "--config-env"]

    static func normalise(_ path: String) -> String {
        var p = Substring(path)
        while p.count > 1, p.hasSuffix("/") { p = p.dropLast() }
        if p.hasSuffix("/.") { p = p.dropLast(2) }
        return String(p)
    }

    static func basename(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }

    /// The git subcommand in an argv (`git [options] <sub>` or a dashed `git-<sub>`).
    static func subcommand(in argv: [String]) -> String? {
        guard let first = argv.first else { return nil }
        let base = basename(first)
        if base.hasPrefix("git-") { return String(base.dropFirst(4)) }
        var index = 1
        while index < argv.count {
            let arg = argv[index]
            if arg == "--git-dir" || optionsWithValue.contains(arg) {
                index += 2
                continue
            }
            if !arg.hasPrefix("-") { return arg }
            index += 1
        }
        return nil
    }
}
