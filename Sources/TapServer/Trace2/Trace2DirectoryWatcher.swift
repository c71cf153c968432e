import Logging
import NIOCore
import NIOPosix
import Synchronization
import TapTrace

#if canImport(Glibc)
    import Glibc
#endif

/// Reads Trace2 event files as git writes them into a directory, found through inotify.
///
/// Two kinds of file are read: Gitaly's own `gitaly-trace2*` temp files (Gitaly creates one in its `$TMPDIR` for
/// every `pack-objects` and for every git command of a sampled trace, and deletes it once the command is done),
/// and the per-process files of a git directory target (`GIT_TRACE2_EVENT=/some/dir`, named after the sid).
/// Everything else in the directory is ignored, and files that existed before the watcher started are not read.
///
/// A file is opened as soon as inotify reports it and read as it grows. Deleting it does not stop the reading: the
/// descriptor stays open until the file is finished, which is when every process seen in it has ended (`atexit` or
/// `signal`), when it was deleted and has not grown for ``Configuration/deletedGrace``, or when it has not grown for
/// ``Configuration/idleTimeout``. Then the descriptor is closed. The watch loop blocks in `poll(2)` on a thread
/// of its own, never on the Swift concurrency pool.
public final class Trace2DirectoryWatcher: Sendable {
    /// Where and how long.
    public struct Configuration: Sendable {
        /// The directory to watch.
        public var directory: String
        /// A deleted file that has not grown for this long is finished.
        public var deletedGrace: Duration = .seconds(1)
        /// A file that has not grown for this long is finished, deleted or not.
        public var idleTimeout: Duration = .seconds(600)
        /// How often growing files are read when inotify is quiet.
        public var pollInterval: Duration = .milliseconds(20)
        /// Files held open at once; more are skipped and counted.
        public var maximumOpenFiles = 4096

        public init(directory: String) {
            self.directory = directory
        }
    }

    /// What the watcher did, for metrics, logs and tests.
    public struct Counts: Sendable, Equatable {
        /// Files opened for reading.
        public var filesOpened = 0
        /// Files read to their end and closed.
        public var filesFinished = 0
        /// Files that were gone before they could be opened, or skipped because too many were open.
        public var filesMissed = 0
        /// Files whose names are neither `gitaly-trace2*` nor a Trace2 sid.
        public var filesIgnored = 0
        /// Bytes read from all files.
        public var bytesRead = 0
        /// Times the inotify queue overflowed.
        public var inotifyOverflows = 0
        public init() {}
    }

    struct TrackedFile {
        var fd: Int32
        var name: String
        var stream: UInt64
        var parser = Trace2LineParser()
        var deleted = false
        var lastGrowth: ContinuousClock.Instant
    }

    /// Where and how long.
    public let configuration: Configuration
    private let collector: Trace2Collector
    private let logger: Logger
    private let inotifyFD: Int32
    private let stopping = Mutex(false)
    private let state = Mutex(Counts())
    private let open = Mutex(0)
    private let closed = Mutex(false)
    private let handoff = Mutex(Handoff())

    /// Sets up the inotify watch at once, so no file created after this returns is missed.
    public init(configuration: Configuration, collector: Trace2Collector, logger: Logger)
        throws(Trace2ConfigurationError)
    {
        var st = stat()
        guard stat(configuration.directory, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            throw Trace2ConfigurationError(
                description:
                    "--trace2-dir '\(configuration.directory)' is not a directory (create it, or point it at Gitaly's $TMPDIR)"
            )
        }
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else {
            throw Trace2ConfigurationError(
                description:
                    "--trace2-dir: inotify_init1 failed: \(String(cString: strerror(errno))) (raise fs.inotify.max_user_instances)"
            )
        }
        let mask = UInt32(IN_CREATE | IN_MOVED_TO | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_ONLYDIR)
        guard inotify_add_watch(fd, configuration.directory, mask) >= 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw Trace2ConfigurationError(
                description:
                    "--trace2-dir '\(configuration.directory)': cannot watch it: \(reason) (the tap needs read access to the directory)"
            )
        }
        self.configuration = configuration
        self.collector = collector
        self.logger = logger
        self.inotifyFD = fd
    }

    /// Current counters.
    public var counts: Counts { state.withLock { $0 } }
    /// Event files whose descriptor is open now.
    public var openFiles: Int { open.withLock { $0 } }
    /// True once the watch loop has ended and closed its inotify descriptor.
    public var isClosed: Bool { closed.withLock { $0 } }

    /// Asks the watch started by ``start(on:eventLoop:)`` to finish the open files and end.
    public func stop() {
        stopping.withLock { $0 = true }
    }

    /// Starts watching on two threads of `pool` until ``stop()``: one only opens new files (so a file that lives a
    /// few milliseconds is opened before it is deleted), the other reads and finishes them. The future completes
    /// once every open file is finished and the watch is closed.
    public func start(on pool: NIOThreadPool, eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let opening = pool.runIfActive(eventLoop: eventLoop) { self.openerLoop() }
        let reading = pool.runIfActive(eventLoop: eventLoop) { self.readerLoop() }
        return opening.and(reading).map { _ in }
    }

    static func accepts(_ name: String) -> Bool {
        if name.hasPrefix("gitaly-trace2") { return true }
        return Trace2SessionID.isGitComponent(Substring(name))
    }

    /// What the opener hands to the reader.
    struct Handoff {
        var opened: [(name: String, fd: Int32)] = []
        var deleted: [String] = []
        var openerDone = false
    }

    private var pollMillis: Int32 {
        let (seconds, attoseconds) = configuration.pollInterval.components
        return Int32(clamping: max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
    }

    private func openerLoop() {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while !stopping.withLock({ $0 }) {
            var descriptor = pollfd(fd: inotifyFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&descriptor, 1, pollMillis)
            readNotifications(buffer: &buffer)
        }
        readNotifications(buffer: &buffer)
        close(inotifyFD)
        handoff.withLock { $0.openerDone = true }
    }

    private func readerLoop() {
        var files: [Int32: TrackedFile] = [:]
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let stopped = stopping.withLock { $0 }
            let batch = handoff.withLock { h -> Handoff in
                defer {
                    h.opened = []
                    h.deleted = []
                }
                return h
            }
            for (name, fd) in batch.opened {
                files[fd] = TrackedFile(fd: fd, name: name, stream: collector.openStream(), lastGrowth: .now)
            }
            for name in batch.deleted {
                for (fd, file) in files where file.name == name { files[fd]?.deleted = true }
            }
            let now = ContinuousClock.now
            var busy = !batch.opened.isEmpty
            for fd in Array(files.keys) {
                guard var file = files[fd] else { continue }
                if read(&file, buffer: &buffer) {
                    file.lastGrowth = now
                    busy = true
                }
                let quiet = now - file.lastGrowth
                if collector.streamComplete(file.stream) {
                    finish(file, reason: "processes ended")
                    files[fd] = nil
                } else if file.deleted, quiet >= configuration.deletedGrace {
                    finish(file, reason: "file deleted before its processes ended")
                    files[fd] = nil
                } else if quiet >= configuration.idleTimeout {
                    finish(file, reason: "file idle too long")
                    files[fd] = nil
                } else {
                    files[fd] = file
                }
            }
            if stopped, batch.openerDone { break }
            if !busy { usleep(UInt32(min(Int(pollMillis), 5)) * 1000) }
        }
        for (_, var file) in files {
            _ = read(&file, buffer: &buffer)
            finish(file, reason: "watcher stopped")
        }
        closed.withLock { $0 = true }
    }

    private func readNotifications(buffer: inout [UInt8]) {
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(inotifyFD, $0.baseAddress, $0.count) }
            guard count > 0 else { return }
            var offset = 0
            while offset + 16 <= count {
                let (mask, length) = buffer.withUnsafeBytes { raw -> (UInt32, Int) in
                    (
                        raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self),
                        Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                    )
                }
                let nameBytes = buffer[(offset + 16)..<min(count, offset + 16 + length)]
                let name = String(decoding: nameBytes.prefix { $0 != 0 }, as: UTF8.self)
                offset += 16 + length
                if mask & UInt32(IN_Q_OVERFLOW) != 0 {
                    state.withLock { $0.inotifyOverflows += 1 }
                    logger.warning(
                        "inotify queue overflowed: some Trace2 files may be missed (raise fs.inotify.max_queued_events)"
                    )
                    continue
                }
                if mask & UInt32(IN_IGNORED) != 0 {
                    logger.error(
                        "the Trace2 directory went away; no new files will be read",
                        metadata: ["directory": "\(configuration.directory)"])
                    continue
                }
                guard !name.isEmpty, mask & UInt32(IN_ISDIR) == 0 else { continue }
                if mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0 {
                    guard Self.accepts(name) else {
                        state.withLock { $0.filesIgnored += 1 }
                        continue
                    }
                    openFile(name)
                } else if mask & UInt32(IN_DELETE | IN_MOVED_FROM) != 0 {
                    handoff.withLock { $0.deleted.append(name) }
                }
            }
        }
    }

    private func openFile(_ name: String) {
        guard open.withLock({ $0 }) < configuration.maximumOpenFiles else {
            state.withLock { $0.filesMissed += 1 }
            return
        }
        let path = configuration.directory + "/" + name
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            let reason = String(cString: strerror(errno))
            let first = state.withLock { c -> Bool in
                c.filesMissed += 1
                return c.filesMissed == 1
            }
            if first {
                logger.warning(
                    "a Trace2 file could not be opened (gone already, or no permission); further misses are only counted",
                    metadata: ["file": "\(path)", "error": "\(reason)"])
            }
            return
        }
        state.withLock { $0.filesOpened += 1 }
        open.withLock { $0 += 1 }
        handoff.withLock { $0.opened.append((name, fd)) }
    }

    /// Reads what the file has now; true when it grew.
    private func read(_ file: inout TrackedFile, buffer: inout [UInt8]) -> Bool {
        var grew = false
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(file.fd, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            grew = true
            state.withLock { $0.bytesRead += count }
            collector.ingest(file.parser.feed(buffer[0..<count]), stream: file.stream)
        }
        return grew
    }

    private func finish(_ file: TrackedFile, reason: String) {
        var file = file
        close(file.fd)
        open.withLock { $0 -= 1 }
        collector.ingest(file.parser.finish(), stream: file.stream)
        collector.closeStream(file.stream, parser: file.parser.counts, reason: reason)
        state.withLock { $0.filesFinished += 1 }
    }
}
