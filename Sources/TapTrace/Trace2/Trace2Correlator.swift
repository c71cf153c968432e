/// Hangs each git process tree under the RPC span that caused it, and emits the git spans.
///
/// Join keys, strongest first (GITALY-WIRE.md §5):
/// 1. `sid_prefix`: the sid starts with `<correlation id>/` (Gitaly sets `GIT_TRACE2_PARENT_SID` to it);
/// 2. `def_param`: the process reported `CORRELATION_ID` (through `GIT_TRACE2_ENV_VARS=CORRELATION_ID`);
/// 3. `git_dir`: `--git-dir` (or the repository argument, or the worktree) is the RPC's repository path and the
///    process started within the RPC's time window.
///
/// Several RPCs may share a correlation id (one Rails request makes many calls); the one whose time window holds
/// the process start wins. The key that matched is the root process's `trace2.correlation.key` attribute.
/// Long-lived processes that Gitaly shares between calls (the `cat-file --batch` cache, pack-objects cache
/// runs) are emitted as their own trace marked `git.shared`, naming the RPC that started them, so they do not
/// stretch one call's span. Processes that match nothing are emitted as their own trace (`none`).
///
/// RPC spans pass through the pipeline untouched; the correlator keeps a small summary of recent ones and holds
/// finished processes until their RPC shows up or a wait expires. Everything held is bounded. Pure: `now` is
/// passed in (nanoseconds, wall clock), ids come from an injected generator.
public struct Trace2Correlator: Sendable {
    /// Timing and size bounds.
    public struct Configuration: Sendable {
        /// How much earlier than its RPC a process may seem to start (the sid's time is cut to microseconds; raise it
        /// when git runs on another host whose clock differs). A process must start before its RPC ends: Gitaly
        /// spawns git while serving the call, and the client's next call on the same correlation id may follow
        /// within a millisecond, so there is no slack at the end.
        public var windowSlack: Duration = .milliseconds(5)
        /// How long an RPC stays available for late process reports.
        public var rpcRetention: Duration = .seconds(60)
        /// How long a process that names a correlation id waits for its RPC (RPCs may run for minutes).
        public var waitWithCorrelationID: Duration = .seconds(300)
        /// How long a process without a correlation id waits for an RPC on its repository.
        public var waitWithoutCorrelationID: Duration = .seconds(10)
        /// How long a process whose parent git process was never seen waits for it (streams race each other).
        public var orphanWait: Duration = .seconds(2)
        /// Processes held at once; beyond it the oldest is emitted unmatched.
        public var maximumPendingProcesses = 20_000
        /// RPC summaries held at once.
        public var maximumRetainedRPCs = 50_000
        /// Storage name → storage root path, when known: then `git_dir` matches the exact path
        /// `<root>/<relative_path>` instead of any path ending in `/<relative_path>`.
        public var storageRoots: [String: String] = [:]

        public init() {}
    }

    /// Which key attached a process tree.
    public enum MatchKey: String, Sendable, CaseIterable {
        case sidPrefix = "sid_prefix"
        case defParam = "def_param"
        case gitDir = "git_dir"
        case none
    }

    /// What the correlator has done, for metrics and tests.
    public struct Counts: Sendable, Equatable {
        /// Finished processes received.
        public var processes = 0
        /// Process trees decided (each root once).
        public var trees = 0
        /// Trees attached to an RPC, by key (`sid_prefix`, `def_param`, `git_dir`).
        public var matched: [String: Int] = [:]
        /// Trees emitted on their own as shared between calls.
        public var shared = 0
        /// Trees that matched no RPC.
        public var unmatched = 0
        /// Trees emitted unmatched early because too many were held.
        public var forcedOut = 0
        public init() {}
    }

    struct RPC: Sendable {
        var serial: UInt64
        var traceID: TraceID
        var spanID: SpanID
        var sampled: Bool
        var start: UInt64
        var end: UInt64
        var correlationID: String?
        var relativePath: String?
        var storage: String?
        var arrivedAt: UInt64
    }

    struct Pending: Sendable {
        var process: GitProcess
        var ids: GitProcessSpanBuilder.IDs
        var arrivedAt: UInt64
    }

    struct Placed: Sendable {
        var traceID: TraceID
        var sampled: Bool
        var ids: GitProcessSpanBuilder.IDs
        var pid: Int32?
        var children: [GitProcess.Child]
        var claimed: Set<Int64> = []
        var placedAt: UInt64
    }

    enum Decision {
        case wait
        case attach(RPC, MatchKey, candidates: Int)
        case unmatched
    }

    /// Timing and size bounds.
    public let configuration: Configuration
    /// What the correlator has done so far.
    public private(set) var counts = Counts()
    private var generator: SplitMix64
    private var rpcs: [UInt64: RPC] = [:]
    private var rpcOrder: [UInt64] = []
    private var rpcOrderHead = 0
    private var rpcsByCorrelation: [String: [UInt64]] = [:]
    private var rpcsByPath: [String: [UInt64]] = [:]
    private var nextSerial: UInt64 = 0
    private var pending: [String: Pending] = [:]
    /// Held processes by their parent's sid, so trees are walked without scanning everything held.
    private var pendingChildren: [String: Set<String>] = [:]
    private var running: Set<String> = []
    private var placed: [String: Placed] = [:]
    private var placedOrder: [String] = []
    private var placedOrderHead = 0

    /// A correlator whose span ids come from `seed` (tests pass a fixed one).
    public init(configuration: Configuration = Configuration(), seed: UInt64? = nil) {
        self.configuration = configuration
        var system = SystemRandomNumberGenerator()
        self.generator = SplitMix64(seed: seed ?? system.next())
    }

    /// Processes held, waiting for their RPC or their parent.
    public var pendingCount: Int { pending.count }
    /// RPC summaries held.
    public var retainedRPCCount: Int { rpcs.count }

    // MARK: - Input

    /// A finished RPC span: remembered, and any held process that belongs to it is emitted under it.
    public mutating func add(rpc span: Span, now: UInt64) -> [Span] {
        guard case .string("grpc") = span.attributes["rpc.system"] else { return [] }
        // Calls Gitaly makes back to its client over the backchannel (transaction votes) run no git of their own.
        if span.attributes["gitaly.backchannel.from_gitaly"] == .bool(true) { return [] }
        nextSerial += 1
        let rpc = RPC(
            serial: nextSerial, traceID: span.traceID, spanID: span.spanID, sampled: span.sampled,
            start: span.startTimeUnixNano, end: span.endTimeUnixNano,
            correlationID: Self.string(span.attributes[GitLabMetadata.AttributeKey.correlationID]),
            relativePath: Self.string(span.attributes[GitalyRepository.AttributeKey.relativePath]).map(
                GitProcess.normalise),
            storage: Self.string(span.attributes[GitalyRepository.AttributeKey.storage]), arrivedAt: now)
        rpcs[rpc.serial] = rpc
        rpcOrder.append(rpc.serial)
        if let id = rpc.correlationID { rpcsByCorrelation[id, default: []].append(rpc.serial) }
        if let path = rpc.relativePath, !path.isEmpty {
            rpcsByPath[Self.lastComponent(path), default: []].append(rpc.serial)
        }
        while rpcs.count > configuration.maximumRetainedRPCs { dropOldestRPC() }
        return resolve(now: now, force: false)
    }

    /// What the process assembler reported.
    public mutating func add(_ output: Trace2ProcessAssembler.Output, now: UInt64) -> [Span] {
        switch output {
        case .started(let sid):
            running.insert(sid)
            return []
        case .finished(let process):
            running.remove(process.sid.text)
            counts.processes += 1
            var spans: [Span] = []
            if pending.count >= configuration.maximumPendingProcesses,
                let oldest = pending.values.min(by: { $0.arrivedAt < $1.arrivedAt })
            {
                counts.forcedOut += 1
                spans += place(root: oldest.process.sid.text, decision: .unmatched, now: now)
            }
            let sid = process.sid.text
            pending[sid] = Pending(
                process: process, ids: GitProcessSpanBuilder.makeIDs(for: process, using: &generator), arrivedAt: now)
            if let parent = process.sid.parent { pendingChildren[parent, default: []].insert(sid) }
            // Only this process can have changed state: its children wait for it, other trees for RPCs or time.
            return spans + resolve(now: now, force: false, only: [sid])
        }
    }

    /// Periodic housekeeping: expired waits are decided, old RPC summaries and placements forgotten.
    public mutating func tick(now: UInt64) -> [Span] {
        let retention = Self.nanos(configuration.rpcRetention)
        while rpcOrderHead < rpcOrder.count {
            guard let rpc = rpcs[rpcOrder[rpcOrderHead]] else {
                rpcOrderHead += 1
                continue
            }
            guard rpc.arrivedAt + retention < now else { break }
            dropOldestRPC()
        }
        while placedOrderHead < placedOrder.count {
            let sid = placedOrder[placedOrderHead]
            if let entry = placed[sid], entry.placedAt + retention >= now { break }
            placed[sid] = nil
            placedOrderHead += 1
        }
        if placedOrderHead > 1024, placedOrderHead * 2 > placedOrder.count {
            placedOrder.removeFirst(placedOrderHead)
            placedOrderHead = 0
        }
        return resolve(now: now, force: false)
    }

    /// Emits everything held (shutdown): held processes get their best match now, or none.
    public mutating func flush(now: UInt64) -> [Span] {
        running.removeAll()
        return resolve(now: now, force: true)
    }

    // MARK: - Deciding

    private mutating func resolve(now: UInt64, force: Bool, only: [String]? = nil) -> [Span] {
        var spans: [Span] = []
        let orphanWait = Self.nanos(configuration.orphanWait)
        // Parents first, so a child finds its parent placed in the same pass.
        let order =
            only
            ?? pending.values.sorted {
                ($0.process.sid.text.utf8.count, $0.process.startUnixNano)
                    < ($1.process.sid.text.utf8.count, $1.process.startUnixNano)
            }.map(\.process.sid.text)
        for sid in order {
            guard let entry = pending[sid] else { continue }
            if let parent = entry.process.sid.parent {
                if placed[parent] != nil {
                    spans += emitChild(sid, parent: parent, now: now)
                    continue
                }
                if !force, pending[parent] != nil || running.contains(parent) { continue }
                if pending[parent] != nil {
                    continue  // forced: the parent's own turn emits this subtree
                }
                if !force, Trace2SessionID.isGitComponent(Trace2SessionID(parent).own),
                    now < entry.arrivedAt + orphanWait
                {
                    continue
                }
            }
            let decision = decide(root: entry, now: now, force: force)
            if case .wait = decision { continue }
            spans += place(root: sid, decision: decision, now: now)
        }
        return spans
    }

    /// The correlation facts of the tree under `root` (held processes only).
    private func treeFacts(_ root: Pending) -> (prefix: String?, parameter: String?, paths: [String]) {
        let prefix = root.process.sid.outsidePrefix
        var parameter = root.process.correlationIDParameter
        var paths = root.process.repositoryPaths
        var stack = Array(pendingChildren[root.process.sid.text] ?? [])
        while let sid = stack.popLast() {
            guard let entry = pending[sid] else { continue }
            if parameter == nil { parameter = entry.process.correlationIDParameter }
            for path in entry.process.repositoryPaths where !paths.contains(path) { paths.append(path) }
            stack += pendingChildren[sid] ?? []
        }
        return (prefix, parameter, paths)
    }

    private func decide(root: Pending, now: UInt64, force: Bool) -> Decision {
        let facts = treeFacts(root)
        let process = root.process
        let namesCorrelationID = facts.prefix != nil || facts.parameter != nil
        let wait = Self.nanos(
            namesCorrelationID ? configuration.waitWithCorrelationID : configuration.waitWithoutCorrelationID)
        let expired = force || now >= root.arrivedAt + wait

        for (key, id) in [(MatchKey.sidPrefix, facts.prefix), (.defParam, facts.parameter)] {
            guard let id, let serials = rpcsByCorrelation[id] else { continue }
            let candidates = serials.compactMap { rpcs[$0] }
            if let best = bestInWindow(candidates, process) { return .attach(best.rpc, key, candidates: best.count) }
            if expired, let nearest = nearest(candidates, process) {
                return .attach(nearest, key, candidates: candidates.count)
            }
        }
        let correlationIDs = Set([facts.prefix, facts.parameter].compactMap { $0 })
        if !expired, !correlationIDs.isEmpty { return .wait }
        var repoCandidates: [RPC] = []
        var seen: Set<UInt64> = []
        for path in facts.paths {
            for serial in rpcsByPath[Self.lastComponent(path)] ?? [] where !seen.contains(serial) {
                guard let rpc = rpcs[serial], pathMatches(path, rpc) else { continue }
                // A process that names a correlation id never joins a call with another id.
                if let id = rpc.correlationID, !correlationIDs.isEmpty, !correlationIDs.contains(id) { continue }
                seen.insert(serial)
                repoCandidates.append(rpc)
            }
        }
        if let best = bestInWindow(repoCandidates, process) {
            return .attach(best.rpc, .gitDir, candidates: best.count)
        }
        return expired ? .unmatched : .wait
    }

    private func pathMatches(_ path: String, _ rpc: RPC) -> Bool {
        guard let relative = rpc.relativePath, !relative.isEmpty else { return false }
        if let storage = rpc.storage, let root = configuration.storageRoots[storage] {
            return path == GitProcess.normalise(root) + "/" + relative
        }
        return path == relative || path.hasSuffix("/" + relative)
    }

    /// RPCs whose window holds the process start; full containment first, then the latest start.
    private func bestInWindow(_ candidates: [RPC], _ process: GitProcess) -> (rpc: RPC, count: Int)? {
        let slack = Self.nanos(configuration.windowSlack)
        let holding = candidates.filter {
            $0.start <= process.startUnixNano + slack && process.startUnixNano <= $0.end
        }
        let best = holding.max { a, b in
            let aContains = process.endUnixNano <= a.end + slack
            let bContains = process.endUnixNano <= b.end + slack
            if aContains != bContains { return !aContains }
            return a.start < b.start
        }
        return best.map { ($0, holding.count) }
    }

    private func nearest(_ candidates: [RPC], _ process: GitProcess) -> RPC? {
        func distance(_ rpc: RPC) -> UInt64 {
            let p = process.startUnixNano
            if p < rpc.start { return rpc.start - p }
            if p > rpc.end { return p - rpc.end }
            return 0
        }
        return candidates.min { distance($0) < distance($1) }
    }

    // MARK: - Emitting

    private mutating func takePending(_ sid: String) -> Pending? {
        guard let entry = pending.removeValue(forKey: sid) else { return nil }
        if let parent = entry.process.sid.parent {
            pendingChildren[parent]?.remove(sid)
            if pendingChildren[parent]?.isEmpty == true { pendingChildren[parent] = nil }
        }
        return entry
    }

    private mutating func place(root sid: String, decision: Decision, now: UInt64) -> [Span] {
        guard let entry = takePending(sid) else { return [] }
        counts.trees += 1
        var attributes: SpanAttributes = [:]
        let traceID: TraceID
        var parent: SpanID?
        var sampled = true
        switch decision {
        case .attach(let rpc, let key, let candidates):
            attributes["trace2.correlation.key"] = .string(key.rawValue)
            if let id = rpc.correlationID { attributes[GitLabMetadata.AttributeKey.correlationID] = .string(id) }
            if candidates > 1 { attributes["trace2.correlation.candidates"] = .int(Int64(candidates)) }
            if let kind = Self.sharedKind(entry.process),
                entry.process.endUnixNano > rpc.end + Self.nanos(configuration.windowSlack)
            {
                counts.shared += 1
                attributes["git.shared"] = .bool(true)
                attributes["git.shared.kind"] = .string(kind)
                attributes["trace2.correlation.rpc.trace_id"] = .string(rpc.traceID.description)
                attributes["trace2.correlation.rpc.span_id"] = .string(rpc.spanID.description)
                traceID = TraceID.random(using: &generator)
            } else {
                counts.matched[key.rawValue, default: 0] += 1
                traceID = rpc.traceID
                parent = rpc.spanID
                sampled = rpc.sampled
            }
        case .unmatched, .wait:
            counts.unmatched += 1
            attributes["trace2.correlation.key"] = .string(MatchKey.none.rawValue)
            if let id = entry.process.sid.outsidePrefix ?? entry.process.correlationIDParameter {
                attributes[GitLabMetadata.AttributeKey.correlationID] = .string(id)
            }
            traceID = TraceID.random(using: &generator)
        }
        var spans = GitProcessSpanBuilder.spans(
            for: entry.process, ids: entry.ids, traceID: traceID, parent: parent, sampled: sampled,
            attributes: attributes, using: &generator)
        remember(entry, traceID: traceID, sampled: sampled, now: now)
        spans += emitDescendants(of: sid, now: now)
        return spans
    }

    private mutating func emitDescendants(of sid: String, now: UInt64) -> [Span] {
        var spans: [Span] = []
        for child in pendingChildren[sid] ?? [] where placed[sid] != nil {
            spans += emitChild(child, parent: sid, now: now)
        }
        return spans
    }

    private mutating func emitChild(_ sid: String, parent: String, now: UInt64) -> [Span] {
        guard placed[parent] != nil, let entry = takePending(sid), var parentEntry = placed[parent] else { return [] }
        let parentSpan = claimChildSpan(in: &parentEntry, for: entry.process)
        placed[parent] = parentEntry
        let spans = GitProcessSpanBuilder.spans(
            for: entry.process, ids: entry.ids, traceID: parentEntry.traceID, parent: parentSpan,
            sampled: parentEntry.sampled, using: &generator)
        remember(entry, traceID: parentEntry.traceID, sampled: parentEntry.sampled, now: now)
        return spans + emitDescendants(of: sid, now: now)
    }

    /// The parent's `child` span this process is: same pid first, then a running child of the right kind.
    private func claimChildSpan(in parent: inout Placed, for process: GitProcess) -> SpanID {
        if let pid = process.pid, pid == parent.pid, let exec = parent.ids.execs.values.first {
            return exec
        }
        let open = parent.children.filter { !parent.claimed.contains($0.childID) }
        var chosen = open.first { $0.pid != nil && $0.pid == process.pid }
        if chosen == nil {
            let margin: UInt64 = 50_000_000
            let running = open.filter {
                $0.startUnixNano <= process.startUnixNano + margin
                    && process.startUnixNano <= ($0.endUnixNano ?? .max)
            }
            let name = process.commandName ?? ""
            chosen =
                running.last { child in
                    child.argv.contains {
                        $0 == name || $0.hasSuffix("git-" + name) || $0.hasPrefix("git-" + name + " ")
                    }
                }
                ?? running.last
        }
        guard let child = chosen, let span = parent.ids.children[child.childID] else { return parent.ids.process }
        parent.claimed.insert(child.childID)
        return span
    }

    private mutating func remember(_ entry: Pending, traceID: TraceID, sampled: Bool, now: UInt64) {
        let sid = entry.process.sid.text
        if placed[sid] == nil { placedOrder.append(sid) }
        placed[sid] = Placed(
            traceID: traceID, sampled: sampled, ids: entry.ids, pid: entry.process.pid,
            children: entry.process.children, placedAt: now)
        while placed.count > configuration.maximumPendingProcesses, placedOrderHead < placedOrder.count {
            placed[placedOrder[placedOrderHead]] = nil
            placedOrderHead += 1
        }
    }

    private mutating func dropOldestRPC() {
        while rpcOrderHead < rpcOrder.count {
            let serial = rpcOrder[rpcOrderHead]
            rpcOrderHead += 1
            guard let rpc = rpcs.removeValue(forKey: serial) else { continue }
            if let id = rpc.correlationID {
                rpcsByCorrelation[id]?.removeAll { $0 == serial }
                if rpcsByCorrelation[id]?.isEmpty == true { rpcsByCorrelation[id] = nil }
            }
            if let path = rpc.relativePath {
                let key = Self.lastComponent(path)
                rpcsByPath[key]?.removeAll { $0 == serial }
                if rpcsByPath[key]?.isEmpty == true { rpcsByPath[key] = nil }
            }
            break
        }
        if rpcOrderHead > 1024, rpcOrderHead * 2 > rpcOrder.count {
            rpcOrder.removeFirst(rpcOrderHead)
            rpcOrderHead = 0
        }
    }

    // MARK: - Helpers

    /// Why a process may outlive the call that started it: Gitaly's process caches.
    static func sharedKind(_ process: GitProcess) -> String? {
        let sub = process.commandName ?? GitProcess.subcommand(in: process.argv)
        if sub == "cat-file", process.argv.contains(where: { $0.hasPrefix("--batch") }) { return "cat-file cache" }
        if sub == "pack-objects" { return "pack-objects cache" }
        return nil
    }

    static func lastComponent(_ path: String) -> String {
        GitProcess.basename(GitProcess.normalise(path))
    }

    static func string(_ value: AttributeValue?) -> String? {
        if case .string(let text) = value, !text.isEmpty { return text }
        return nil
    }

    static func nanos(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds) / 1_000_000_000)
    }
}

/// A small, fast, seedable generator for span ids (Steele, Lea, Flood: SplitMix64).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
