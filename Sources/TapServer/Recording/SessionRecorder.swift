import CTapSupport
import Logging
import NIOCore
import NIOPosix
import Synchronization
import TapRecord
import TapTrace
import TapWire

#if canImport(Glibc)
    import Glibc
#endif

/// Settings of `proxy --record`.
public struct RecordingOptions: Sendable {
    /// The first file; later files are `PATH.1`, `PATH.2`, ...
    public var path: String
    public var limits: RecordingLimits
    /// Bytes of payload waiting for the writer; past it the writer is too slow and recording stops.
    public var maxQueuedBytes = 64 << 20
    /// A pause before each block written: simulates a slow disk (tests; `GITALY_TAP_RECORD_BLOCK_DELAY_MS`).
    public var blockDelay: Duration?

    public init(path: String, limits: RecordingLimits = RecordingLimits()) {
        self.path = path
        self.limits = limits
    }
}

/// Writes what the connections observed to a recording, on a thread of its own.
///
/// The event loops only enqueue (`submit` takes a lock and appends); the writer thread encodes and writes. The
/// queue is bounded by payload bytes: when the disk is slow and the queue fills, or a write fails (disk full),
/// recording stops for good with one log line and a notice in the file (when the file can still take it), and
/// `submit` tells the connections to stop producing events. Forwarding never waits for the recorder.
public final class SessionRecorder: Sendable {
    enum Item: Sendable {
        case opened(connection: UInt64, time: UInt64, transport: String, peer: String)
        case events(connection: UInt64, [WireEvent])
        case closed(ConnectionSummary)
        case stop(String)
    }

    private struct Queue {
        var items: [Item] = []
        var bytes = 0
        /// The most payload that waited at once since the writer last went idle.
        var highWater = 0
        var draining = false
        var stopped = false
        var finishing: [CheckedContinuation<Void, Never>] = []
    }

    private struct Output {
        var writer: RecordingWriter?
        var encoder: EventEncoder
    }

    public let options: RecordingOptions
    private let queue = Mutex(Queue())
    private let output: Mutex<Output>
    private let pool: NIOThreadPool
    private let logger: Logger
    private let written = Atomic<Int>(0)

    /// Creates the recording file (mode 0600) and starts the writer thread.
    ///
    /// - Throws: `ProxyStartError` when the file cannot be created.
    public init(options: RecordingOptions, listen: String, upstream: String, logger: Logger) throws {
        self.options = options
        self.logger = logger
        let writer: RecordingWriter
        do {
            writer = try RecordingWriter(
                path: options.path, limits: options.limits, listen: listen, upstream: upstream,
                toolVersion: "gitaly-tap", clock: { WallClock.nowNanos() })
            try writer.flush()
        } catch {
            throw ProxyStartError(description: "\(error.description) (--record)")
        }
        writer.blockDelay = options.blockDelay
        // Past a file-size limit (RLIMIT_FSIZE) the kernel would kill the process with SIGXFSZ; ignored, the write
        // fails with EFBIG instead and only the recording stops, like on a full disk.
        signal(SIGXFSZ, SIG_IGN)
        let direct = writer.isWritingDirectly
        output = Mutex(Output(writer: writer, encoder: EventEncoder(limits: options.limits)))
        pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        logger.info(
            "recording",
            metadata: [
                "file": "\(options.path)", "redact_personal": "\(options.limits.redactPersonal)",
                "direct_io": "\(direct)",
            ])
    }

    /// False once recording has stopped: the caller should stop producing events.
    public var isRecording: Bool { queue.withLock { !$0.stopped } }

    /// Records written so far.
    public var recordsWritten: Int { written.load(ordering: .relaxed) }

    func connectionOpened(_ info: ConnectionInfo) {
        _ = enqueue(
            .opened(connection: info.id, time: info.startTimeUnixNano, transport: info.transport, peer: info.peer),
            bytes: 0)
    }

    /// Hands over a connection's events; false when recording has stopped.
    func submit(connection: UInt64, events: [WireEvent]) -> Bool {
        var bytes = 0
        for event in events {
            switch event.kind {
            case .message(let m): bytes += m.pieces.count
            case .sidechannelData(_, let b): bytes += b.readableBytes
            default: bytes += 64
            }
        }
        return enqueue(.events(connection: connection, events), bytes: bytes)
    }

    func connectionClosed(_ summary: ConnectionSummary) {
        _ = enqueue(.closed(summary), bytes: 0)
    }

    private func enqueue(_ item: Item, bytes: Int) -> Bool {
        let (accepted, schedule, overflow) = queue.withLock { q -> (Bool, Bool, Bool) in
            guard !q.stopped else { return (false, false, false) }
            if q.bytes + bytes > options.maxQueuedBytes {
                q.stopped = true
                q.items.append(
                    .stop(
                        "the writer fell more than \(options.maxQueuedBytes) bytes behind (the disk, or the CPU left"
                            + " for checksums and writes, is too slow for the traffic)"))
                let schedule = !q.draining
                q.draining = true
                return (false, schedule, true)
            }
            q.items.append(item)
            q.bytes += bytes
            q.highWater = max(q.highWater, q.bytes)
            let schedule = !q.draining
            q.draining = true
            return (true, schedule, false)
        }
        if overflow {
            logger.error(
                "recording stopped: the writer fell behind the traffic (slow disk or busy CPU); traffic continues unrecorded",
                metadata: ["file": "\(options.path)", "queued_bytes_limit": "\(options.maxQueuedBytes)"])
        }
        if schedule { pool.submit { [self] _ in drain() } }
        return accepted
    }

    /// Queued payload past which the writer returns freed memory to the system when it next goes idle.
    static let trimAfterBytes = 8 << 20

    /// How long the writer waits for more records after the queue empties before it writes out everything, and
    /// the longest that records may stay unwritten while traffic never pauses.
    static let idleFlushDelay = Duration.milliseconds(10)
    static let maxFlushAge = Duration.milliseconds(200)

    /// Runs on the writer thread; only one drain runs at a time (`draining`).
    ///
    /// While records keep coming only whole blocks are written. When the queue empties the writer lingers for
    /// `idleFlushDelay` (still marked draining, so producers do not wake it) before it writes out the rest: under
    /// a stream of small calls the queue empties thousands of times a second, and writing out a short tail each
    /// time cost a direct write plus a page-cache write per batch.
    private func drain() {
        let clock = ContinuousClock()
        var lastFlush = clock.now
        var idleSince: ContinuousClock.Instant?
        while true {
            let (items, finishing) = queue.withLock { q -> ([Item], Bool) in
                defer {
                    q.items = []
                    q.bytes = 0
                }
                return (q.items, !q.finishing.isEmpty)
            }
            let now = clock.now
            if !items.isEmpty {
                idleSince = nil
                output.withLock { out in
                    write(items, to: &out)
                    if now - lastFlush >= Self.maxFlushAge {
                        flushAll(&out)
                        lastFlush = now
                    }
                }
                continue
            }
            if !finishing {
                let since = idleSince ?? now
                idleSince = since
                if now - since < Self.idleFlushDelay {
                    usleep(1000)
                    continue
                }
            }
            let (done, waiting, highWater) = queue.withLock {
                q -> (Bool, [CheckedContinuation<Void, Never>], Int) in
                // Records that came in since the last look are written first.
                guard q.items.isEmpty else { return (false, [], 0) }
                q.draining = false
                let waiting = q.finishing
                q.finishing = []
                defer { q.highWater = 0 }
                return (true, waiting, q.highWater)
            }
            guard done else { continue }
            // Idle: everything goes to the file now; during a burst only whole blocks were written.
            output.withLock { out in flushAll(&out) }
            for continuation in waiting { continuation.resume() }
            // After a burst of large payloads, give the freed buffers back to the system: glibc keeps freed
            // heap memory (and raises its mmap threshold after freeing large blocks), so the tap's RSS would
            // otherwise stay at the burst's peak.
            if highWater >= Self.trimAfterBytes { _ = tap_release_free_memory() }
            return
        }
    }

    private func write(_ items: [Item], to out: inout Output) {
        guard let writer = out.writer else { return }
        var count = 0
        // Counted on every way out, the file-limit stop included; a record a stopped writer refused is not.
        defer { written.add(count, ordering: .relaxed) }
        do {
            for item in items {
                switch item {
                case .opened(let connection, let time, let transport, let peer):
                    try writer.append(
                        .connectionOpened(connection: connection, time: time, transport: transport, peer: peer))
                    count += 1
                case .events(let connection, let events):
                    for event in events {
                        for record in out.encoder.records(for: event, connection: connection) {
                            try writer.append(record)
                            if !writer.isStopped { count += 1 }
                        }
                    }
                case .closed(let s):
                    try writer.append(
                        .connectionClosed(
                            connection: s.info.id, time: s.endTimeUnixNano, kind: s.kind,
                            bytesToServer: UInt64(s.bytesToServer), bytesToClient: UInt64(s.bytesToClient),
                            reason: s.closeReason, decodingStopped: s.decodingStopped))
                    count += 1
                case .stop(let reason):
                    try writer.finish(notice: "recording stopped: \(reason)")
                    out.writer = nil
                    return
                }
                if writer.isStopped {
                    // The file limit was reached; the writer wrote its notice.
                    stopQueue()
                    logger.warning(
                        "recording stopped: file limit reached; traffic continues unrecorded",
                        metadata: ["file": "\(options.path)", "files": "\(writer.files.count)"])
                    out.writer = nil
                    return
                }
            }
        } catch {
            stopQueue()
            logger.error(
                "recording stopped: \(error.description); traffic continues unrecorded",
                metadata: ["file": "\(options.path)"])
            writer.abandon()
            out.writer = nil
        }
    }

    private func flushAll(_ out: inout Output) {
        guard let writer = out.writer else { return }
        do {
            try writer.flush()
        } catch {
            stopQueue()
            logger.error(
                "recording stopped: \(error.description); traffic continues unrecorded",
                metadata: ["file": "\(options.path)"])
            writer.abandon()
            out.writer = nil
        }
    }

    private func stopQueue() {
        queue.withLock {
            $0.stopped = true
            $0.items = []
            $0.bytes = 0
        }
    }

    /// Writes what is queued, closes the recording with its end marker and stops the writer thread.
    public func finish() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let schedule = queue.withLock { q -> Bool in
                q.stopped = true
                q.finishing.append(continuation)
                let schedule = !q.draining
                q.draining = true
                return schedule
            }
            if schedule { pool.submit { [self] _ in drain() } }
        }
        output.withLock { out in
            guard let writer = out.writer else { return }
            do {
                try writer.finish()
                logger.info("recording closed", metadata: ["files": "\(writer.files.joined(separator: ","))"])
            } catch {
                logger.error("recording could not be closed: \(error)", metadata: ["file": "\(options.path)"])
            }
            out.writer = nil
        }
        try? await pool.shutdownGracefully()
    }
}
