import Logging
import NIOCore
import NIOPosix
import TapTrace

/// The Trace2 part of `gitaly-tap proxy`: which sources to open.
public struct Trace2Options: Sendable {
    /// `--trace2-socket`: sockets git writes to (`GIT_TRACE2_EVENT=af_unix:…`).
    public var sockets: [Trace2SocketTarget] = []
    /// `--trace2-dir`: directories watched for `gitaly-trace2*` temp files and per-process event files.
    public var directories: [String] = []
    /// Bounds and timeouts of the collector and correlator.
    public var collector = Trace2Collector.Configuration()
    /// How long a deleted, silent event file is still read.
    public var deletedFileGrace: Duration = .seconds(1)
    /// How long an event file that is not deleted may stay silent before it is finished (its open processes end
    /// as incomplete) and its descriptor closed.
    public var fileIdleTimeout: Duration = .seconds(600)

    public init() {}

    /// True when any source is configured.
    public var isEnabled: Bool { !sockets.isEmpty || !directories.isEmpty }
}

/// `--trace2-storage NAME=/abs/path`: a Gitaly storage and its root directory, as in Gitaly's `[[storage]]`. With the
/// root known, a git process joins an RPC by `--git-dir` only when its path is exactly root + the RPC's relative
/// path; without it, a path that ends with the relative path is enough.
public struct Trace2StorageRoot: Sendable, Equatable {
    /// The storage name RPCs carry (`default`).
    public var name: String
    /// Its root directory, absolute.
    public var path: String

    public init(parsing text: String) throws(Trace2ConfigurationError) {
        guard let equals = text.firstIndex(of: "="), equals != text.startIndex,
            text[text.index(after: equals)...].hasPrefix("/")
        else {
            throw Trace2ConfigurationError(
                description:
                    "--trace2-storage '\(text)': expected NAME=/absolute/path, as Gitaly's storage name and path (e.g. default=/var/opt/gitlab/git-data/repositories)"
            )
        }
        name = String(text[..<equals])
        path = String(text[text.index(after: equals)...])
    }
}

/// The running Trace2 sources: socket listeners and directory watchers, all feeding one ``Trace2Collector``.
public final class Trace2Runtime: Sendable {
    /// Where every source delivers its events.
    public let collector: Trace2Collector
    /// Stream socket listeners.
    public let listeners: [Trace2SocketListener]
    /// Directory watchers.
    public let watchers: [Trace2DirectoryWatcher]
    /// Datagram sockets.
    public let receivers: [Trace2DatagramReceiver]
    private let pool: NIOThreadPool?
    private let watching: [EventLoopFuture<Void>]
    private let logger: Logger

    private init(
        collector: Trace2Collector, listeners: [Trace2SocketListener], watchers: [Trace2DirectoryWatcher],
        receivers: [Trace2DatagramReceiver], pool: NIOThreadPool?, watching: [EventLoopFuture<Void>], logger: Logger
    ) {
        self.collector = collector
        self.listeners = listeners
        self.watchers = watchers
        self.receivers = receivers
        self.pool = pool
        self.watching = watching
        self.logger = logger
    }

    /// Opens every configured source; on a failure, closes what was opened and throws a one-line error.
    public static func start(
        _ options: Trace2Options, collector: Trace2Collector, group: any EventLoopGroup, logger: Logger
    ) async throws(Trace2ConfigurationError) -> Trace2Runtime {
        var listeners: [Trace2SocketListener] = []
        var watchers: [Trace2DirectoryWatcher] = []
        var receivers: [Trace2DatagramReceiver] = []
        do {
            for target in options.sockets where target.kind == .dgram {
                receivers.append(try Trace2DatagramReceiver(path: target.path, collector: collector, logger: logger))
                logger.info("listening for Trace2", metadata: ["trace2_target": "\(target.gitTarget)"])
            }
            for target in options.sockets where target.kind == .stream {
                let listener = Trace2SocketListener(target: target, collector: collector, group: group, logger: logger)
                try await listener.start()
                listeners.append(listener)
            }
            for directory in options.directories {
                var configuration = Trace2DirectoryWatcher.Configuration(directory: directory)
                configuration.deletedGrace = options.deletedFileGrace
                configuration.idleTimeout = options.fileIdleTimeout
                watchers.append(
                    try Trace2DirectoryWatcher(configuration: configuration, collector: collector, logger: logger))
            }
        } catch {
            for listener in listeners { await listener.stop() }
            for watcher in watchers { watcher.stop() }
            for receiver in receivers { receiver.stop() }
            throw error
        }
        var pool: NIOThreadPool?
        var watching: [EventLoopFuture<Void>] = []
        if !watchers.isEmpty || !receivers.isEmpty {
            let threads = NIOThreadPool(numberOfThreads: 2 * watchers.count + receivers.count)
            threads.start()
            pool = threads
            watching = watchers.map { $0.start(on: threads, eventLoop: group.next()) }
            watching += receivers.map { $0.start(on: threads, eventLoop: group.next()) }
            for watcher in watchers {
                logger.info("watching for Trace2 files", metadata: ["trace2_dir": "\(watcher.configuration.directory)"])
            }
        }
        return Trace2Runtime(
            collector: collector, listeners: listeners, watchers: watchers, receivers: receivers, pool: pool,
            watching: watching,
            logger: logger)
    }

    /// Stops every source and waits until each has handed its last events to the collector.
    public func stop() async {
        for listener in listeners { await listener.stop() }
        for watcher in watchers { watcher.stop() }
        for receiver in receivers { receiver.stop() }
        for future in watching { try? await future.get() }
        try? await pool?.shutdownGracefully()
        let counts = collector.counts
        logger.info(
            "Trace2 sources stopped",
            metadata: [
                "trace2_events": "\(counts.events)", "trace2_processes": "\(counts.processesFinished)",
                "trace2_malformed_lines": "\(counts.malformedLines)",
            ])
    }

    /// Adds the Trace2 counters to the metrics endpoint.
    public func registerMetrics(_ metrics: TapMetrics) {
        let collector = self.collector
        let watchers = self.watchers
        let listeners = self.listeners
        metrics.register(name: "gitaly_tap_trace2_events_total", help: "Trace2 events parsed.", type: "counter") {
            [("", Double(collector.counts.events))]
        }
        metrics.register(
            name: "gitaly_tap_trace2_malformed_lines_total",
            help: "Trace2 lines skipped: not JSON events, cut short, or too long.", type: "counter"
        ) {
            let c = collector.counts
            return [
                ("reason=\"malformed\"", Double(c.malformedLines)),
                ("reason=\"truncated\"", Double(c.truncatedLines)),
                ("reason=\"oversized\"", Double(c.oversizedLines)),
            ]
        }
        metrics.register(
            name: "gitaly_tap_trace2_processes_total",
            help: "Git processes seen through Trace2, by how they were joined to an RPC.",
            type: "counter"
        ) {
            let c = collector.counts.correlation
            var rows = Trace2Correlator.MatchKey.allCases.filter { $0 != .none }.map {
                ("key=\"\($0.rawValue)\"", Double(c.matched[$0.rawValue, default: 0]))
            }
            rows.append(("key=\"none\"", Double(c.unmatched)))
            rows.append(("key=\"shared\"", Double(c.shared)))
            return rows
        }
        metrics.register(
            name: "gitaly_tap_trace2_processes_open", help: "Git processes whose Trace2 stream is still open."
        ) {
            [("", Double(collector.openAndPending.open))]
        }
        metrics.register(
            name: "gitaly_tap_trace2_processes_waiting", help: "Finished git processes waiting for their RPC."
        ) {
            [("", Double(collector.openAndPending.pending))]
        }
        if !watchers.isEmpty {
            metrics.register(
                name: "gitaly_tap_trace2_files_total",
                help:
                    "Trace2 event files seen in watched directories: read, missed (gone before opened), ignored (other names).",
                type: "counter"
            ) {
                let c = watchers.map(\.counts)
                return [
                    ("result=\"read\"", Double(c.reduce(0) { $0 + $1.filesOpened })),
                    ("result=\"missed\"", Double(c.reduce(0) { $0 + $1.filesMissed })),
                    ("result=\"ignored\"", Double(c.reduce(0) { $0 + $1.filesIgnored })),
                ]
            }
        }
        metrics.register(name: "gitaly_tap_trace2_streams_open", help: "Trace2 connections and files open now.") {
            [("", Double(listeners.reduce(0) { $0 + $1.openConnections } + watchers.reduce(0) { $0 + $1.openFiles }))]
        }
    }
}
