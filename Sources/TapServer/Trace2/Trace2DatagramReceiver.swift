import Logging
import NIOCore
import NIOPosix
import Synchronization
import TapTrace

#if canImport(Glibc)
    import Glibc
#endif

/// Receives git's `af_unix:dgram:` Trace2 events: one event per datagram, from every process, on one socket.
///
/// A plain blocking socket read in a `poll(2)` loop on a thread of its own: datagrams from unbound unix sockets
/// (which is what git sends from) carry no sender address, which the channel layer does not expect.
public final class Trace2DatagramReceiver: Sendable {
    /// The socket path.
    public let path: String
    private let collector: Trace2Collector
    private let logger: Logger
    private let fd: Int32
    private let stopping = Mutex(false)
    private let received = Mutex(0)

    /// Binds the socket (replacing a stale socket file, never anything else).
    public init(path: String, collector: Trace2Collector, logger: Logger) throws(Trace2ConfigurationError) {
        do {
            try UnixSocketPath.prepare(path)
        } catch {
            throw Trace2ConfigurationError(
                description: "--trace2-socket: " + error.description.replacing("--listen", with: "--trace2-socket"))
        }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            throw Trace2ConfigurationError(
                description: "--trace2-socket: socket(): \(String(cString: strerror(errno)))")
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw Trace2ConfigurationError(description: "--trace2-socket: cannot bind dgram:\(path): \(reason)")
        }
        // Bursts of short git processes send many small datagrams at once: give the queue room.
        var size: Int32 = 4 << 20
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        do {
            try UnixSocketPath.setGroupAccessible(path)
        } catch {
            close(fd)
            throw Trace2ConfigurationError(
                description: "--trace2-socket: " + error.description.replacing("--listen", with: "--trace2-socket"))
        }
        self.path = path
        self.collector = collector
        self.logger = logger
        self.fd = fd
    }

    /// Datagrams received so far.
    public var datagrams: Int { received.withLock { $0 } }

    /// Asks the receive loop to return.
    public func stop() {
        stopping.withLock { $0 = true }
    }

    /// Receives on a thread of `pool` until ``stop()``; the future completes once the socket is closed and removed.
    public func start(on pool: NIOThreadPool, eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        pool.runIfActive(eventLoop: eventLoop) { self.loop() }
    }

    private func loop() {
        var parser = Trace2LineParser()
        var reported = Trace2LineParser.Counts()
        let stream = collector.openStream(tracksProcesses: false)
        var buffer = [UInt8](repeating: 0, count: 65_536)
        var stopped = false
        while !stopped {
            stopped = stopping.withLock { $0 }
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&descriptor, 1, stopped ? 0 : 20)
            while true {
                let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                guard count > 0 else { break }
                received.withLock { $0 += 1 }
                collector.ingest(parser.feedDatagram(buffer[0..<count]), stream: stream)
            }
            let counts = parser.counts
            if counts.malformed != reported.malformed {
                collector.addParserCounts(malformed: counts.malformed - reported.malformed, truncated: 0, oversized: 0)
                reported = counts
            }
        }
        close(fd)
        unlink(path)
        collector.closeStream(stream, parser: Trace2LineParser.Counts(), reason: "tap stopped")
    }
}
