import Logging
import Synchronization
import TapTrace

/// The meeting point of the Trace2 sources and the span pipeline.
///
/// Sources (socket connections, datagrams, watched files) hand in parsed events tagged with a stream number; the
/// collector assembles processes, correlates them with the RPC spans the pipeline shows it, and keeps the git
/// spans in an outbox the pipeline drains on its flush tick. All state sits behind one lock and is bounded: the
/// assembler caps open processes, the correlator caps held processes and RPC summaries, the outbox drops (and
/// counts) spans beyond its capacity.
public final class Trace2Collector: SpanObserver {
    /// Bounds and timeouts.
    public struct Configuration: Sendable {
        /// Bounds of the process assembler.
        public var assembler = Trace2ProcessAssembler.Limits()
        /// Timing and bounds of the correlator.
        public var correlator = Trace2Correlator.Configuration()
        /// A process with no event for this long is finished as incomplete.
        public var processIdleTimeout: Duration = .seconds(600)
        /// Spans waiting for the pipeline; beyond it spans are dropped and counted.
        public var outboxCapacity = 100_000

        public init() {}
    }

    /// Counters for metrics, logs and tests.
    public struct Counts: Sendable, Equatable {
        /// Events parsed.
        public var events = 0
        /// Lines that were not Trace2 events.
        public var malformedLines = 0
        /// Lines cut by the end of their stream.
        public var truncatedLines = 0
        /// Lines over the length limit.
        public var oversizedLines = 0
        /// Connections, files and datagram sockets opened.
        public var streamsOpened = 0
        /// Streams ended.
        public var streamsClosed = 0
        /// Processes whose first event arrived.
        public var processesStarted = 0
        /// Processes finished (any ending).
        public var processesFinished = 0
        /// Processes finished without an exit event.
        public var incompleteProcesses = 0
        /// Git spans handed to the pipeline.
        public var gitSpans = 0
        /// Git spans dropped because the outbox was full.
        public var droppedSpans = 0
        /// The correlator's counters.
        public var correlation = Trace2Correlator.Counts()
        public init() {}
    }

    struct State: Sendable {
        var assembler: Trace2ProcessAssembler
        var correlator: Trace2Correlator
        var streamSIDs: [UInt64: Set<String>] = [:]
        var openSIDs: Set<String> = []
        var outbox: [Span] = []
        var counts = Counts()
        var nextStream: UInt64 = 0
    }

    /// Bounds and timeouts.
    public let configuration: Configuration
    private let state: Mutex<State>
    private let now: @Sendable () -> UInt64
    private let logger: Logger

    /// A collector; `now` is the wall clock in nanoseconds (injected for tests).
    public init(
        configuration: Configuration = Configuration(), logger: Logger,
        now: @escaping @Sendable () -> UInt64 = WallClock.nowNanos
    ) {
        self.configuration = configuration
        self.logger = logger
        self.now = now
        state = Mutex(
            State(
                assembler: Trace2ProcessAssembler(limits: configuration.assembler),
                correlator: Trace2Correlator(configuration: configuration.correlator)))
    }

    /// Current counters.
    public var counts: Counts {
        state.withLock { s in
            var c = s.counts
            c.correlation = s.correlator.counts
            return c
        }
    }

    /// Processes with events but no end yet, and processes waiting for their RPC.
    public var openAndPending: (open: Int, pending: Int) {
        state.withLock { ($0.assembler.openCount, $0.correlator.pendingCount) }
    }

    // MARK: - Sources

    /// A number for a new stream (connection, file, datagram socket).
    ///
    /// - Parameter tracksProcesses: remember which processes the stream carried, so its end can finish them. A
    ///   datagram socket carries every process for the tap's whole life and passes false: its processes end by
    ///   their own events or by idle expiry, and nothing grows with them.
    public func openStream(tracksProcesses: Bool = true) -> UInt64 {
        state.withLock { s in
            s.nextStream += 1
            s.counts.streamsOpened += 1
            if tracksProcesses { s.streamSIDs[s.nextStream] = [] }
            return s.nextStream
        }
    }

    /// Events parsed from `stream`.
    public func ingest(_ events: [Trace2Event], stream: UInt64) {
        guard !events.isEmpty else { return }
        let time = now()
        state.withLock { s in
            s.counts.events += events.count
            for event in events {
                if s.streamSIDs[stream] != nil, !s.streamSIDs[stream]!.contains(event.sid) {
                    s.streamSIDs[stream]!.insert(event.sid)
                }
                apply(s.assembler.add(event, now: time), to: &s, now: time)
            }
        }
    }

    /// True when every process seen on `stream` has finished (and at least one was seen).
    public func streamComplete(_ stream: UInt64) -> Bool {
        state.withLock { s in
            guard let sids = s.streamSIDs[stream], !sids.isEmpty else { return false }
            return sids.isDisjoint(with: s.openSIDs)
        }
    }

    /// The stream ended: its parser's last counts are recorded, and its unfinished processes end as they are.
    public func closeStream(_ stream: UInt64, parser: Trace2LineParser.Counts, reason: String) {
        let time = now()
        state.withLock { s in
            s.counts.streamsClosed += 1
            s.counts.malformedLines += parser.malformed
            s.counts.truncatedLines += parser.truncated
            s.counts.oversizedLines += parser.oversized
            guard let sids = s.streamSIDs.removeValue(forKey: stream) else { return }
            // A file shared by a parent and its children may hold processes that other streams do not know.
            apply(s.assembler.endOfStream(sids: sids.intersection(s.openSIDs), reason: reason), to: &s, now: time)
        }
    }

    /// Parser counts of a stream that stays open (datagram sockets), added as they change.
    public func addParserCounts(malformed: Int, truncated: Int, oversized: Int) {
        state.withLock { s in
            s.counts.malformedLines += malformed
            s.counts.truncatedLines += truncated
            s.counts.oversizedLines += oversized
        }
    }

    private func apply(_ outputs: [Trace2ProcessAssembler.Output], to s: inout State, now time: UInt64) {
        for output in outputs {
            switch output {
            case .started(let sid):
                s.openSIDs.insert(sid)
                s.counts.processesStarted += 1
            case .finished(let process):
                s.openSIDs.remove(process.sid.text)
                s.counts.processesFinished += 1
                if case .incomplete = process.ending { s.counts.incompleteProcesses += 1 }
            }
            enqueue(s.correlator.add(output, now: time), into: &s)
        }
    }

    private func enqueue(_ spans: [Span], into s: inout State) {
        guard !spans.isEmpty else { return }
        let room = max(0, configuration.outboxCapacity - s.outbox.count)
        if spans.count > room {
            s.counts.droppedSpans += spans.count - room
            if room > 0 { s.outbox.append(contentsOf: spans.prefix(room)) }
        } else {
            s.outbox.append(contentsOf: spans)
        }
    }

    // MARK: - SpanObserver

    /// Shows the correlator an RPC span; returns git spans it completes.
    public func observe(_ span: Span) -> [Span] {
        let time = now()
        return state.withLock { s in
            let spans = s.correlator.add(rpc: span, now: time)
            s.counts.gitSpans += spans.count
            return spans
        }
    }

    /// Expires idle processes and waits, and hands over the git spans ready since the last call.
    public func drain() -> [Span] {
        let time = now()
        let (seconds, _) = configuration.processIdleTimeout.components
        let idle = UInt64(max(0, seconds)) * 1_000_000_000
        return state.withLock { s in
            if time > idle { apply(s.assembler.expire(inactiveSince: time - idle), to: &s, now: time) }
            enqueue(s.correlator.tick(now: time), into: &s)
            let out = s.outbox
            s.outbox.removeAll(keepingCapacity: out.count < 4096)
            s.counts.gitSpans += out.count
            return out
        }
    }

    /// Finishes every open process, decides every held one, and hands over all remaining git spans.
    public func finish() -> [Span] {
        let time = now()
        return state.withLock { s in
            apply(s.assembler.finishAll(reason: "tap stopped"), to: &s, now: time)
            enqueue(s.correlator.flush(now: time), into: &s)
            let out = s.outbox
            s.outbox = []
            s.counts.gitSpans += out.count
            return out
        }
    }
}
