import Foundation
import Logging
import NIOPosix
import Testing

@testable import TapServer

/// A one-connection TCP listener on 127.0.0.1 for byte-level tests: the far end of the tap, as plain sockets.
private final class RawTCPListener: @unchecked Sendable {  // a descriptor used by one test thread
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = 0
        sa.sin_addr.s_addr = inet_addr("127.0.0.1")
        var size = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &sa) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                bind(fd, address, size) == 0 && listen(fd, 4) == 0 && getsockname(fd, address, &size) == 0
            }
        }
        guard bound else {
            Glibc.close(fd)
            throw PeerError("raw listener: errno \(errno)")
        }
        port = Int(UInt16(bigEndian: sa.sin_port))
    }

    deinit { Glibc.close(fd) }

    /// Waits for the tap's upstream connection.
    func accept() throws -> RawSocket {
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let accepted = Glibc.accept(fd, nil, nil)
        guard accepted >= 0 else { throw PeerError("raw listener: accept failed, errno \(errno)") }
        return RawSocket(adopting: accepted)
    }
}

/// What a blocking read ended with: bytes, EOF, or an error (ECONNRESET is the mirrored reset).
private enum ReadEnd: Equatable {
    case bytes([UInt8])
    case eof
    case error(Int32)
}

/// Reads and writes go through the socket object, never a bare descriptor: an object the optimizer may release
/// after its last use would close its descriptor while the test still used the number.
extension RawSocket {
    fileprivate func readOnce(timeout: Int = 10) -> ReadEnd {
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        if n > 0 { return .bytes(Array(buffer[0..<n])) }
        if n == 0 { return .eof }
        return .error(errno)
    }
}

/// Issue 2: half-close, close and reset on one side reach the other side as the same event.
@Suite("Close mirroring", .serialized)
struct CloseMirroringTests {
    /// A tap between a raw client and a raw upstream over TCP, with the one connection through it open.
    private static func connected() async throws -> (proxy: TapProxy, client: RawSocket, upstream: RawSocket) {
        let listener = try RawTCPListener()
        var logger = Logger(label: "close-mirroring")
        logger.logLevel = .critical
        let proxy = TapProxy(
            configuration: ProxyConfiguration(
                listen: .tcp(host: "127.0.0.1", port: 0), upstream: .tcp(host: "127.0.0.1", port: listener.port)),
            pipeline: SpanPipeline(sinks: [], logger: logger), group: MultiThreadedEventLoopGroup.singleton,
            logger: logger)
        let port = try #require(try await proxy.start().port)
        let client = try RawSocket(connectingTo: "tcp://127.0.0.1:\(port)")
        return (proxy, client, try listener.accept())
    }

    @Test("a client's half-close reaches the upstream as EOF, and the upstream can still answer")
    func halfCloseFromClient() async throws {
        let (proxy, client, upstream) = try await Self.connected()

        try client.write(Array("request".utf8))
        client.shutdownWrite()
        var received: [UInt8] = []
        _ = try upstream.readToEnd(timeout: 10) { received += $0 }
        #expect(received == Array("request".utf8))
        // The other direction stays open after the client's half-close.
        try upstream.write(Array("answer".utf8))
        upstream.shutdownWrite()
        var answer: [UInt8] = []
        _ = try client.readToEnd(timeout: 10) { answer += $0 }
        #expect(answer == Array("answer".utf8))
        await proxy.stop(drain: .seconds(1))
    }

    @Test("an upstream's half-close reaches the client as EOF, and the client can still send")
    func halfCloseFromUpstream() async throws {
        let (proxy, client, upstream) = try await Self.connected()

        try upstream.write(Array("banner".utf8))
        upstream.shutdownWrite()
        var banner: [UInt8] = []
        _ = try client.readToEnd(timeout: 10) { banner += $0 }
        #expect(banner == Array("banner".utf8))
        try client.write(Array("late".utf8))
        #expect(upstream.readOnce() == .bytes(Array("late".utf8)))
        await proxy.stop(drain: .seconds(1))
    }

    @Test("a client's reset reaches the upstream as a reset, not as an orderly close")
    func resetFromClient() async throws {
        let (proxy, client, upstream) = try await Self.connected()
        try client.write(Array("x".utf8))
        #expect(upstream.readOnce() == .bytes(Array("x".utf8)))

        client.close(reset: true)
        #expect(upstream.readOnce() == .error(ECONNRESET))
        await proxy.stop(drain: .seconds(1))
    }

    @Test("an upstream's reset reaches the client as a reset")
    func resetFromUpstream() async throws {
        let (proxy, client, upstream) = try await Self.connected()
        try upstream.write(Array("y".utf8))
        #expect(client.readOnce() == .bytes(Array("y".utf8)))

        upstream.close(reset: true)
        #expect(client.readOnce() == .error(ECONNRESET))
        await proxy.stop(drain: .seconds(1))
    }

    @Test("a full close on one side closes the other side")
    func closeFromClient() async throws {
        let (proxy, client, upstream) = try await Self.connected()
        try client.write(Array("bye".utf8))
        #expect(upstream.readOnce() == .bytes(Array("bye".utf8)))
        client.close()
        #expect(upstream.readOnce() == .eof)
        await proxy.stop(drain: .seconds(1))
    }
}
