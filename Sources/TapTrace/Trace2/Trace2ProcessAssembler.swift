/// Assembles Trace2 events into one ``GitProcess`` per session id.
///
/// Events of several processes may arrive interleaved (a file target shared by a parent and its children) or on
/// separate streams (one socket connection per process). A process is finished at `atexit` or `signal`; a stream
/// that ends, or a process silent for too long, finishes it as it is. Memory is bounded: per-process lists are
/// capped (the excess is counted in ``GitProcess/droppedEvents``) and so is the number of open processes (the
/// oldest is finished as incomplete). Pure: the caller passes `now` for idle expiry.
public struct Trace2ProcessAssembler: Sendable {
    /// Bounds on what the assembler holds.
    public struct Limits: Sendable {
        /// Processes open at once; beyond it the least recently active one is finished as incomplete.
        public var maximumOpenProcesses: Int
        /// Regions, data, children, errors… kept per process.
        public var maximumItemsPerProcess: Int

        public init(maximumOpenProcesses: Int = 10_000, maximumItemsPerProcess: Int = 10_000) {
            self.maximumOpenProcesses = maximumOpenProcesses
            self.maximumItemsPerProcess = maximumItemsPerProcess
        }
    }

    /// What the assembler reports.
    public enum Output: Sendable, Equatable {
        /// The first event of a process: the correlator learns that its children have a live parent.
        case started(sid: String)
        /// A process is complete (or given up on).
        case finished(GitProcess)
    }

    struct Open: Sendable {
        var process: GitProcess
        var lastTime: UInt64
        var lastActivity: UInt64
        var stacks: [String: [Int]] = [:]
        var openChildren: [Int64: Int] = [:]
        var threadIndex: [String: Int] = [:]
        var execIndex: [Int64: Int] = [:]
        var sawExit = false
    }

    /// The bounds this assembler enforces.
    public let limits: Limits
    private var open: [String: Open] = [:]
    /// Recently finished sids, so a stray late event does not open a phantom process.
    private var finishedRing: [String] = []
    private var finishedSet: Set<String> = []
    private var ringNext = 0
    /// Events that arrived for an already finished process.
    public private(set) var lateEvents = 0
    /// Processes finished early because too many were open.
    public private(set) var evicted = 0

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// Processes open now.
    public var openCount: Int { open.count }

    /// Takes one event; `now` is the collector's wall clock (for idle expiry only).
    public mutating func add(_ event: Trace2Event, now: UInt64) -> [Output] {
        var outputs: [Output] = []
        if open[event.sid] == nil {
            if finishedSet.contains(event.sid) {
                lateEvents += 1
                return []
            }
            if open.count >= limits.maximumOpenProcesses,
                let oldest = open.min(by: { $0.value.lastActivity < $1.value.lastActivity })?.key
            {
                evicted += 1
                outputs += finish(oldest, reason: "too many open processes")
            }
            let sid = Trace2SessionID(event.sid)
            let first = event.timeUnixNano ?? now
            var start = sid.startUnixNano ?? first
            if start > first { start = first }
            open[event.sid] = Open(
                process: GitProcess(sid: event.sid, startUnixNano: start), lastTime: first, lastActivity: now)
            outputs.append(.started(sid: event.sid))
        }
        // Taken out of the dictionary while it changes, so appending to its lists never copies them.
        var state = open.removeValue(forKey: event.sid)!
        state.lastActivity = now
        let time = estimatedTime(event, state)
        if time > state.lastTime { state.lastTime = time }
        state.process.eventCount += 1
        let done = apply(event, time: time, to: &state)
        if done {
            outputs.append(.finished(close(state, reason: nil)))
            remember(event.sid)
        } else {
            open[event.sid] = state
        }
        return outputs
    }

    /// Finishes the given processes as they are: their stream ended (connection closed, file done).
    public mutating func endOfStream(sids: some Sequence<String>, reason: String = "stream ended") -> [Output] {
        var outputs: [Output] = []
        for sid in sids where open[sid] != nil {
            outputs += finish(sid, reason: reason)
        }
        return outputs
    }

    /// Finishes processes with no event since `cutoff` (nanoseconds, the same clock as `now`).
    public mutating func expire(inactiveSince cutoff: UInt64) -> [Output] {
        let idle = open.filter { $0.value.lastActivity < cutoff }.map(\.key)
        var outputs: [Output] = []
        for sid in idle { outputs += finish(sid, reason: "no events for too long") }
        return outputs
    }

    /// Finishes everything still open (shutdown).
    public mutating func finishAll(reason: String = "collector stopped") -> [Output] {
        var outputs: [Output] = []
        for sid in Array(open.keys) { outputs += finish(sid, reason: reason) }
        return outputs
    }

    private mutating func finish(_ sid: String, reason: String) -> [Output] {
        guard let state = open.removeValue(forKey: sid) else { return [] }
        remember(sid)
        return [.finished(close(state, reason: reason))]
    }

    private mutating func remember(_ sid: String) {
        let capacity = 4096
        if finishedRing.count < capacity {
            finishedRing.append(sid)
        } else {
            finishedSet.remove(finishedRing[ringNext])
            finishedRing[ringNext] = sid
            ringNext = (ringNext + 1) % capacity
        }
        finishedSet.insert(sid)
    }

    private func estimatedTime(_ event: Trace2Event, _ state: Open) -> UInt64 {
        if let time = event.timeUnixNano { return time }
        if let tAbs = event.tAbs { return state.process.startUnixNano + Trace2Time.nanos(seconds: tAbs) }
        return state.lastTime
    }

    /// Closes whatever is still open and fixes the end time.
    private func close(_ state: Open, reason: String?) -> GitProcess {
        var process = state.process
        if let reason {
            if state.sawExit {
                process.ending = .exit
            } else if case .incomplete = process.ending {
                process.ending = .incomplete(reason)
            }
            process.endUnixNano = max(process.endUnixNano, state.lastTime)
        }
        let end = max(process.endUnixNano, process.startUnixNano)
        process.endUnixNano = end
        for stack in state.stacks.values {
            for index in stack {
                process.regions[index].endUnixNano = max(end, process.regions[index].startUnixNano)
                process.regions[index].unclosed = true
            }
        }
        for index in state.threadIndex.values where !process.threads[index].exited {
            process.threads[index].endUnixNano = max(end, process.threads[index].startUnixNano)
        }
        // Brief mode estimates (t_abs counted from the sid's time, durations) can overshoot the real exit time a
        // little; keep every inner span inside the process's lifetime.
        let start = process.startUnixNano
        func clamp(_ time: UInt64) -> UInt64 { min(max(time, start), end) }
        for index in process.regions.indices {
            process.regions[index].startUnixNano = clamp(process.regions[index].startUnixNano)
            process.regions[index].endUnixNano = clamp(process.regions[index].endUnixNano)
        }
        for index in process.threads.indices {
            process.threads[index].startUnixNano = clamp(process.threads[index].startUnixNano)
            process.threads[index].endUnixNano = clamp(process.threads[index].endUnixNano)
        }
        for index in process.children.indices {
            process.children[index].startUnixNano = clamp(process.children[index].startUnixNano)
            process.children[index].endUnixNano = process.children[index].endUnixNano.map(clamp)
        }
        return process
    }

    private func room(_ count: Int, _ state: inout Open) -> Bool {
        if count < limits.maximumItemsPerProcess { return true }
        state.process.droppedEvents += 1
        return false
    }

    /// Applies one event; true when it ends the process.
    private func apply(_ event: Trace2Event, time: UInt64, to state: inout Open) -> Bool {
        if event.thread != "main", state.threadIndex[event.thread] == nil,
            room(state.process.threads.count, &state)
        {
            state.threadIndex[event.thread] = state.process.threads.count
            state.process.threads.append(
                .init(name: event.thread, startUnixNano: time, endUnixNano: time, exited: false))
        }
        switch event.name {
        case "version":
            state.process.gitVersion = event.string("exe")
        case "start":
            state.process.argv = event.strings("argv") ?? []
        case "cmd_name":
            state.process.commandName = event.string("name")
            state.process.hierarchy = event.string("hierarchy")
        case "cmd_mode":
            if let name = event.string("name"), room(state.process.modes.count, &state) {
                state.process.modes.append(name)
            }
        case "cmd_path":
            state.process.commandPath = event.string("path")
        case "cmd_ancestry":
            state.process.ancestry = event.strings("ancestry") ?? []
        case "alias":
            if let name = event.string("alias") {
                state.process.aliasName = name
                state.process.aliasArgv = event.strings("argv") ?? []
            }
        case "def_param":
            if let param = event.string("param"), state.process.parameters.count < limits.maximumItemsPerProcess {
                state.process.parameters[param] = event.fields["value"].map(Self.text) ?? ""
            }
        case "def_repo":
            if state.process.worktree == nil { state.process.worktree = event.string("worktree") }
        case "region_enter":
            guard room(state.process.regions.count, &state) else { break }
            let stack = state.stacks[event.thread] ?? []
            let index = state.process.regions.count
            state.process.regions.append(
                .init(
                    category: event.string("category") ?? "", label: event.string("label") ?? "",
                    message: event.string("msg"), thread: event.thread,
                    nesting: event.int("nesting").map { Int($0) } ?? stack.count + 1, startUnixNano: time,
                    endUnixNano: time, parent: stack.last, unclosed: true))
            state.stacks[event.thread, default: []].append(index)
        case "region_leave":
            leaveRegion(event, time: time, state: &state)
        case "thread_start":
            break  // registered above as the thread's first event
        case "thread_exit":
            if let index = state.threadIndex[event.thread] {
                state.process.threads[index].endUnixNano = max(time, state.process.threads[index].startUnixNano)
                state.process.threads[index].exited = true
                if event.timeUnixNano == nil, let tRel = event.tRel {
                    let duration = Trace2Time.nanos(seconds: tRel)
                    let end = state.process.threads[index].endUnixNano
                    state.process.threads[index].startUnixNano = end > duration ? end - duration : 0
                }
            }
        case "child_start":
            guard let childID = event.int("child_id"), room(state.process.children.count, &state) else { break }
            state.openChildren[childID] = state.process.children.count
            state.process.children.append(
                .init(
                    childID: childID, childClass: event.string("child_class") ?? "?",
                    useShell: event.bool("use_shell") ?? false, argv: event.strings("argv") ?? [],
                    hookName: event.string("hook_name"), startUnixNano: time))
        case "child_exit", "child_ready":
            guard let childID = event.int("child_id"), let index = state.openChildren[childID] else { break }
            state.process.children[index].endUnixNano = max(time, state.process.children[index].startUnixNano)
            state.process.children[index].pid = event.int("pid").flatMap { Int32(exactly: $0) }
            if event.name == "child_exit" {
                state.process.children[index].exitCode = event.int("code")
            } else {
                state.process.children[index].ready = event.string("ready")
            }
            state.openChildren[childID] = nil
        case "exec":
            guard room(state.process.execs.count, &state) else { break }
            let execID = event.int("exec_id") ?? Int64(state.process.execs.count)
            state.execIndex[execID] = state.process.execs.count
            state.process.execs.append(
                .init(execID: execID, exe: event.string("exe"), argv: event.strings("argv") ?? [], timeUnixNano: time))
        case "exec_result":
            if let execID = event.int("exec_id"), let index = state.execIndex[execID] {
                state.process.execs[index].failureCode = event.int("code")
            }
        case "data", "data_json":
            guard room(state.process.data.count, &state), let key = event.string("key") else { break }
            let value = event.fields["value"] ?? .null
            state.process.data.append(
                .init(
                    category: event.string("category") ?? "", key: key, value: Self.text(value),
                    intValue: value.intValue ?? value.stringValue.flatMap { Int64($0) },
                    isJSON: event.name == "data_json", thread: event.thread, timeUnixNano: time,
                    region: state.stacks[event.thread]?.last))
        case "timer", "th_timer":
            guard room(state.process.timers.count, &state) else { break }
            state.process.timers.append(
                .init(
                    category: event.string("category") ?? "", name: event.string("name") ?? "",
                    thread: event.name == "th_timer" ? event.thread : nil,
                    totalSeconds: event.fields["t_total"]?.doubleValue, minSeconds: event.fields["t_min"]?.doubleValue,
                    maxSeconds: event.fields["t_max"]?.doubleValue, count: event.int("intervals") ?? 0))
        case "counter", "th_counter":
            guard room(state.process.counters.count, &state) else { break }
            state.process.counters.append(
                .init(
                    category: event.string("category") ?? "", name: event.string("name") ?? "",
                    thread: event.name == "th_counter" ? event.thread : nil, count: event.int("count") ?? 0))
        case "error":
            guard room(state.process.errors.count, &state) else { break }
            state.process.errors.append(
                .init(message: event.string("msg") ?? "", format: event.string("fmt"), timeUnixNano: time))
        case "exit":
            state.sawExit = true
            state.process.exitCode = event.int("code")
            state.process.endUnixNano = time
            state.process.ending = .exit
        case "atexit":
            if let code = event.int("code") { state.process.exitCode = code }
            state.process.endUnixNano = time
            state.process.ending = .atexit
            return true
        case "signal":
            state.process.signal = event.int("signo")
            state.process.endUnixNano = time
            state.process.ending = .signal
            return true
        default:
            break  // unknown or uninteresting events (too_many_files, future events) are ignored
        }
        return false
    }

    private func leaveRegion(_ event: Trace2Event, time: UInt64, state: inout Open) {
        guard var stack = state.stacks[event.thread], !stack.isEmpty else { return }
        let category = event.string("category") ?? ""
        let label = event.string("label") ?? ""
        guard
            let position = stack.lastIndex(where: {
                state.process.regions[$0].category == category && state.process.regions[$0].label == label
            })
        else { return }
        for index in stack[(position + 1)...] {
            state.process.regions[index].endUnixNano = max(time, state.process.regions[index].startUnixNano)
        }
        let index = stack[position]
        var region = state.process.regions[index]
        region.endUnixNano = max(time, region.startUnixNano)
        region.unclosed = false
        if event.timeUnixNano == nil, let tRel = event.tRel {
            region.endUnixNano = max(region.endUnixNano, region.startUnixNano + Trace2Time.nanos(seconds: tRel))
        }
        state.process.regions[index] = region
        stack.removeSubrange(position...)
        state.stacks[event.thread] = stack
    }

    /// A `value` as attribute text: strings as they are, anything else as compact JSON.
    static func text(_ value: JSONValue) -> String {
        if case .string(let text) = value { return text }
        return value.jsonText
    }
}
